"""Popularity: every user gets the items with the most training users, ties to the lower item index."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.sparse import csr_matrix

from raycf.models.base import FittedRecommender, SparseBatch
from raycf.models.config import TrainConfig
from raycf.models.params import ModelParams
from raycf.models.registry import register


@dataclass(frozen=True)
class PopularityParams(ModelParams):
    """Popularity takes no hyperparameters."""


@register
class Popularity(FittedRecommender[PopularityParams]):
    """Scores are n_items - rank by train count, so that every item's score is distinct."""

    name = "pop"
    label = "Popularity"
    colour = "tab:gray"
    Params = PopularityParams
    item_scores: torch.Tensor

    def __init__(self, n_items: int, config: TrainConfig) -> None:
        super().__init__(n_items, config)
        self.register_buffer("item_scores", torch.zeros(n_items))

    def fit_iteration(self, train: csr_matrix, iteration: int) -> None:
        counts = train.getnnz(axis=0)
        order = np.argsort(-counts, kind="stable")  # stable: equal counts keep the lower index first
        ranks = np.empty(self.n_items, dtype=np.int64)
        ranks[order] = np.arange(self.n_items)
        self.item_scores.copy_(torch.from_numpy((self.n_items - ranks).astype(np.float32)))

    def scores(self, batch: SparseBatch) -> torch.Tensor:
        return self.item_scores.repeat(batch.size, 1)
