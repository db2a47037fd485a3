"""Data: loaders, named datasets, synthetic data and the split."""
