"""iALS (Hu, Koren and Volinsky, ICDM 2008), fitted by the `implicit` library; users folded in to score."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from implicit.cpu.als import AlternatingLeastSquares
from scipy.sparse import csr_matrix
from threadpoolctl import threadpool_limits

from raycf.models.base import FittedRecommender, SparseBatch
from raycf.models.config import TrainConfig
from raycf.models.params import ModelParams, above, at_least, hyperparameter
from raycf.models.registry import register

FOLD_IN_ENTRIES = 2_000_000
"""Padded (user, history item) pairs gathered at once when folding users in, which bounds scoring's memory."""


@dataclass(frozen=True)
class IALSParams(ModelParams):
    """iALS's factors and confidence; defaults chosen on validation on the ML-1M split seeds 0-2
    (benchmarks/bench_baselines.py, README)."""

    factors: int = hyperparameter(64, "Latent factors.", at_least(1))
    l2: float = hyperparameter(100.0, "lambda, the L2 penalty of the factors.", above(0, "for ials"),
                               label="lambda (l2)")
    alpha: float = hyperparameter(10.0, "Confidence of an observed item (implicit's alpha: c = alpha * x).", above(0))
    iterations: int = hyperparameter(15, "Alternating least squares iterations (each an epoch: validated, reported "
                                     "to ASHA).", at_least(1))


@register
class IALS(FittedRecommender[IALSParams]):
    """Weighted matrix factorisation with confidence c = alpha * x on observed items, 1 elsewhere, and
    regularisation `l2`; implicit's exact least-squares solver, one ALS iteration per epoch.

    Only the item factors are kept: with the exact solver a user's factors are a function of them, so a
    user is scored (and a restored run continues) from the item factors and the user's items alone, the
    training users and new users alike.
    """

    name = "ials"
    label = "iALS"
    colour = "tab:brown"
    Params = IALSParams
    item_factors: torch.Tensor

    def __init__(self, n_items: int, config: TrainConfig) -> None:
        super().__init__(n_items, config)
        self.register_buffer("item_factors", torch.zeros(n_items, self.params.factors))

    @classmethod
    def iterations(cls, config: TrainConfig) -> int:
        return cast(IALSParams, config.params).iterations

    def fit_iteration(self, train: csr_matrix, iteration: int) -> None:
        with threadpool_limits(1, "blas"):  # implicit's own threads do the work (it warns otherwise)
            als = AlternatingLeastSquares(
                factors=self.params.factors, regularization=self.params.l2, alpha=self.params.alpha, iterations=1,
                use_cg=False, random_state=self.config.seed, num_threads=torch.get_num_threads(),
            )
            if iteration > 0:  # otherwise implicit draws the first factors from the seed
                als.item_factors = self.item_factors.cpu().numpy().copy()
                als.user_factors = np.zeros((train.shape[0], self.params.factors), dtype=np.float32)
            als.fit((train > 0).astype(np.float32), show_progress=False)
        self.item_factors.copy_(torch.from_numpy(als.item_factors))

    def fold_in(self, batch: SparseBatch) -> torch.Tensor:
        """Each user's factors: the solution of (Y^T C_u Y + l2 I) x = Y^T C_u p_u, as implicit's user step."""
        factors = self.item_factors
        base = factors.T @ factors + self.params.l2 * torch.eye(factors.shape[1], device=factors.device)
        counts = torch.bincount(batch.rows, minlength=batch.size)
        positions = torch.arange(len(batch.indices), device=factors.device) - batch.offsets[batch.rows]
        longest = int(counts.max()) if batch.size else 0
        users = max(1, FOLD_IN_ENTRIES // max(1, longest))
        solved = []
        for start in range(0, batch.size, users):
            rows = slice(start, min(start + users, batch.size))
            chosen = (batch.rows >= rows.start) & (batch.rows < rows.stop)
            size = rows.stop - rows.start
            items = torch.zeros(size, max(1, longest), dtype=batch.indices.dtype, device=factors.device)
            confidence = torch.zeros(size, max(1, longest), device=factors.device)
            items[batch.rows[chosen] - start, positions[chosen]] = batch.indices[chosen]
            confidence[batch.rows[chosen] - start, positions[chosen]] = self.params.alpha * (batch.values[chosen] > 0)
            gathered = factors[items]  # users x longest x factors; padding has confidence 0
            extra = confidence - (confidence > 0).float()  # c - 1 on observed items, 0 on padding
            system = base + (gathered * extra[..., None]).transpose(1, 2) @ gathered
            target = (gathered * confidence[..., None]).sum(dim=1)
            solved.append(torch.linalg.solve(system, target))
        return torch.cat(solved) if solved else torch.zeros(0, factors.shape[1], device=factors.device)

    def scores(self, batch: SparseBatch) -> torch.Tensor:
        return self.fold_in(batch) @ self.item_factors.T
