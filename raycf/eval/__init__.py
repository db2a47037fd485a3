"""Ranking and its metrics: the one top-k path shared by evaluation, scoring and the Python API."""
