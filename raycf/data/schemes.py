"""The split schemes besides `records` (raycf.data.split): whole users held out with fold-in (`users`), and a
global time cut (`time`)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from raycf.data.split import (
    FORMAT_VERSION,
    Split,
    _check_fractions,
    _matrix,
    _raw_ids,
    _refuse_duplicates,
    finish_split,
)
from raycf.errors import DataError


def parse_time(text: str | int) -> int:
    """Epoch seconds (UTC) of an ISO date or datetime ("2003-01-01"), or of epoch seconds given as such."""
    if isinstance(text, int) or str(text).lstrip("-").isdigit():
        return int(text)
    try:
        stamp = pd.Timestamp(str(text))
    except ValueError:
        raise DataError(f"time cut {text!r} is neither a date (2003-01-01) nor epoch seconds; fix --time-cuts") from None
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return int(stamp.timestamp())


def heldout_count(heldout_users: float, n_users: int, where: str) -> int:
    """Users per held-out part: a count (>= 1), or a fraction of all users in (0, 0.5)."""
    if isinstance(heldout_users, bool) or not isinstance(heldout_users, (int, float)) or heldout_users <= 0:
        raise DataError(f"{where}: heldout_users must be a count >= 1 or a fraction in (0, 0.5), got "
                        f"{heldout_users!r}; e.g. --heldout-users 600")
    count = int(heldout_users) if heldout_users >= 1 else math.floor(heldout_users * n_users)
    if heldout_users >= 1 and count != heldout_users:
        raise DataError(f"{where}: heldout_users {heldout_users!r} is neither a whole count nor a fraction below 1")
    if count < 1 or 2 * count >= n_users:
        raise DataError(f"{where}: {count:,} validation + {count:,} test users held out of {n_users:,} users leaves "
                        "no training user; hold out fewer users (--heldout-users)")
    return count


def split_users(
    interactions: pd.DataFrame, *, heldout_users: float, fold_in: float, seed: int, source: str = "",
    source_sha256: str = "", extra: dict[str, Any] | None = None,
) -> Split:
    """Strong generalization (Liang et al. 2018): `heldout_users` validation and as many test users, drawn with
    `seed`, never enter training; of each held-out user's items (those the training users have), a seeded
    `fold_in` share is the model's input and the rest, floor((1 - fold_in) * n), is predicted."""
    where = f"split of {source}" if source else "split"
    if isinstance(fold_in, bool) or not isinstance(fold_in, (int, float)) or not 0 < fold_in < 1:
        raise DataError(f"{where}: fold_in must be in (0, 1), got {fold_in!r}; e.g. --fold-in 0.8")
    users_raw, items_raw = _raw_ids(interactions, "user_id"), _raw_ids(interactions, "item_id")
    user_codes, user_ids = pd.factorize(users_raw, sort=True)
    _refuse_duplicates(user_codes, items_raw, user_ids)
    count = heldout_count(heldout_users, len(user_ids), where)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(user_ids))
    role = np.zeros(len(user_ids), dtype=np.int8)  # 0 train, 1 valid, 2 test
    role[order[:count]], role[order[count:2 * count]] = 1, 2
    record_role = role[user_codes]
    item_ids = pd.factorize(items_raw[record_role == 0], sort=True)[1]
    item_codes = pd.Index(item_ids).get_indexer(items_raw)
    shape = (len(user_ids), len(item_ids))
    train = record_role == 0
    matrices = {"train": _matrix(user_codes[train], item_codes[train], shape)}
    dropped, users = {}, {"train": int((role == 0).sum())}
    for code, part in ((1, "valid"), (2, "test")):
        records = np.flatnonzero((record_role == code) & (item_codes >= 0))
        dropped[part] = int(((record_role == code) & (item_codes < 0)).sum())
        records = records[np.lexsort((rng.random(len(records)), user_codes[records]))]  # per user, shuffled
        starts = np.searchsorted(user_codes[records], user_codes[records], side="left")
        position = np.arange(len(records)) - starts
        sizes = np.bincount(user_codes[records], minlength=len(user_ids))[user_codes[records]]
        predicted = position < np.floor((1 - fold_in) * sizes + 1e-9).astype(np.int64)
        for name, chosen in ((part, records[predicted]), (f"{part}_fold_in", records[~predicted])):
            matrices[name] = _matrix(user_codes[chosen], item_codes[chosen], shape)
        if matrices[part].nnz == 0:
            raise DataError(f"{where}: no {part} user has an item to predict (fold_in {fold_in}); lower --fold-in "
                            "or hold out more users")
        users[part] = int(np.count_nonzero(np.diff(matrices[part].indptr)))
    manifest = {
        "format_version": FORMAT_VERSION, "scheme": "users", "source": source, "source_sha256": source_sha256,
        "seed": int(seed), "heldout_users": count, "fold_in": float(fold_in),
        "n_users": shape[0], "n_items": shape[1], "users": users,
        "counts": {name: int(matrix.nnz) for name, matrix in matrices.items()},
        "dropped": dropped, "n_records": len(users_raw), **(extra or {}),
    }
    return finish_split(matrices, user_ids, item_ids, manifest)


def time_cuts(timestamps: np.ndarray, fractions: tuple[float, float, float] | None, cuts: tuple[int, int] | None,
              where: str) -> tuple[int, int]:
    """The two cut timestamps: explicit, or where the records ordered by time reach the train and train + valid
    fractions."""
    if cuts is not None:
        if not cuts[0] < cuts[1]:
            raise DataError(f"{where}: time cuts must increase, got {list(cuts)}; e.g. --time-cuts 2002-01-01,2002-07-01")
        return int(cuts[0]), int(cuts[1])
    train, valid, _ = _check_fractions(fractions)
    ordered = np.sort(timestamps)
    last = len(ordered) - 1
    return int(ordered[min(last, round(train * len(ordered)))]), int(ordered[min(last, round((train + valid) * len(ordered)))])


def split_time(
    interactions: pd.DataFrame, *, fractions: tuple[float, float, float] | None = (0.6, 0.2, 0.2),
    cuts: tuple[int, int] | None = None, source: str = "", source_sha256: str = "",
    extra: dict[str, Any] | None = None,
) -> Split:
    """A global time cut: records before the first cut train, those before the second validate, the rest test
    (no validation or test record is older than its cut). Validation and test records of users or items
    without a train record are dropped and counted."""
    where = f"split of {source}" if source else "split"
    if "timestamp" not in interactions:
        raise DataError(f"{where}: the time scheme needs a timestamp per record and {source or 'the data'} has none; "
                        "name the column with --time-col, or use --scheme records")
    users_raw, items_raw = _raw_ids(interactions, "user_id"), _raw_ids(interactions, "item_id")
    stamps = interactions["timestamp"].to_numpy(dtype=np.int64)
    first, second = time_cuts(stamps, fractions, cuts, where)
    part_of = np.where(stamps < first, 0, np.where(stamps < second, 1, 2))
    train = part_of == 0
    if not train.any():
        raise DataError(f"{where}: no record before the first time cut; move the cut later")
    user_ids = pd.factorize(users_raw[train], sort=True)[1]
    item_ids = pd.factorize(items_raw[train], sort=True)[1]
    user_codes, item_codes = pd.Index(user_ids).get_indexer(users_raw), pd.Index(item_ids).get_indexer(items_raw)
    _refuse_duplicates(pd.factorize(users_raw)[0], items_raw, pd.factorize(users_raw)[1])
    shape = (len(user_ids), len(item_ids))
    matrices = {"train": _matrix(user_codes[train], item_codes[train], shape)}
    dropped = {}
    for code, part in ((1, "valid"), (2, "test")):
        inside = part_of == code
        kept = inside & (user_codes >= 0) & (item_codes >= 0)
        dropped[part] = {"new_user": int((inside & (user_codes < 0)).sum()),
                         "new_item": int((inside & (user_codes >= 0) & (item_codes < 0)).sum())}
        if not kept.any():
            raise DataError(f"{where}: no {part} record after the time cuts (of users and items seen before them); "
                            "move the cuts")
        matrices[part] = _matrix(user_codes[kept], item_codes[kept], shape)
    manifest = {
        "format_version": FORMAT_VERSION, "scheme": "time", "source": source, "source_sha256": source_sha256,
        "cuts": [first, second], "cuts_utc": [pd.Timestamp(t, unit="s").isoformat() for t in (first, second)],
        "fractions": None if cuts is not None else list(_check_fractions(fractions)),
        "n_users": shape[0], "n_items": shape[1],
        "counts": {name: int(matrix.nnz) for name, matrix in matrices.items()},
        "dropped": dropped, "n_records": len(users_raw), **(extra or {}),
    }
    return finish_split(matrices, user_ids, item_ids, manifest)
