"""A run's data: where its interactions come from (a named dataset, a ratings file, or the synthetic generator),
the filters applied to them, and how they are split (scheme)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from raycf.data.datasets import DATASETS, load_dataset
from raycf.data.filters import filter_interactions
from raycf.data.loaders import read_interactions, sha256_of
from raycf.data.schemes import parse_time, split_time, split_users
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
    time_col: str | None = None
    """Ratings files only: the column of each record's time (MovieLens files always have theirs)."""
    min_user_items: int | None = None
    min_item_users: int | None = None
    k_core: int | None = None
    """Filters applied before the split (raycf.data.filters), recorded in the split's manifest."""
    scheme: str = "records"
    """records: a random split of the records; users: whole users held out, with fold-in; time: a global cut."""
    heldout_users: float | None = None
    """users: validation users and as many test users (a count, or a fraction of the users)."""
    fold_in: float = 0.8
    """users: the share of each held-out user's items given to the model as input."""
    time_cuts: tuple[str, str] | None = None
    """time: the two cut dates (ISO) or epoch seconds; None: cut at the split fractions of the records in time
    order."""

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
        spec = self.spec
        where = {"source": spec.describe(), "source_sha256": self.digest,
                 "extra": {"filters": self.filters} if self.filters else {}}
        if spec.scheme == "users":
            return split_users(self.frame, heldout_users=spec.heldout_users, fold_in=spec.fold_in, seed=seed, **where)
        if spec.scheme == "time":
            cuts = None if spec.time_cuts is None else tuple(parse_time(text) for text in spec.time_cuts)
            return split_time(self.frame, fractions=fractions, cuts=cuts, **where)
        return split_interactions(self.frame, fractions=fractions, seed=seed, **where)


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
