"""The `records` scheme: a seeded random split of the records into train, valid and test."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from raycf.data.schemes.checks import check_fractions, raw_ids, refuse_duplicates, show_id
from raycf.data.schemes.registry import SplitScheme, register
from raycf.data.split import FORMAT_VERSION, PARTS, Split, finish_split, ones_matrix
from raycf.errors import DataError

if TYPE_CHECKING:
    from raycf.data.spec import DataSpec


@register
class RecordsScheme(SplitScheme):
    name = "records"
    help = "a random split of the records"

    @classmethod
    def split(cls, frame: pd.DataFrame, spec: DataSpec, fractions: tuple[float, float, float], seed: int,
              **manifest: Any) -> Split:
        return split_interactions(frame, fractions=fractions, seed=seed, **manifest)


def split_interactions(
    interactions: pd.DataFrame,
    *,
    fractions: Sequence[float] = (0.6, 0.2, 0.2),
    seed: int = 0,
    source: str = "",
    source_sha256: str = "",
    extra: dict[str, Any] | None = None,
) -> Split:
    """Shuffle the records with `seed` and cut them by `fractions` into train, valid and test (`extra`: more
    manifest entries, e.g. the filters applied before).

    Valid/test records whose item is not in train are dropped and counted in the manifest.
    """
    shares = check_fractions(fractions)
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise DataError(f"split: seed must be an integer >= 0, got {seed!r}")
    users_raw = raw_ids(interactions, "user_id")
    items_raw = raw_ids(interactions, "item_id")
    n_records = len(users_raw)
    where = f"split of {source}" if source else "split"
    order = np.random.default_rng(seed).permutation(n_records)
    n_train = round(shares[0] * n_records)
    n_valid = round(shares[1] * n_records)
    rows = dict(zip(PARTS, np.split(order, [n_train, n_train + n_valid])))
    for name in PARTS:
        if rows[name].size == 0:
            raise DataError(
                f"{where}: the {name} part is empty ({n_records} records, fractions {shares}); "
                f"use more interactions or a larger {name} fraction in --split"
            )

    user_codes, user_ids = pd.factorize(users_raw, sort=True)
    refuse_duplicates(user_codes, items_raw, user_ids)
    item_ids = pd.factorize(items_raw[rows["train"]], sort=True)[1]
    item_codes = pd.Index(item_ids).get_indexer(items_raw)
    _refuse_users_without_train(user_codes[rows["train"]], user_ids, where)

    shape = (len(user_ids), len(item_ids))
    matrices = {"train": ones_matrix(user_codes[rows["train"]], item_codes[rows["train"]], shape)}
    dropped = {}
    for name in PARTS[1:]:
        part = rows[name][item_codes[rows[name]] >= 0]
        dropped[name] = int(rows[name].size - part.size)
        if part.size == 0:
            raise DataError(
                f"{where}: no {name} record is left after dropping {dropped[name]} whose item is not in train; "
                f"use more interactions or a larger {name} fraction in --split"
            )
        matrices[name] = ones_matrix(user_codes[part], item_codes[part], shape)

    manifest = {
        "format_version": FORMAT_VERSION,
        "scheme": "records",
        "source": source,
        "source_sha256": source_sha256,
        "seed": int(seed),
        "fractions": list(shares),
        "n_users": shape[0],
        "n_items": shape[1],
        "counts": {name: int(matrices[name].nnz) for name in PARTS},
        "dropped": dropped,
        "n_records": n_records,
        **(extra or {}),
    }
    return finish_split(matrices, user_ids, item_ids, manifest, RecordsScheme)


def _refuse_users_without_train(train_user_codes: np.ndarray, user_ids: np.ndarray, where: str) -> None:
    """DataError when some user has no training record."""
    lacking = np.flatnonzero(np.bincount(train_user_codes, minlength=len(user_ids)) == 0)
    if lacking.size:
        raise DataError(
            f"{where}: {lacking.size} of {len(user_ids)} users have no training record (e.g. user "
            f"{show_id(user_ids[lacking[0]])}); hold out fewer records (e.g. --split 0.8,0.1,0.1) "
            "or drop users with few interactions"
        )
