"""The Python API's model: `raycf.load(path)` gives a trained model that recommends raw item ids for users
given the raw item ids of their histories, through the same ranking path as `raycf score` and `raycf serve`
(a user with no known item gets the training set's most popular items, flagged)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from raycf.errors import RaycfError
from raycf.eval.histories import history_rows
from raycf.eval.ranking import item_popularity, recommend_rows
from raycf.models import Recommender
from raycf.runs.loading import load_run_model

HISTORY = "history"
"""`exclude=HISTORY` (the default): never recommend an item of the user's own history."""


@dataclass(frozen=True)
class Recommendations:
    """Per user (in the order given): raw item ids best first and their scores; `users` are the user ids given (a
    mapping's keys; positions 0, 1, ... for a list); `fallback` marks the users with no item the model knows (a
    cold start), who get the training set's most popular items (scored by their count of training users);
    `unknown_items` counts history items the model has never seen (left out of its input)."""

    users: np.ndarray
    items: list[np.ndarray]
    scores: list[np.ndarray]
    fallback: np.ndarray
    unknown_items: int = 0

    def to_frame(self) -> pd.DataFrame:
        """One row per (user, rank): columns `user` (the id given), `rank` (1..k), `item_id`, `score`, `fallback`."""
        lengths = [len(items) for items in self.items]
        return pd.DataFrame({
            "user": np.repeat(self.users, lengths),
            "rank": np.concatenate([np.arange(1, n + 1) for n in lengths]) if lengths else [],
            "item_id": np.concatenate(self.items) if lengths else [],
            "score": np.concatenate(self.scores) if lengths else [],
            "fallback": np.repeat(self.fallback, lengths),
        })


def positive_int(name: str, value: Any) -> int:
    """`recommend`'s `name` argument as an int >= 1; RaycfError naming it otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise RaycfError(f"recommend: {name} must be an integer >= 1, got {value!r}")
    return int(value)


def users_and_histories(histories: Any) -> tuple[np.ndarray, list[Any]]:
    """The user ids (a mapping's keys, or positions) and the histories of `recommend`'s first argument."""
    if isinstance(histories, (Mapping, pd.Series)):
        pairs = list(histories.items())
        return np.asarray([user for user, _ in pairs]), [history for _, history in pairs]
    if isinstance(histories, (str, bytes)) or not isinstance(histories, Iterable):
        raise RaycfError(f"recommend: histories must be one collection of raw item ids per user (a list of lists, "
                         f"or a dict of user id -> list), got {type(histories).__name__}")
    given = list(histories)
    if given and not any(isinstance(history, Iterable) and not isinstance(history, (str, bytes)) for history in given):
        shown = ", ".join(map(repr, given[:3])) + (", ..." if len(given) > 3 else "")
        raise RaycfError(f"recommend: histories must be one collection of raw item ids per user, got a flat list "
                         f"({shown}); for one user write recommend([[{shown}]])")
    return np.arange(len(given)), given


@dataclass
class LoadedModel:
    """A trained model with the raw ids of its items (its split's train items) and their training popularity
    (the cold-start ranking)."""

    model: Recommender
    item_ids: np.ndarray
    popularity: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def recommend(self, histories: Sequence[Iterable[Any]] | Mapping[Any, Iterable[Any]], k: int = 10,
                  exclude: str | Sequence[Iterable[Any]] | Mapping[Any, Iterable[Any]] | None = HISTORY,
                  batch_size: int = 1024) -> Recommendations:
        """The top `k` raw item ids and scores for each history (a collection of raw item ids), in batches;
        `histories` is a list (users are its positions) or a mapping of user id -> history.

        `exclude`: "history" (default) never recommends a user's own items; None excludes nothing; one collection
        of raw item ids per user (a list, or a mapping by user id) excludes those instead. Bad input raises
        RaycfError naming the argument.
        """
        k, batch_size = positive_int("k", k), positive_int("batch_size", batch_size)
        users, given = users_and_histories(histories)
        inputs, unknown = history_rows(given, self.item_ids, "recommend: histories")
        known = self.excluded(exclude, users, given, inputs)
        items, scores, fallback = [], [], []
        self.model.eval()
        for start in range(0, len(given), batch_size):
            batch = slice(start, start + batch_size)
            ranked = recommend_rows(self.model, inputs[batch], known[batch], k, self.popularity)
            for row, row_scores in zip(ranked.top.cpu().numpy(), ranked.scores.cpu().numpy()):
                kept = row >= 0
                items.append(self.item_ids[row[kept]])
                scores.append(row_scores[kept].astype(np.float32))
            fallback.append(ranked.fallback)
        flags = np.concatenate(fallback) if fallback else np.zeros(0, dtype=bool)
        return Recommendations(users, items, scores, flags, int(unknown.sum()))

    def excluded(self, exclude: Any, users: np.ndarray, given: list[Any], inputs: sp.csr_matrix) -> sp.csr_matrix:
        """The items never recommended, per user, from `recommend`'s `exclude`."""
        if isinstance(exclude, str) and exclude == HISTORY:
            return inputs
        if exclude is None:
            return sp.csr_matrix(inputs.shape, dtype=np.float32)
        if isinstance(exclude, (str, bytes)) or not isinstance(exclude, Iterable):
            raise RaycfError(f"recommend: exclude must be {HISTORY!r}, None, or one collection of raw item ids per "
                             f"user, got {exclude!r}")
        if isinstance(exclude, (Mapping, pd.Series)):
            per_user = [exclude.get(user, ()) for user in users]
        else:
            per_user = list(exclude)
            if len(per_user) != len(given):
                raise RaycfError(f"recommend: exclude has {len(per_user)} entries for {len(given)} users; give "
                                 f"one collection of item ids per user, {HISTORY!r} or None")
        return history_rows(per_user, self.item_ids, "recommend: exclude")[0]


def load(path: str, model: str | None = None, trial: str | None = None) -> LoadedModel:
    """The model of a run directory (a `raycf tune` run: its best trial, or `model`'s best, or `trial`; a
    `raycf train` output) or of a trial checkpoint directory, with its split's item ids. A path that is none
    of these raises RaycfError in one line."""
    run = load_run_model(str(path), model, trial)
    return LoadedModel(run.model, run.split.item_ids, item_popularity(run.split.train), run.meta)
