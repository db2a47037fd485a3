"""What a replica holds: a run's model, its split's users and their inputs (as `raycf score` gives them), and the
training popularity; a batch of queries -> their answers through raycf.eval.ranking.recommend_rows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from raycf.eval.ranking import item_popularity, recommend_rows
from raycf.runs.loading import RunModel
from raycf.serving.queries import Query


@dataclass
class ServedModel:
    """A run's model ready for queries; `facts` is what GET /model answers and every answer carries."""

    run: RunModel
    inputs: sp.csr_matrix
    popularity: np.ndarray
    index: pd.Index
    """The model's raw item ids, for lookups."""
    facts: dict[str, Any]

    @classmethod
    def of(cls, run: RunModel, uri: str) -> ServedModel:
        split = run.split
        facts = {
            "run": uri, "model": run.model.name, "trial": run.target.trial_id, "checkpoint": run.target.checkpoint,
            "checkpoint_epoch": run.meta.get("epoch"), "split_sha256": split.manifest["split_sha256"],
            "users": int(split.n_users), "items": int(split.n_items),
        }
        return cls(run, split.inputs("score").tocsr(), item_popularity(split.train), pd.Index(split.item_ids), facts)

    @property
    def item_ids(self) -> np.ndarray:
        return self.run.split.item_ids

    @property
    def user_ids(self) -> np.ndarray:
        return self.run.split.user_ids

    def columns(self, items: np.ndarray | None) -> np.ndarray:
        """The sorted item indices of raw ids (those the model never saw left out)."""
        if items is None:
            return np.zeros(0, dtype=np.int64)
        found = self.index.get_indexer(items)
        return np.unique(found[found >= 0])

    def matrix(self, columns: list[np.ndarray]) -> sp.csr_matrix:
        """Rows of item indices as a CSR of ones over the model's items."""
        indptr = np.concatenate([[0], np.cumsum([len(row) for row in columns])])
        indices = np.concatenate(columns) if columns else np.zeros(0, dtype=np.int64)
        return sp.csr_matrix((np.ones(len(indices), np.float32), indices, indptr),
                             shape=(len(columns), len(self.item_ids)))

    def history(self, query: Query) -> np.ndarray:
        """The query's input: its user's row of the split's score inputs, or its items."""
        if query.user_row is None:
            return self.columns(query.items)
        start, stop = self.inputs.indptr[query.user_row], self.inputs.indptr[query.user_row + 1]
        return self.inputs.indices[start:stop].astype(np.int64)

    def answer(self, queries: list[Query]) -> list[dict[str, Any]]:
        """Each query's top k raw item ids and scores, ranked together in one batch."""
        histories = [self.history(query) for query in queries]
        excluded = [np.union1d(history if query.exclude_history else [], self.columns(query.exclude)).astype(np.int64)
                    for query, history in zip(queries, histories)]
        ranked = recommend_rows(self.run.model, self.matrix(histories), self.matrix(excluded),
                                max(query.k for query in queries), self.popularity)
        top, scores = ranked.top.cpu().numpy(), ranked.scores.cpu().numpy()
        answers = []
        for i, query in enumerate(queries):
            kept = top[i, :query.k] >= 0
            unknown = 0 if query.items is None else len(np.unique(query.items)) - len(histories[i])
            answers.append({
                **({"user_id": query.user_id} if query.user_row is not None else {}),
                "items": self.item_ids[top[i, :query.k][kept]].tolist(),
                "scores": scores[i, :query.k][kept].astype(np.float32).tolist(),
                "fallback": bool(ranked.fallback[i]),
                "unknown_items": int(unknown),
                **{key: self.facts[key] for key in ("model", "trial", "split_sha256")},
            })
        return answers
