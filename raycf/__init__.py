"""raycf: recommender-system hyperparameter studies and batch scoring on Ray."""

__version__ = "0.1.0"
