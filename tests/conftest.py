"""Shared fixtures: small seeded synthetic data and its split (tests never read MovieLens unless marked)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from raycf.data.split import Split, split_interactions
from raycf.data.synthetic import generate_synthetic

ML1M_DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ml-1m" / "ratings.dat.gz"


def ml1m_path() -> Path:
    """ML-1M ratings from $RAYCF_ML1M (default ../shared/data/ml-1m/ratings.dat.gz)."""
    return Path(os.environ.get("RAYCF_ML1M", ML1M_DEFAULT))


@pytest.fixture(scope="session")
def small_split() -> Split:
    """400 users x 150 items with planted structure, split 60/20/20 with seed 0."""
    frame = generate_synthetic(n_users=400, n_items=150, mean_interactions=30, min_interactions=20, seed=0)
    return split_interactions(frame, seed=0, source="synthetic-test")
