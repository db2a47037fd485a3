"""A run's data: where its interactions come from (a named dataset, a ratings file, or the synthetic generator),
the filters applied to them, and how they are split (scheme)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from raycf.data.datasets import DATASETS, load_dataset
from raycf.data.filters import filter_interactions
from raycf.data.loaders import read_interactions, sha256_of
from raycf.data.schemes import scheme_class
from raycf.data.spec import SYNTHETIC, DataSpec
from raycf.data.split import Split, read_split
from raycf.data.synthetic import generate_synthetic
from raycf.errors import DataError


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
            time_col=spec.time_col,
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


@dataclass(frozen=True)
class FilteredSource:
    """A run's interactions, loaded and filtered once, ready to be split with any seed."""

    spec: DataSpec
    frame: pd.DataFrame
    digest: str
    filters: dict[str, Any]

    def split(self, fractions: tuple[float, float, float], seed: int) -> Split:
        """Split by the spec's scheme with `seed` (`fractions`: records and time)."""
        scheme = scheme_class(self.spec.scheme, f"split of {self.spec.describe()}")
        return scheme.split(self.frame, self.spec, fractions, seed, source=self.spec.describe(),
                            source_sha256=self.digest, extra={"filters": self.filters} if self.filters else {})


def load_filtered(spec: DataSpec) -> FilteredSource:
    """Load the source and apply its filters (recorded for the manifest, when there are any)."""
    frame, digest = load_source(spec)
    settings = {"min_user_items": spec.min_user_items, "min_item_users": spec.min_item_users, "k_core": spec.k_core}
    if all(value is None for value in settings.values()):
        return FilteredSource(spec, frame, digest, {})
    frame, filters = filter_interactions(frame, **settings)
    return FilteredSource(spec, frame, digest, filters)


def prepare_split(spec: DataSpec, fractions: tuple[float, float, float], seed: int) -> Split:
    """Load the source, filter it and split it by its scheme with `seed`."""
    return load_filtered(spec).split(fractions, seed)


def load_split(directory: Path) -> Split:
    """A split saved by `save_split` (raycf.data.split.read_split: every file checked against its hash), with the
    rules of its registered scheme."""
    return read_split(directory, lambda scheme: scheme_class(scheme, "split"))
