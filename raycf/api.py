"""The Python API's model: `raycf.load(path)` gives a trained model that recommends raw item ids for users
given the raw item ids of their histories, through the same ranking path as evaluation and `raycf score`."""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from raycf.data.source import load_split
from raycf.errors import RaycfError
from raycf.eval.ranking import rank
from raycf.models import Recommender
from raycf.models.checkpoint import check_same_split, checkpoint_from_bytes
from raycf.runs.layout import SPLIT_DIR
from raycf.runs.targets import read_checkpoint_bytes, resolve_target

HISTORY = "history"
"""`exclude=HISTORY` (the default): never recommend an item of the user's own history."""


@dataclass(frozen=True)
class Recommendations:
    """Per user (in the order given): raw item ids best first and their scores; `unknown_items` counts history
    items the model has never seen (left out of its input)."""

    items: list[np.ndarray]
    scores: list[np.ndarray]
    unknown_items: int = 0

    def to_frame(self) -> pd.DataFrame:
        """One row per (user position, rank): columns `user`, `rank` (1..k), `item_id`, `score`."""
        lengths = [len(items) for items in self.items]
        return pd.DataFrame({
            "user": np.repeat(np.arange(len(lengths)), lengths),
            "rank": np.concatenate([np.arange(1, n + 1) for n in lengths]) if lengths else [],
            "item_id": np.concatenate(self.items) if lengths else [],
            "score": np.concatenate(self.scores) if lengths else [],
        })


@dataclass
class LoadedModel:
    """A trained model with the raw ids of its items (its split's train items)."""

    model: Recommender
    item_ids: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def rows(self, histories: Sequence[Iterable[Any]]) -> tuple[sp.csr_matrix, int]:
        """The histories as a users x items CSR of ones, and how many of their items are unknown."""
        index = pd.Index(self.item_ids)
        rows, cols, unknown = [], [], 0
        for user, history in enumerate(histories):
            found = index.get_indexer(pd.unique(np.asarray(list(history), dtype=self.item_ids.dtype)))
            unknown += int((found < 0).sum())
            cols.append(found[found >= 0])
            rows.append(np.full((found >= 0).sum(), user))
        rows_all = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
        cols_all = np.concatenate(cols) if cols else np.zeros(0, dtype=np.int64)
        matrix = sp.csr_matrix((np.ones(len(rows_all), np.float32), (rows_all, cols_all)),
                               shape=(len(histories), len(self.item_ids)))
        matrix.sum_duplicates()
        return matrix, unknown

    def recommend(self, histories: Sequence[Iterable[Any]], k: int = 10,
                  exclude: str | Sequence[Iterable[Any]] | None = HISTORY, batch_size: int = 1024) -> Recommendations:
        """The top `k` raw item ids and scores for each history (a collection of raw item ids), in batches.

        `exclude`: "history" (default) never recommends a user's own items; None excludes nothing; a sequence
        (one collection of raw item ids per user) excludes those instead.
        """
        if k < 1 or batch_size < 1:
            raise RaycfError(f"recommend: k and batch_size must be >= 1, got k={k}, batch_size={batch_size}")
        inputs, unknown = self.rows(histories)
        if isinstance(exclude, str) and exclude == HISTORY:
            known = inputs
        elif exclude is None:
            known = sp.csr_matrix(inputs.shape, dtype=np.float32)
        else:
            if len(exclude) != len(histories):
                raise RaycfError(f"recommend: exclude has {len(exclude)} entries for {len(histories)} users; give "
                                 "one collection of item ids per user, 'history' or None")
            known = self.rows(exclude)[0]
        items, scores = [], []
        self.model.eval()
        for start in range(0, len(histories), batch_size):
            batch = slice(start, start + batch_size)
            top, top_scores = rank(self.model, inputs[batch], known[batch], k)
            for row, row_scores in zip(top.cpu().numpy(), top_scores.cpu().numpy()):
                kept = row >= 0
                items.append(self.item_ids[row[kept]])
                scores.append(row_scores[kept].astype(np.float32))
        return Recommendations(items, scores, unknown)


def load(path: str, model: str | None = None, trial: str | None = None) -> LoadedModel:
    """The model of a run directory (a `raycf tune` run: its best trial, or `model`'s best, or `trial`; a
    `raycf train` output) or of a trial checkpoint directory, with its split's item ids. A path that is none
    of these raises RaycfError in one line."""
    target = resolve_target(str(path), model, trial)
    with tempfile.TemporaryDirectory() as local:
        if not target.run.has(f"{SPLIT_DIR}/manifest.json"):
            raise RaycfError(f"{path}: no {SPLIT_DIR}/ beside the checkpoint; load a run directory")
        split = load_split(target.run.get_directory(SPLIT_DIR, Path(local)))
    loaded, meta = checkpoint_from_bytes(read_checkpoint_bytes(target.checkpoint), target.checkpoint,
                                         expect_items=split.n_items)
    check_same_split(meta, split.manifest["split_sha256"], target.checkpoint)
    return LoadedModel(loaded, split.item_ids, meta)
