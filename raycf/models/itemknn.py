"""ItemKNN: item-item cosine similarity with shrinkage, each item's `neighbors` most similar items kept."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from scipy.sparse import csr_matrix

from raycf.models.base import FittedRecommender, SparseBatch
from raycf.models.config import TrainConfig
from raycf.models.params import ModelParams, at_least, hyperparameter
from raycf.models.registry import register

BLOCK_ENTRIES = 4_000_000
"""Similarities computed at once (a block of items against all items), which bounds the fit's memory."""


def kept_neighbors(n_items: int, params: ItemKNNParams) -> int:
    """`neighbors`, at most every other item."""
    return max(1, min(params.neighbors, n_items - 1))


@dataclass(frozen=True)
class ItemKNNParams(ModelParams):
    """ItemKNN's neighbourhood."""

    neighbors: int = hyperparameter(100, "The most similar items kept per item.", at_least(1))
    shrink: float = hyperparameter(10.0, "Cosine similarity shrinkage: x_i.x_j / (|x_i| |x_j| + shrink).", at_least(0))


@register
class ItemKNN(FittedRecommender[ItemKNNParams]):
    """sim(i, j) = x_i.x_j / (|x_i| |x_j| + shrink) over binary item columns; score(u, i) = the sum of sim(i, j)
    over the user's items j among i's neighbours."""

    name = "itemknn"
    label = "ItemKNN"
    colour = "tab:purple"
    Params = ItemKNNParams
    neighbor_items: torch.Tensor
    neighbor_weights: torch.Tensor

    def __init__(self, n_items: int, config: TrainConfig) -> None:
        super().__init__(n_items, config)
        kept = kept_neighbors(n_items, self.params)
        self.register_buffer("neighbor_items", torch.zeros(n_items, kept, dtype=torch.int64))
        self.register_buffer("neighbor_weights", torch.zeros(n_items, kept))

    @classmethod
    def fit_bytes(cls, n_users: int, n_items: int, config: TrainConfig) -> int:
        # a block of float64 similarities and its sort order; the neighbour lists, twice (model, best copy)
        return (3 * 8 * BLOCK_ENTRIES
                + 2 * (8 + 4) * n_items * kept_neighbors(n_items, cast(ItemKNNParams, config.params)))

    def fit_iteration(self, train: csr_matrix, iteration: int) -> None:
        binary = (train > 0).astype(np.float64).tocsc()
        norms = np.sqrt(binary.getnnz(axis=0).astype(np.float64))
        kept = self.neighbor_items.shape[1]
        block = max(1, BLOCK_ENTRIES // self.n_items)
        for start in range(0, self.n_items, block):
            items = np.arange(start, min(start + block, self.n_items))
            similarity = (binary[:, items].T @ binary).toarray()
            with np.errstate(invalid="ignore"):  # 0 / 0: an item without train users (and shrink 0)
                similarity /= norms[items, None] * norms[None, :] + self.params.shrink
            similarity = np.nan_to_num(similarity, nan=0.0)
            similarity[np.arange(len(items)), items] = -np.inf  # never its own neighbour
            order = np.argsort(-similarity, axis=1, kind="stable")[:, :kept]  # ties: the lower item index
            weights = np.take_along_axis(similarity, order, axis=1)
            weights = np.where(np.isfinite(weights), weights, 0.0).astype(np.float32)  # -inf: itself, 1 item only
            device = self.neighbor_items.device
            self.neighbor_items[items] = torch.from_numpy(order).to(device)
            self.neighbor_weights[items] = torch.from_numpy(weights).to(device)

    def scores(self, batch: SparseBatch) -> torch.Tensor:
        dense = torch.zeros(batch.size, self.n_items, device=batch.values.device)
        dense[batch.rows, batch.indices] = batch.values
        rows = torch.arange(self.n_items, device=dense.device).repeat_interleave(self.neighbor_items.shape[1])
        similarity = torch.sparse_coo_tensor(
            torch.stack([rows, self.neighbor_items.flatten()]), self.neighbor_weights.flatten(),
            (self.n_items, self.n_items), check_invariants=False,
        )
        return torch.sparse.mm(similarity, dense.T).T
