"""The `users` scheme (strong generalization): whole users held out of training, each with a fold-in share of
their items given as input and the rest predicted."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from raycf.data.schemes.checks import raw_ids, refuse_duplicates
from raycf.data.schemes.registry import SplitScheme, register
from raycf.data.split import FORMAT_VERSION, Split, finish_split, ones_matrix
from raycf.errors import DataError

if TYPE_CHECKING:
    from raycf.data.spec import DataSpec


@register
class UsersScheme(SplitScheme):
    name = "users"
    help = "whole users held out, with fold-in"
    spec_fields = ("heldout_users", "fold_in")
    extra_parts = ("valid_fold_in", "test_fold_in")
    """The held-out users' inputs: given to the model, never predicted."""

    @classmethod
    def split(cls, frame: pd.DataFrame, spec: DataSpec, fractions: tuple[float, float, float], seed: int,
              **manifest: Any) -> Split:
        if spec.heldout_users is None:
            raise DataError("scheme users needs heldout_users: a count of users (e.g. 600) or a fraction")
        return split_users(frame, heldout_users=spec.heldout_users, fold_in=spec.fold_in, seed=seed, **manifest)

    @classmethod
    def input_parts(cls, part: str) -> tuple[str, ...]:
        """Train and the part's fold-in items (both for score); held-out users have no train row."""
        return {"valid": ("train", "valid_fold_in"), "test": ("train", "test_fold_in"),
                "score": ("train", *cls.extra_parts)}[part]


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
    `fold_in` share is the model's input and the rest, floor((1 - fold_in) * n), is predicted: int(0.2 n) for
    fold_in 0.8, the count of the paper's public preprocessing (none for users with fewer than 5 items)."""
    where = f"split of {source}" if source else "split"
    if isinstance(fold_in, bool) or not isinstance(fold_in, (int, float)) or not 0 < fold_in < 1:
        raise DataError(f"{where}: fold_in must be in (0, 1), got {fold_in!r}; e.g. --fold-in 0.8")
    users_raw, items_raw = raw_ids(interactions, "user_id"), raw_ids(interactions, "item_id")
    user_codes, user_ids = pd.factorize(users_raw, sort=True)
    refuse_duplicates(user_codes, items_raw, user_ids)
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
    matrices = {"train": ones_matrix(user_codes[train], item_codes[train], shape)}
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
            matrices[name] = ones_matrix(user_codes[chosen], item_codes[chosen], shape)
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
    return finish_split(matrices, user_ids, item_ids, manifest, UsersScheme)
