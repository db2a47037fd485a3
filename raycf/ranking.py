"""The one scoring path: a model ranks the items for a batch of users from their input rows, known items masked.
Evaluation, `raycf score`'s actors and the Python API (`raycf.load(...).recommend`) all rank through `rank`.

A neural model trained with `matmul_dtype: bfloat16` ranks in two stages that give the float32 ranking: its last
layer scores every item in bfloat16 (fast), the best `candidates` of each row are rescored exactly in float32, and
a row keeps that result only when the bfloat16 rounding bound proves that no other item can reach its k-th exact
score; the other rows are scored in float32 throughout.
"""

from __future__ import annotations

import scipy.sparse as sp
import torch
from torch import nn
from torch.nn import functional as F

from raycf.metrics import mask_known, top_k
from raycf.models import NeuralRecommender, Recommender, SparseBatch

SCORE_CELLS = 2**24
"""Scores one ranking batch may hold (64 MiB of float32)."""
ROUNDING_BOUND = 2.0**-6
"""Bounds |bf16 score - exact score| relative to |features| |item weights| + |bias|: rounding the two factors to
bfloat16 (8 significant bits) errs by at most 2^-7 of that, rounding the bias and the result by 2^-8 each, float32
accumulation by ~1e-5; 2^-6 covers the sum with room."""


def rank(model: Recommender, inputs: sp.csr_matrix, known: sp.csr_matrix, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each user's top `k` item indices (best first, ties to the lower index, -1 padded when fewer candidates)
    and their scores, the model reading `inputs` (users x items) and never ranking `known`."""
    with torch.no_grad():
        batch = SparseBatch.from_csr(inputs, model.device)
        if isinstance(model, NeuralRecommender) and model.config.matmul_dtype != "float32":
            return rank_in_two_stages(model.features(batch), model.decoder, known, k,
                                      getattr(torch, model.config.matmul_dtype))
        return ranked(model.scores(batch), known, k)


def ranked(scores: torch.Tensor, known: sp.csr_matrix, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`rank`'s result from whole rows of scores: raycf.metrics.top_k and the scores of the items it picks."""
    top = top_k(scores, known, k)
    return top, scores.gather(1, top.clamp_min(0))


def batch_rows(n_items: int) -> int:
    """Users per ranking batch: 1,024, fewer where their scores would pass SCORE_CELLS."""
    return max(1, min(1024, SCORE_CELLS // n_items))


def candidate_count(k: int, n_items: int) -> int:
    """How many items per row the coarse stage keeps for exact rescoring: enough that nearly every row is proven
    (measured on ML-1M after 20 epochs, k = 5: 23 leave 1 to 30 of 6,038 rows unproven, 18 leave 170 to 500),
    few enough to keep its top-k cheap."""
    return min(n_items, 3 * k // 2 + 16)


def rank_in_two_stages(
    features: torch.Tensor, layer: nn.Linear, known: sp.csr_matrix, k: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """`rank` for scores layer(features): coarse scores in `dtype`, exact float32 scores of each row's
    `candidate_count` best, and float32 scores of the whole row where the coarse stage cannot prove the result."""
    weight, bias = layer.weight, layer.bias
    n_rows, n_items = features.shape[0], weight.shape[0]
    coarse = F.linear(features.to(dtype), weight.to(dtype), bias.to(dtype))
    mask_known(coarse, known)
    coarse_values, candidates = torch.topk(coarse, candidate_count(k, n_items), dim=1)
    del coarse
    # exact scores of every item that is some row's candidate: one float32 product over the batch's union
    union, position = torch.unique(candidates, return_inverse=True)
    exact = F.linear(features, weight[union], bias[union]).gather(1, position)
    exact = exact.masked_fill_(coarse_values == -torch.inf, -torch.inf)
    exact, order = torch.sort(exact, dim=1, descending=True)
    candidates = candidates.gather(1, order)
    depth = min(k, candidates.shape[1])
    # a finite tie among the first k + 1 would need the lower index first: such rare rows take the float32 path
    head = exact[:, : depth + 1]
    tied = ((head[:, 1:] == head[:, :-1]) & (head[:, 1:] > -torch.inf)).any(dim=1)
    top = torch.full((n_rows, k), -1, dtype=torch.int64, device=features.device)
    top_scores = torch.full((n_rows, k), -torch.inf, device=features.device)
    top[:, :depth] = candidates[:, :depth].masked_fill(exact[:, :depth] == -torch.inf, -1)
    top_scores[:, :depth] = exact[:, :depth]
    # a row is proven when every item outside its candidates (coarse score at most the last candidate's) falls
    # short of its k-th exact score even with the largest rounding error
    largest_error = ROUNDING_BOUND * (features.norm(dim=1) * weight.norm(dim=1).max() + bias.abs().max())
    outside = coarse_values[:, -1].float() + largest_error
    everything = candidates.shape[1] == n_items  # no item outside the candidates
    proven = ((coarse_values[:, -1] == -torch.inf) | (exact[:, depth - 1] > outside) | everything) & ~tied
    unproven = torch.nonzero(~proven).flatten()
    if len(unproven):
        top[unproven], top_scores[unproven] = ranked(layer(features[unproven]), known[unproven.cpu().numpy()], k)
    return top, top_scores
