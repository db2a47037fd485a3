"""A request's JSON body -> a checked Query (whose user, history, k, exclusions), or a RequestError carrying the
HTTP status and a one-line message naming the field."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from raycf.errors import RaycfError
from raycf.eval.histories import history_array, id_kind, is_item_id

DEFAULT_K = 10
MAX_K = 1000
"""The longest list one query may ask for."""


class RequestError(RaycfError):
    """A request that cannot be answered: its HTTP status (400 malformed, 404 unknown user, 422 invalid field)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Query:
    """One user's request: a known user's row in the split, or a raw-id history; `exclude` raw ids never
    recommended, beside the user's history unless `exclude_history` is False."""

    k: int
    user_row: int | None = None
    user_id: Any = None
    items: np.ndarray | None = None
    exclude: np.ndarray | None = None
    exclude_history: bool = True


def parse_query(body: Any, user_ids: np.ndarray, item_ids: np.ndarray, where: str = "body") -> Query:
    """The query of a JSON object {"user_id": ID} or {"items": [IDS]}, with optional "k" (default DEFAULT_K),
    "exclude" ([IDS]) and "exclude_history" (default true); RequestError naming the field otherwise."""
    if not isinstance(body, dict):
        raise RequestError(422, f"{where}: expected a JSON object with user_id or items, got {type(body).__name__}")
    unknown = sorted(set(body) - {"user_id", "items", "k", "exclude", "exclude_history"})
    if unknown:
        raise RequestError(422, f"{where}: unknown field {unknown[0]!r}; expected user_id or items, k, exclude, "
                                "exclude_history")
    if ("user_id" in body) == ("items" in body):
        raise RequestError(422, f"{where}: give either user_id (a user of the run) or items (a history of raw item "
                                "ids), not both or neither")
    k = body.get("k", DEFAULT_K)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise RequestError(422, f"{where}.k: expected an integer from 1 to {MAX_K}, got {k!r}")
    exclude_history = body.get("exclude_history", True)
    if not isinstance(exclude_history, bool):
        raise RequestError(422, f"{where}.exclude_history: expected true or false, got {exclude_history!r}")
    exclude = id_list(body["exclude"], item_ids, f"{where}.exclude") if "exclude" in body else None
    if "items" in body:
        return Query(k, items=id_list(body["items"], item_ids, f"{where}.items"), exclude=exclude,
                     exclude_history=exclude_history)
    user_id = body["user_id"]
    integer_ids = user_ids.dtype.kind in "iu"
    if not is_item_id(user_id, integer_ids):
        raise RequestError(422, f"{where}.user_id: expected a user id, {id_kind(user_ids)}, got {user_id!r}")
    row = int(np.searchsorted(user_ids, user_id))
    if row >= len(user_ids) or user_ids[row] != user_id:
        raise RequestError(404, f"{where}.user_id: unknown user {user_id!r}; ask for a user of the run's split, or "
                                "send their history as items")
    return Query(k, user_row=row, user_id=user_id, exclude=exclude, exclude_history=exclude_history)


def id_list(value: Any, item_ids: np.ndarray, where: str) -> np.ndarray:
    """A JSON list of raw item ids as an array; RequestError 422 naming `where` otherwise."""
    if not isinstance(value, list):
        raise RequestError(422, f"{where}: expected a list of raw item ids, got {type(value).__name__}")
    try:
        return history_array(value, item_ids, where)
    except RaycfError as error:
        raise RequestError(422, str(error)) from None
