"""Top-k ranking metrics for one-class collaborative filtering.

A user's candidates are all items outside their known items (the mask); items are the
stored entries of a CSR row. Ties in scores rank the lower item index first. A user with
fewer than k candidates gets a shorter list, padded with -1, which is never a hit.
Metrics are averaged over the users with at least one held-out item.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

METRICS = ("precision", "recall", "ndcg", "mrr")
MASK_PROTOCOLS = ("train", "train+valid")
REPORT_K = 5
"""Every run reports validation and test P/R/NDCG/MRR at this k (the write-up's), whatever it selects on."""
MODES = ("max", "min")
FIXED_POINT_BITS = 60  # metric values in [0, 1] are summed as whole multiples of 2**-60


@dataclass(frozen=True)
class Selection:
    """What "best" means for a run: one validation metric at one k, and whether higher or lower is better.

    It picks each trial's best epoch (the checkpoint kept), counts its patience, drives ASHA and ranks the
    trials. Written `name@k` (`ndcg@5`, `recall@20`); a bare name means k = REPORT_K."""

    name: str = "ndcg"
    k: int = REPORT_K
    mode: str = "max"

    @classmethod
    def parse(cls, text: str, mode: str = "max") -> Selection:
        """`ndcg`, `recall@20` -> Selection; ValueError saying what is allowed."""
        name, _, k_text = str(text).strip().partition("@")
        if name not in METRICS:
            raise ValueError(f"unknown metric {text!r}; use name@k with name one of {', '.join(METRICS)} (e.g. ndcg@5)")
        if k_text and not (k_text.isdigit() and int(k_text) >= 1):
            raise ValueError(f"metric {text!r}: k must be an integer >= 1 (e.g. {name}@10)")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        return cls(name, int(k_text) if k_text else REPORT_K, mode)

    @property
    def label(self) -> str:
        """`ndcg@5`."""
        return f"{self.name}@{self.k}"

    @property
    def field(self) -> str:
        """Its entry in a run's validation metrics: `ndcg` at REPORT_K (reported anyway), else `ndcg@10`."""
        return self.name if self.k == REPORT_K else self.label

    @property
    def reported(self) -> tuple[str, ...]:
        """The validation fields a run reports: P/R/NDCG/MRR at REPORT_K, and this metric when at another k."""
        return tuple(dict.fromkeys((*METRICS, self.field)))

    @property
    def key(self) -> str:
        """The reported (Tune) key and trials.parquet column: `valid_ndcg`, `valid_recall@20`."""
        return f"valid_{self.field}"

    def improves(self, value: float, best: float | None) -> bool:
        """Strictly better than `best` (None: nothing yet); ties keep the earlier epoch."""
        return best is None or (value > best if self.mode == "max" else value < best)


def _canonical(x: sp.spmatrix) -> sp.csr_matrix:
    """`x` as CSR with sorted, unique column indices per row (copied only when needed)."""
    x = sp.csr_matrix(x)
    if not x.has_canonical_format:
        x = x.copy()
        x.sum_duplicates()
    return x


def _pattern(x: sp.spmatrix) -> sp.csr_matrix:
    """A canonical CSR with a float32 one at each stored entry of `x`."""
    x = _canonical(x)
    return sp.csr_matrix(
        (np.ones(x.nnz, np.float32), x.indices.copy(), x.indptr.copy()), shape=x.shape
    )


def _flat_index(x: sp.csr_matrix) -> np.ndarray:
    """row * n_cols + col of each stored entry of a canonical CSR, ascending."""
    starts = np.arange(x.shape[0], dtype=np.int64) * x.shape[1]
    return np.repeat(starts, np.diff(x.indptr)) + x.indices


def known_items(train: sp.spmatrix, valid: sp.spmatrix, protocol: str) -> sp.csr_matrix:
    """The items to mask when ranking: those of `train`, or of `train` and `valid` together."""
    if protocol not in MASK_PROTOCOLS:
        raise ValueError(
            f"unknown mask protocol {protocol!r}; expected one of {MASK_PROTOCOLS}"
        )
    if train.shape != valid.shape:
        raise ValueError(f"train {train.shape} and valid {valid.shape} differ in shape")
    if protocol == "train":
        return _pattern(train)
    union = _pattern(train) + _pattern(valid)
    union.data[:] = 1
    return union


def top_k(scores: torch.Tensor, known: sp.spmatrix, k: int) -> torch.Tensor:
    """(B x k) int64 item indices by score, descending, ties by lower index, -1 padded.

    `scores` (B x m float, any device) is overwritten with -inf at the items of `known`
    (B x m, rows aligned) when it is contiguous, to save memory. A NaN candidate score
    raises ValueError.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if scores.dim() != 2 or not scores.is_floating_point():
        raise ValueError(
            f"scores must be a 2-D float tensor, got {scores.dtype} {tuple(scores.shape)}"
        )
    if tuple(known.shape) != tuple(scores.shape):
        raise ValueError(
            f"known {known.shape} does not match scores {tuple(scores.shape)}"
        )
    known = _canonical(known)
    n_rows, m = scores.shape
    device = scores.device
    scores = scores.contiguous()
    scores.view(-1).index_fill_(
        0, torch.from_numpy(_flat_index(known)).to(device), -torch.inf
    )
    n_cand = torch.from_numpy(m - np.diff(known.indptr).astype(np.int64)).to(device)

    kk = min(k, m)
    values, index = torch.topk(scores, min(k + 1, m), dim=1)
    if torch.isnan(values).any():  # topk ranks NaN above every number
        raise ValueError("scores contain NaN outside the known items")
    # `edge` is the value in the last real (non-padding) slot. A row needs more work if
    # that value also occurs outside the top k: -inf candidates tie with the masked
    # items, and a finite tie may cross the k boundary.
    slots = n_cand.clamp(max=kk)
    edge = values.gather(1, (slots - 1).clamp(min=0)[:, None])[:, 0]
    redo = (slots > 0) & (edge == -torch.inf)
    if m > k:
        redo |= (values[:, k] == edge) & (edge > -torch.inf)
    # Order ties inside the top k by index: sort by index, then stably by value.
    values, index = values[:, :kk], index[:, :kk]
    by_index = torch.argsort(index, dim=1)
    by_value = torch.sort(
        values.gather(1, by_index), dim=1, descending=True, stable=True
    ).indices
    out = torch.full((n_rows, k), -1, dtype=torch.int64, device=device)
    out[:, :kk] = index.gather(1, by_index.gather(1, by_value))

    # For those rows: after the items above the edge, take the lowest-indexed
    # candidates equal to it from the full row (masked items set to NaN never match).
    fix = torch.nonzero(redo).flatten()
    if len(fix):
        rows = scores[fix]
        masked = _flat_index(known[fix.cpu().numpy()])
        rows.view(-1).index_fill_(0, torch.from_numpy(masked).to(device), torch.nan)
        n_above = (values[fix] > edge[fix, None]).sum(1)
        tied = rows == edge[fix, None]
        rank = tied.cumsum(1)
        r, c = torch.nonzero(
            tied & (rank <= (slots[fix] - n_above)[:, None]), as_tuple=True
        )
        out[fix[r], n_above[r] + rank[r, c] - 1] = c
    out[torch.arange(k, device=device)[None, :] >= n_cand[:, None]] = -1
    return out


def hits_at_k(topk: torch.Tensor | np.ndarray, heldout: sp.spmatrix) -> np.ndarray:
    """(B x k) bool: whether the item at each rank is held out for that row's user (-1 never)."""
    topk = topk.cpu().numpy() if isinstance(topk, torch.Tensor) else np.asarray(topk)
    heldout = _canonical(heldout)
    if topk.ndim != 2 or topk.shape[0] != heldout.shape[0]:
        raise ValueError(f"topk {topk.shape} does not match heldout {heldout.shape}")
    n_items = heldout.shape[1]
    # Sorted row * n_items + col keys, with a sentinel so every search lands in range.
    keys = np.append(_flat_index(heldout), np.iinfo(np.int64).max)
    query = np.arange(topk.shape[0], dtype=np.int64)[:, None] * n_items + topk
    return (keys[np.searchsorted(keys, query)] == query) & (topk >= 0)


def user_metrics(
    hits: np.ndarray, n_heldout: np.ndarray, k: int
) -> dict[str, np.ndarray]:
    """Per-user float64 arrays of METRICS at k; NaN for users with no held-out item."""
    hits = np.asarray(hits, dtype=bool)
    n_heldout = np.asarray(n_heldout)
    if hits.ndim != 2 or hits.shape[1] != k or hits.shape[0] != len(n_heldout):
        raise ValueError(
            f"hits {hits.shape} does not match k={k} and {len(n_heldout)} users"
        )
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    n_hits = hits.sum(axis=1)
    has = n_heldout > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = n_hits / n_heldout
        ideal = np.cumsum(discount)[np.clip(n_heldout, 1, k) - 1]
        out = {
            "precision": n_hits / k,
            "recall": recall,
            "ndcg": (hits @ discount) / ideal,
            "mrr": np.where(hits.any(axis=1), 1.0 / (hits.argmax(axis=1) + 1), 0.0),
        }
    return {name: np.where(has, value, np.nan) for name, value in out.items()}


def exact_sum(values: np.ndarray) -> int:
    """The sum of metric values in [0, 1], in units of 2**-FIXED_POINT_BITS.

    Integer sums are exact, so a mean built from them is the same however the users were
    split into batches or ordered (float sums are not: they differ in the last bits).
    """
    units = np.rint(np.ldexp(np.asarray(values, dtype=np.float64), FIXED_POINT_BITS))
    return sum(units.astype(np.int64).tolist())


def exact_mean(total: int, count: int) -> float:
    """The mean of `count` values whose `exact_sum` is `total`, correctly rounded; NaN if none."""
    return total / (count << FIXED_POINT_BITS) if count else float("nan")


def mean_metrics(per_user: dict[str, np.ndarray]) -> dict[str, float]:
    """Means of METRICS over users with a held-out item (NaN if none), and "users": their count."""
    valid = ~np.isnan(per_user[METRICS[0]])
    users = int(valid.sum())
    means = {name: exact_mean(exact_sum(per_user[name][valid]), users) for name in METRICS}
    return {**means, "users": users}


def standard_error(values: np.ndarray) -> float:
    """Standard error of the mean over users with a held-out item (NaN entries left out): how far a mean
    over this many users moves by the luck of which users there are."""
    kept = values[~np.isnan(values)]
    return float(kept.std(ddof=1) / np.sqrt(len(kept))) if len(kept) > 1 else float("nan")


def evaluate(
    score_fn: Callable[[np.ndarray], torch.Tensor],
    known: sp.spmatrix,
    heldout: sp.spmatrix,
    k: int = 5,
    batch_size: int = 256,
) -> dict[str, np.ndarray]:
    """Per-user METRICS at k for all users, plus int arrays "n_heldout" and "hits".

    `score_fn(users)` returns (len(users) x n_items) scores, which top_k may overwrite; it
    is called only for users with a held-out item. Users without one get NaN metrics.
    Known and held-out items that overlap raise ValueError.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if known.shape != heldout.shape:
        raise ValueError(
            f"known {known.shape} and heldout {heldout.shape} differ in shape"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    known, heldout = _canonical(known), _canonical(heldout)
    if _pattern(known).multiply(_pattern(heldout)).nnz:
        raise ValueError(
            "known and held-out items overlap; refusing to score the held-out set"
        )
    n_users, n_items = known.shape
    n_heldout = np.diff(heldout.indptr).astype(np.int64)
    hits = np.zeros((n_users, k), dtype=bool)
    users = np.flatnonzero(n_heldout)
    for start in range(0, len(users), batch_size):
        batch = users[start : start + batch_size]
        with torch.no_grad():
            scores = torch.as_tensor(score_fn(batch))
        if tuple(scores.shape) != (len(batch), n_items):
            raise ValueError(
                f"score_fn returned {tuple(scores.shape)}, expected {(len(batch), n_items)}"
            )
        hits[batch] = hits_at_k(top_k(scores, known[batch], k), heldout[batch])
    per_user = user_metrics(hits, n_heldout, k)
    return {**per_user, "n_heldout": n_heldout, "hits": hits.sum(axis=1)}
