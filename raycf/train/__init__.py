"""One training run without Ray: the Trainer, its epochs and validation, the memory guard."""
