"""The run directory: the names of its files, its trial tables, and what a run, model or trial resolves to."""
