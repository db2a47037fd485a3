"""EASE (Steck, WWW 2019): a closed-form item-item linear model with a zero diagonal."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch
from scipy.sparse import csr_matrix
from torch.nn import functional as F

from raycf.models.base import FittedRecommender, SparseBatch
from raycf.models.config import TrainConfig
from raycf.models.params import ModelParams, above, hyperparameter
from raycf.models.registry import register


@dataclass(frozen=True)
class EASEParams(ModelParams):
    """EASE's lambda."""

    l2: float = hyperparameter(500.0, "lambda, the L2 penalty of the item-item weights.", above(0, "for ease"),
                               label="lambda (l2)")


@register
class EASE(FittedRecommender[EASEParams]):
    """B = I - P diag(1 / diag(P)) with P = (X^T X + lambda I)^-1 (lambda: `l2`); scores are x_u B."""

    name = "ease"
    label = "EASE"
    colour = "tab:green"
    Params = EASEParams
    weights: torch.Tensor

    def __init__(self, n_items: int, config: TrainConfig) -> None:
        super().__init__(n_items, config)
        self.register_buffer("weights", torch.zeros(n_items, n_items))

    @classmethod
    def fit_bytes(cls, n_users: int, n_items: int, config: TrainConfig) -> int:
        # the float64 Gram matrix inverted in place, its float32 copy in the model, and the run's best copy
        return (8 + 4 + 4) * n_items * n_items

    def fit_iteration(self, train: csr_matrix, iteration: int) -> None:
        binary = (train > 0).astype(np.float64)
        gram = (binary.T @ binary).toarray()
        gram[np.diag_indices_from(gram)] += self.params.l2
        precision = scipy.linalg.inv(gram, overwrite_a=True, check_finite=False)
        precision /= -np.diag(precision)  # column j divided by -P_jj
        np.fill_diagonal(precision, 0.0)
        self.weights.copy_(torch.from_numpy(precision.astype(np.float32)))

    def scores(self, batch: SparseBatch) -> torch.Tensor:
        return F.embedding_bag(batch.indices, self.weights, batch.offsets, mode="sum", per_sample_weights=batch.values)
