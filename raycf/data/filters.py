"""Activity filters applied to interactions before a split: minimum records per user and per item, k-core.

Order: `min_item_users` (one pass), then `min_user_items` (one pass), then `k_core` (iterated to its
fixpoint). Items go first so that the user threshold, which the split protocols rely on (every user
keeps enough records to hold some out), holds for the result; an item may then fall below its own
threshold (use `k_core` when both must hold). Records are rows: `read_interactions` gives one row
per (user, item) pair, so a user's records are its distinct items and an item's its distinct users.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from raycf.errors import DataError

OPTIONS = {"min_user_items": "--min-user-items", "min_item_users": "--min-item-users", "k_core": "--k-core"}
"""Each setting and the option that sets it (named in error messages)."""


def filter_interactions(
    frame: pd.DataFrame,
    *,
    min_user_items: int | None = None,
    min_item_users: int | None = None,
    k_core: int | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The records that pass the filters (all columns kept, index reset) and what was done, for a manifest.

    `min_item_users`: keep items with at least that many records; then `min_user_items`: keep users
    with at least that many records; then `k_core`: drop users and items with fewer than k records
    until every remaining user and item has at least k (the k-core, which does not depend on the
    order of removals). None skips a filter; with no filter the frame comes back as it is.

    The dict (JSON-ready) holds the settings, `before` and `after` ({records, users, items}), one
    `steps` entry per filter applied (its setting, value, and the counts after it) and
    `k_core_iterations`: the pruning passes that removed records (0 when k_core is None or the data
    already is a k-core). DataError (one line, naming the option) for a value < 1 or a filter that
    leaves fewer than two users or two items.
    """
    settings = {"min_user_items": min_user_items, "min_item_users": min_item_users, "k_core": k_core}
    for name, value in settings.items():
        _check_setting(name, value)
    settings = {name: None if value is None else int(value) for name, value in settings.items()}
    for column in ("user_id", "item_id"):
        if column not in frame.columns:
            raise DataError(f"interactions: no {column} column (found {list(frame.columns)}); name the id columns")
    users, _ = pd.factorize(frame["user_id"], use_na_sentinel=False)
    items, _ = pd.factorize(frame["item_id"], use_na_sentinel=False)
    keep = np.ones(len(frame), dtype=bool)
    before = _counts(users, items, keep)
    steps: list[dict[str, Any]] = []
    iterations = 0
    for name, codes in (("min_item_users", items), ("min_user_items", users)):
        minimum = settings[name]
        if minimum is not None:
            keep = keep & _enough(codes, keep, minimum)
            steps.append(_step(name, minimum, users, items, keep, before))
    if k_core is not None:
        while True:
            passing = keep & _enough(users, keep, k_core) & _enough(items, keep, k_core)
            if np.array_equal(passing, keep):
                break
            keep, iterations = passing, iterations + 1
        steps.append(_step("k_core", k_core, users, items, keep, before))
    info = {
        **settings,
        "order": [step["filter"] for step in steps],
        "before": before,
        "after": _counts(users, items, keep),
        "steps": steps,
        "k_core_iterations": iterations,
    }
    if keep.all():
        return frame.reset_index(drop=True), info
    return frame[keep].reset_index(drop=True), info


def _check_setting(name: str, value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise DataError(f"{OPTIONS[name]} must be an integer >= 1, got {value!r}; pass e.g. {OPTIONS[name]} 5")


def _enough(codes: np.ndarray, keep: np.ndarray, minimum: int) -> np.ndarray:
    """Per record: whether its user (or item) has at least `minimum` records among those kept."""
    counts = np.bincount(codes[keep], minlength=int(codes.max(initial=-1)) + 1)
    return counts[codes] >= minimum


def _counts(users: np.ndarray, items: np.ndarray, keep: np.ndarray) -> dict[str, int]:
    return {
        "records": int(keep.sum()),
        "users": int(np.count_nonzero(np.bincount(users[keep]))),
        "items": int(np.count_nonzero(np.bincount(items[keep]))),
    }


def _step(
    name: str, value: int, users: np.ndarray, items: np.ndarray, keep: np.ndarray, before: dict[str, int]
) -> dict[str, Any]:
    """The counts after one filter; DataError when it leaves fewer than two users or two items."""
    after = _counts(users, items, keep)
    if after["users"] < 2 or after["items"] < 2:
        had = f"{before['records']} records, {before['users']} users, {before['items']} items before filtering"
        left = (
            "no interactions"
            if after["records"] == 0
            else f"{after['users']} user(s) and {after['items']} item(s), too few to recommend"
        )
        raise DataError(f"{OPTIONS[name]} {value} leaves {left} ({had}); lower it")
    return {"filter": name, "value": int(value), **after}
