"""Experiment tracking outside the run directory: MLflow runs, and Ray Tune's MLflow and TensorBoard loggers."""
