"""What data a run reads and how it splits it: a named dataset or a ratings file, its filters and its scheme."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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
