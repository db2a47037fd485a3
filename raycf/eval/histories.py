"""Raw-id histories (one collection of raw item ids per user) -> the model's input rows, every id checked against
the kind of the split's item ids; items the model never saw are left out and counted. Shared by the Python API and
`raycf serve`, which turn a refusal (RaycfError naming the argument and what was expected) into one line."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from raycf.errors import RaycfError


def id_kind(item_ids: np.ndarray) -> str:
    """How the split's item ids are written, for messages: `integers (e.g. 12)` or `strings (e.g. 'tt01')`."""
    kind = "integers" if item_ids.dtype.kind in "iu" else "strings"
    return f"{kind} (e.g. {item_ids[:1].tolist()[0]!r})" if len(item_ids) else kind


def is_item_id(value: Any, integer_ids: bool) -> bool:
    """Whether `value` is a raw id of the kind given: an int (not a bool) or a string."""
    if integer_ids:
        return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    return isinstance(value, str)


def history_array(history: Any, item_ids: np.ndarray, where: str) -> np.ndarray:
    """One history as a 1-D array of the split's id type; RaycfError naming `where` (`histories[3]`) otherwise."""
    if isinstance(history, (str, bytes)) or not isinstance(history, Iterable):
        raise RaycfError(f"{where} is {history!r}, not a collection of raw item ids")
    integer_ids = item_ids.dtype.kind in "iu"
    if isinstance(history, np.ndarray) and history.ndim == 1 and integer_ids and history.dtype.kind in "iu":
        return history.astype(item_ids.dtype)
    values = list(history)
    bad = [value for value in values if not is_item_id(value, integer_ids)]
    if bad:
        raise RaycfError(f"{where} holds {bad[0]!r}, not an item id: this model's item ids are {id_kind(item_ids)}")
    return np.asarray(values, dtype=item_ids.dtype)


def history_rows(
    histories: Sequence[Any], item_ids: np.ndarray, argument: str = "histories"
) -> tuple[sp.csr_matrix, np.ndarray]:
    """The histories as a users x items CSR of ones (columns follow `item_ids`) and each user's count of items
    not among `item_ids` (left out)."""
    index = pd.Index(item_ids)
    rows, cols, unknown = [], [], np.zeros(len(histories), dtype=np.int64)
    for user, history in enumerate(histories):
        found = index.get_indexer(pd.unique(history_array(history, item_ids, f"{argument}[{user}]")))
        unknown[user] = int((found < 0).sum())
        cols.append(found[found >= 0])
        rows.append(np.full(len(cols[-1]), user))
    rows_all = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    cols_all = np.concatenate(cols) if cols else np.zeros(0, dtype=np.int64)
    matrix = sp.csr_matrix((np.ones(len(rows_all), np.float32), (rows_all, cols_all)),
                           shape=(len(histories), len(item_ids)))
    matrix.sum_duplicates()
    return matrix, unknown
