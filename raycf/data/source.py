"""Where a run's interactions come from: a named dataset, a ratings file, or the synthetic generator."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from raycf.data.datasets import DATASETS, load_dataset
from raycf.data.loaders import read_interactions, sha256_of
from raycf.data.split import Split, split_interactions
from raycf.data.synthetic import generate_synthetic
from raycf.errors import DataError

SYNTHETIC = "synthetic"


@dataclass(frozen=True)
class DataSpec:
    """A named dataset (`ml-1m`, `ml-100k`, `synthetic`) or a ratings file with its reading options."""

    dataset: str | None = SYNTHETIC
    ratings: str | None = None
    format: str = "auto"
    user_col: str = "user_id"
    item_col: str = "item_id"
    rating_col: str | None = None
    min_rating: float | None = None
    synthetic: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of `generate_synthetic` (sizes, seed)."""

    def describe(self) -> str:
        return self.ratings if self.ratings is not None else str(self.dataset)


def load_source(spec: DataSpec) -> tuple[pd.DataFrame, str]:
    """The interactions and the sha256 that identifies their source."""
    if spec.ratings is not None:
        path = Path(spec.ratings).expanduser()
        frame = read_interactions(
            path,
            fmt=spec.format,
            user_col=spec.user_col,
            item_col=spec.item_col,
            rating_col=spec.rating_col,
            min_rating=spec.min_rating,
        )
        return frame, sha256_of(path)
    if spec.dataset == SYNTHETIC:
        frame = generate_synthetic(**spec.synthetic)
        digest = hashlib.sha256(frame["user_id"].to_numpy().tobytes() + frame["item_id"].to_numpy().tobytes())
        return frame, digest.hexdigest()
    if spec.dataset in DATASETS:
        frame = load_dataset(spec.dataset)
        if spec.min_rating is not None:
            frame = frame[frame["rating"] >= spec.min_rating].reset_index(drop=True)
        return frame, DATASETS[spec.dataset].md5
    known = ", ".join([*DATASETS, SYNTHETIC])
    raise DataError(f"unknown dataset {spec.dataset!r}: choose one of {known}, or pass --ratings PATH")


def prepare_split(spec: DataSpec, fractions: tuple[float, float, float], seed: int) -> Split:
    """Load the source and split its records with `seed`."""
    frame, digest = load_source(spec)
    return split_interactions(frame, fractions=fractions, seed=seed, source=spec.describe(), source_sha256=digest)
