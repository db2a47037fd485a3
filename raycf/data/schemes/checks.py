"""The checks the split schemes make of their input: the id columns, one record per (user, item) pair, and the
train / valid / test fractions."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from raycf.errors import DataError


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """Three finite numbers > 0 that sum to 1, else DataError naming the split field."""
    numbers = (
        isinstance(fractions, (list, tuple, np.ndarray))
        and len(fractions) == 3
        and all(isinstance(f, (int, float, np.number)) and not isinstance(f, bool) for f in fractions)
    )
    if not numbers or not all(math.isfinite(f) and f > 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise DataError(
            f"split: fractions must be three numbers > 0 (train, valid, test) that sum to 1, got {fractions!r}; "
            "e.g. --split 0.6,0.2,0.2"
        )
    train, valid, test = (float(f) for f in fractions)
    return train, valid, test


def raw_ids(interactions: pd.DataFrame, column: str) -> np.ndarray:
    """The column as int64, or as an object array of str; DataError for anything else."""
    if column not in interactions.columns:
        raise DataError(f"interactions: no {column} column (found {list(interactions.columns)}); name the id columns")
    values = interactions[column]
    missing = int(values.isna().sum())
    if missing:
        raise DataError(f"interactions: {missing} rows have no {column}; drop them or fix the ratings file")
    kind = pd.api.types.infer_dtype(values, skipna=False)
    if kind == "integer":
        return values.to_numpy(dtype=np.int64)
    if kind == "string":
        return values.to_numpy(dtype=object)
    raise DataError(f"interactions: {column} must hold integer or string ids, found {kind} values; "
                    "convert the column to one id type")


def refuse_duplicates(user_codes: np.ndarray, items_raw: np.ndarray, user_ids: np.ndarray) -> None:
    """DataError when a (user, item) pair occurs twice: the split would leak it across parts."""
    item_codes, all_items = pd.factorize(items_raw)
    pairs = pd.Index(user_codes.astype(np.int64) * len(all_items) + item_codes)
    if not pairs.is_unique:
        duplicated = pairs.duplicated()
        first = int(np.flatnonzero(duplicated)[0])
        raise DataError(
            f"interactions: {int(duplicated.sum())} duplicate (user_id, item_id) rows, e.g. user "
            f"{show_id(user_ids[user_codes[first]])} item {show_id(items_raw[first])}; keep one row per pair"
        )


def show_id(raw: object) -> str:
    """A raw id as the user wrote it: strings quoted, numbers plain."""
    return repr(raw) if isinstance(raw, str) else str(raw)
