"""The one scoring path: a model ranks the items for a batch of users from their input rows, known items masked.
Evaluation, `raycf score`'s actors, `raycf serve` and the Python API (`raycf.load(...).recommend`) all rank through
`rank`; the last three through `recommend_rows`, which gives a user without any input item (a cold start) the
training set's most popular items instead, flagged.

A neural model trained with `matmul_dtype: bfloat16` ranks in two stages that give the float32 ranking: its last
layer scores every item in bfloat16 (fast), the best `candidates` of each row are rescored exactly in float32, and
a row keeps that result only when the bfloat16 rounding bound proves that no other item can reach its k-th exact
score; the other rows are scored in float32 throughout.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn
from torch.nn import functional as F

from raycf.eval.metrics import mask_known, top_k
from raycf.models import NeuralRecommender, Recommender, SparseBatch

SCORE_CELLS = 2**24
"""Scores one ranking batch may hold (64 MiB of float32)."""
BLOCK_CELLS = 2**18
"""Scores a CPU product writes at a time (`linear_in_blocks`: 1 MiB of float32, about a core's cache)."""
MIN_BLOCK_ROWS = 64
"""Fewest rows a block may have: with fewer the product itself slows down more than the cache saves (834 x 200 x
20,108 at one thread: one product 153 ms, blocks of 13 rows 223 ms), so wider catalogs take one product."""


def rank(model: Recommender, inputs: sp.csr_matrix, known: sp.csr_matrix, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each user's top `k` item indices (best first, ties to the lower index, -1 padded when fewer candidates)
    and their scores, the model reading `inputs` (users x items) and never ranking `known`."""
    return rank_batch(model, SparseBatch.from_csr(inputs, model.device), known, k)


class Recommended(NamedTuple):
    """`recommend_rows`'s result per user: top item indices (-1 padded), their scores, and whether the user had
    no input item and got the most popular items (scored by their count of training users)."""

    top: torch.Tensor
    scores: torch.Tensor
    fallback: np.ndarray


def item_popularity(train: sp.csr_matrix) -> np.ndarray:
    """Each item's count of training users (float32): the cold-start ranking, ties to the lower index."""
    return train.getnnz(axis=0).astype(np.float32)


def recommend_rows(
    model: Recommender, inputs: sp.csr_matrix, known: sp.csr_matrix, k: int, popularity: np.ndarray
) -> Recommended:
    """`rank`, except that a user whose input row is empty gets the items of highest `popularity`
    (`item_popularity` of the training set), never ranking `known`, flagged in `fallback`."""
    top, scores = rank(model, inputs, known, k)
    fallback = np.diff(inputs.indptr) == 0
    if fallback.any():
        rows = torch.from_numpy(np.flatnonzero(fallback)).to(top.device)
        counts = torch.as_tensor(popularity, dtype=scores.dtype, device=scores.device).repeat(len(rows), 1)
        top[rows], scores[rows] = ranked(counts, known[rows.cpu().numpy()], k)
    return Recommended(top, scores, fallback)


def rank_batch(
    model: Recommender, batch: SparseBatch, known: sp.csr_matrix, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`rank` for inputs already cut as a batch (e.g. from rows resident on the model's device)."""
    with torch.no_grad():
        if not isinstance(model, NeuralRecommender):
            return ranked(model.scores(batch), known, k)
        features, layer = model.features(batch), model.decoder
        if model.coarse_dtype is not None:
            return rank_in_two_stages(features, layer, known, k, model.coarse_dtype)
        return ranked(linear_in_blocks(features, layer.weight, layer.bias), known, k)


def linear_in_blocks(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """F.linear(features, weight, bias) without a gradient, the same bits; on a CPU, where a block of BLOCK_CELLS
    scores holds at least MIN_BLOCK_ROWS rows, written a block at a time into one output, which runs the product
    faster (Mult-VAE's 1,024 x 200 x 3,651 at one thread: ~19 against ~29 ms) than one product whose output leaves
    the cache as it is written."""
    step = BLOCK_CELLS // weight.shape[0]
    with torch.no_grad():
        if features.device.type != "cpu" or step < MIN_BLOCK_ROWS:
            return F.linear(features, weight, bias)
        out = features.new_empty((features.shape[0], weight.shape[0]))
        for start in range(0, features.shape[0], step):
            torch.addmm(bias, features[start : start + step], weight.t(), out=out[start : start + step])
        return out


def ranked(scores: torch.Tensor, known: sp.csr_matrix, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`rank`'s result from whole rows of scores: raycf.eval.metrics.top_k and the scores of the items it picks."""
    top = top_k(scores, known, k)
    return top, scores.gather(1, top.clamp_min(0))


def batch_rows(n_items: int) -> int:
    """Users per ranking batch: 1,024, fewer where their scores would pass SCORE_CELLS."""
    return max(1, min(1024, SCORE_CELLS // n_items))


def candidate_count(k: int, n_items: int) -> int:
    """How many items per row the coarse stage keeps for exact rescoring: enough that nearly every row is proven
    (Mult-VAE on ML-1M, epochs 6 to 60: at k = 5 the proof needs at most 11 to 16 candidates per row, and 14
    leave 0 to 10 of 6,038 rows unproven; at k = 20 at most 35), few enough to keep the selection (torch.topk)
    and the union of candidates small."""
    return min(n_items, 3 * k // 2 + 7)


def rank_in_two_stages(
    features: torch.Tensor, layer: nn.Linear, known: sp.csr_matrix, k: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """`rank` for scores layer(features): coarse scores in `dtype`, exact float32 scores of each row's
    `candidate_count` best, and float32 scores of the whole row where the coarse stage cannot prove the result."""
    low = (features.to(dtype), layer.weight.to(dtype), layer.bias.to(dtype))
    n_rows, n_items = features.shape[0], layer.weight.shape[0]
    coarse = linear_in_blocks(*low)
    mask_known(coarse, known)
    coarse_values, candidates = torch.topk(coarse, candidate_count(k, n_items), dim=1)
    del coarse
    depth = min(k, candidates.shape[1])
    # |float32 score - coarse score| <= error of each candidate; one whose score cannot reach the least the first
    # `depth` candidates can score is below all of them: not rescored
    coarse_values = coarse_values.float()
    error = final_rounding(coarse_values, dtype).add_(rounding_error(features, layer, *low)[:, None])
    least = (coarse_values - error)[:, depth - 1 : depth]
    rescored = (coarse_values + error >= least) & (coarse_values > -torch.inf)
    exact = candidate_scores(features, layer, candidates, rescored)
    exact, order = torch.sort(exact, dim=1, descending=True)
    candidates = candidates.gather(1, order)
    # a finite tie among the first k + 1 would need the lower index first: such rare rows take the float32 path
    head = exact[:, : depth + 1]
    tied = ((head[:, 1:] == head[:, :-1]) & (head[:, 1:] > -torch.inf)).any(dim=1)
    top = torch.full((n_rows, k), -1, dtype=torch.int64, device=features.device)
    top_scores = torch.full((n_rows, k), -torch.inf, device=features.device)
    top[:, :depth] = candidates[:, :depth].masked_fill(exact[:, :depth] == -torch.inf, -1)
    top_scores[:, :depth] = exact[:, :depth]
    # a row is proven when every item outside its candidates (coarse score at most the last candidate's) falls
    # short of its k-th exact score
    outside = coarse_values[:, -1] + error[:, -1]
    everything = candidates.shape[1] == n_items  # no item outside the candidates
    proven = ((coarse_values[:, -1] == -torch.inf) | (exact[:, depth - 1] > outside) | everything) & ~tied
    unproven = torch.nonzero(~proven).flatten()
    if len(unproven):
        top[unproven], top_scores[unproven] = ranked(layer(features[unproven]), known[unproven.cpu().numpy()], k)
    return top, top_scores


def candidate_scores(
    features: torch.Tensor, layer: nn.Linear, candidates: torch.Tensor, wanted: torch.Tensor
) -> torch.Tensor:
    """layer(features) in float32 at each row's `candidates` (rows x c item indices) where `wanted` (rows x c),
    -inf elsewhere: one product over the batch's union of wanted candidates (marked in a table of every item, not
    sorted)."""
    n_items, device = layer.weight.shape[0], candidates.device
    marked = torch.zeros(n_items, dtype=torch.bool, device=device).index_fill_(0, candidates[wanted], True)
    union = torch.nonzero(marked).flatten()
    slot = torch.zeros(n_items, dtype=torch.int64, device=device).index_copy_(
        0, union, torch.arange(len(union), device=device))
    scores = F.linear(features, layer.weight[union], layer.bias[union])
    return scores.gather(1, slot[candidates]).masked_fill_(~wanted, -torch.inf)


def final_rounding(rounded: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """How far from `rounded` the value it was rounded from (to nearest, in `dtype`, unit roundoff u = eps / 2)
    can be: |x - r| <= u |x| gives |x - r| <= u |r| / (1 - u)."""
    u = torch.finfo(dtype).eps / 2
    return rounded.abs() * (u / (1 - u))


def rounding_error(
    features: torch.Tensor, layer: nn.Linear, low_features: torch.Tensor, low_weight: torch.Tensor,
    low_bias: torch.Tensor,
) -> torch.Tensor:
    """Per row h, a bound on |float32 h w_i + b_i - (h' w'_i + b'_i as accumulated)| over every item i, where h',
    w', b' are the factors rounded to the low precision (`low_*`) and the product accumulates in float32:

        |(h - h') w_i| + |h' (w_i - w'_i)| + |b_i - b'_i|      the rounding of the factors (Cauchy-Schwarz, with
        <= |h - h'| max|w| + |h'| max|w - w'| + max|b - b'|     the residuals the rounding actually left)
        + 2 (n + 1) 2^-24 (|h| max|w| + |h'| max|w'| + 2 max|b'|)  float32 accumulation of n products and a bias,
                                                                   in the coarse stage and in the exact scores
    with |h'| <= |h| + |h - h'| (likewise w', b'); products of two bfloat16 numbers are exact in float32. The
    final rounding of the coarse score to the low precision is `final_rounding`'s."""
    norm = torch.linalg.vector_norm
    weight_max = norm(layer.weight, dim=1).max()
    weight_residual = norm(torch.sub(layer.weight, low_weight), dim=1).max()
    bias_residual = torch.sub(layer.bias, low_bias).abs().max()
    feature_norm, feature_residual = norm(features, dim=1), norm(torch.sub(features, low_features), dim=1)
    low_feature_norm = feature_norm + feature_residual
    factors = feature_residual * weight_max + low_feature_norm * weight_residual + bias_residual
    accumulation = 2 * (features.shape[1] + 1) * 2.0**-24 * (
        feature_norm * weight_max + low_feature_norm * (weight_max + weight_residual)
        + 2 * (layer.bias.abs().max() + bias_residual))
    return factors + accumulation
