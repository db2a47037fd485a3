"""Top-k ranking metrics for one-class collaborative filtering.

A user's candidates are all items outside their known items (the mask); items are the
stored entries of a CSR row. Ties in scores rank the lower item index first. A user with
fewer than k candidates gets a shorter list, padded with -1, which is never a hit.
Metrics are averaged over the users with at least one held-out item. Metrics at several k
come from one ranking at the largest k: the first k ranks of a top-K list are the top k.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

REPORT_K = 5
"""Every run reports validation and test P/R/NDCG/MRR at this k (the write-up's), whatever it selects on."""
METRICS = ("precision", "recall", "ndcg", "mrr")
"""The metrics every run reports at REPORT_K."""
ALL_METRICS = (*METRICS, "hit_rate", "map", "recall_capped")
"""Every metric computable at any k (hit_rate: any hit in the top k; map: average precision at k; recall_capped:
hits / min(k, n_heldout), the Recall@k of Liang et al. 2018 and Steck 2019, where `recall` is hits / n_heldout)."""
MODES = ("max", "min")
FIXED_POINT_BITS = 60  # metric values in [0, 1] are summed as whole multiples of 2**-60
_GROUPS = 32  # top_k: column groups whose maxima are ranked first (see _largest)
_MIN_GROUP_WIDTH = 256  # ... once a group has this many columns (rows of 8192 items or more)


@dataclass(frozen=True)
class MetricAt:
    """One metric of ALL_METRICS at one k, written `name@k` (`recall@20`); a bare name means k = REPORT_K."""

    name: str
    k: int = REPORT_K

    @classmethod
    def parse(cls, text: str) -> MetricAt:
        """`recall`, `recall@20` -> MetricAt; ValueError saying what is allowed."""
        name, at, k_text = str(text).strip().partition("@")
        if name not in ALL_METRICS:
            raise ValueError(
                f"unknown metric {text!r}; use name@k with name one of {', '.join(ALL_METRICS)} (e.g. recall@20)"
            )
        if at and not (k_text.isascii() and k_text.isdigit() and int(k_text) >= 1):
            raise ValueError(f"metric {text!r}: k must be an integer >= 1 (e.g. {name}@10)")
        return cls(name, int(k_text) if at else REPORT_K)

    @property
    def label(self) -> str:
        """`recall@20`."""
        return f"{self.name}@{self.k}"

    @property
    def field(self) -> str:
        """Its entry in a run's metrics: the bare name for P/R/NDCG/MRR at REPORT_K (the ones every run reports,
        named so since before any other k), else the label."""
        return self.name if self.k == REPORT_K and self.name in METRICS else self.label


REPORTED = tuple(MetricAt(name, REPORT_K) for name in METRICS)
"""What every run reports, on validation and test."""


def parse_metric_list(text: str) -> tuple[MetricAt, ...]:
    """`recall@20, recall@50,ndcg@100` -> MetricAt each, duplicates dropped in order; blank -> ()."""
    parts = (part.strip() for part in str(text).split(","))
    return tuple(dict.fromkeys(MetricAt.parse(part) for part in parts if part))


@dataclass(frozen=True)
class Selection:
    """What "best" means for a run: one validation metric at one k, and whether higher or lower is better.

    It picks each trial's best epoch (the checkpoint kept), counts its patience, drives ASHA and ranks the
    trials. Written `name@k` (`ndcg@5`, `recall@20`); a bare name means k = REPORT_K."""

    name: str = "ndcg"
    k: int = REPORT_K
    mode: str = "max"
    report: tuple[MetricAt, ...] = ()
    """More metrics every run reports beside P/R/NDCG/MRR@REPORT_K and the selection metric (they decide
    nothing), e.g. recall@20, recall@50, ndcg@100."""

    @classmethod
    def parse(cls, text: str, mode: str = "max", report: str | tuple[MetricAt, ...] = ()) -> Selection:
        """`ndcg`, `recall@20` (any of ALL_METRICS), and `report` ("recall@20,ndcg@100") -> Selection;
        ValueError saying what is allowed."""
        metric = MetricAt.parse(text)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        return cls(metric.name, metric.k, mode, parse_metric_list(report) if isinstance(report, str) else report)

    @property
    def metric(self) -> MetricAt:
        return MetricAt(self.name, self.k)

    @property
    def label(self) -> str:
        """`ndcg@5`."""
        return self.metric.label

    @property
    def field(self) -> str:
        """Its entry in a run's metrics: `ndcg` at REPORT_K (reported anyway), else `ndcg@10`."""
        return self.metric.field

    @property
    def metrics(self) -> tuple[MetricAt, ...]:
        """Every metric a run computes: P/R/NDCG/MRR at REPORT_K, the selection metric, the report metrics."""
        return tuple(dict.fromkeys((*REPORTED, self.metric, *self.report)))

    @property
    def reported(self) -> tuple[str, ...]:
        """The fields of `metrics`: `precision` ... `mrr`, then e.g. `recall@20`."""
        return tuple(metric.field for metric in self.metrics)

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


def mask_known(scores: torch.Tensor, known: sp.spmatrix) -> None:
    """Set the contiguous `scores` (rows x items) to -inf at the items of `known` (same shape), in place."""
    positions = torch.from_numpy(_flat_index(_canonical(known))).to(scores.device)
    scores.view(-1).index_fill_(0, positions, -torch.inf)


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
    mask_known(scores, known)
    n_cand = torch.from_numpy(m - np.diff(known.indptr).astype(np.int64)).to(device)

    kk = min(k, m)
    values, index = _largest(scores, min(k + 1, m))
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


def _largest(scores: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The `count` largest values of each row of a contiguous `scores`, descending, and their columns: the
    values of torch.topk (NaN ranked first), ties between columns possibly broken otherwise.

    Columns c, c + w, c + 2w, ... (w = m // _GROUPS) form a group: a row's `count` largest values lie in its
    `count` groups of largest maximum and the last m % _GROUPS columns, so topk runs on the group maxima (one
    vectorised pass over the scores) and then on those few candidates, not on every score of the row.
    """
    n_rows, m = scores.shape
    width = m // _GROUPS
    if width < max(_MIN_GROUP_WIDTH, 4 * count):  # rows this short: topk alone is as fast (CPU, measured)
        return torch.topk(scores, count, dim=1)
    grouped = scores[:, : _GROUPS * width].view(n_rows, _GROUPS, width)
    groups = torch.topk(grouped.amax(dim=1), count, dim=1).indices
    members = width * torch.arange(_GROUPS, device=scores.device)
    tail = torch.arange(_GROUPS * width, m, device=scores.device).expand(n_rows, -1)
    columns = torch.cat([(groups[:, :, None] + members).flatten(1), tail], dim=1)
    values, position = torch.topk(scores.gather(1, columns), count, dim=1)
    return values, columns.gather(1, position)


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
    hits: np.ndarray, n_heldout: np.ndarray, k: int, names: Sequence[str] = METRICS
) -> dict[str, np.ndarray]:
    """Per-user float64 arrays of `names` (any of ALL_METRICS) at k; NaN for users with no held-out item."""
    unknown = [name for name in names if name not in ALL_METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; expected names from {', '.join(ALL_METRICS)}")
    hits = np.asarray(hits, dtype=bool)
    n_heldout = np.asarray(n_heldout)
    if hits.ndim != 2 or hits.shape[1] != k or hits.shape[0] != len(n_heldout):
        raise ValueError(
            f"hits {hits.shape} does not match k={k} and {len(n_heldout)} users"
        )
    ranks = np.arange(1, k + 1)
    discount = 1.0 / np.log2(ranks + 1)
    n_hits = hits.sum(axis=1)
    best = np.clip(n_heldout, 1, k)  # the most hits the top k can hold
    formulas: dict[str, Callable[[], Any]] = {
        "precision": lambda: n_hits / k,
        "recall": lambda: n_hits / n_heldout,
        "recall_capped": lambda: n_hits / best,
        "ndcg": lambda: (hits @ discount) / np.cumsum(discount)[best - 1],
        "mrr": lambda: np.where(hits.any(axis=1), 1.0 / (hits.argmax(axis=1) + 1), 0.0),
        "hit_rate": lambda: hits.any(axis=1).astype(np.float64),
        "map": lambda: (hits * np.cumsum(hits, axis=1) / ranks).sum(axis=1) / best,
    }
    has = n_heldout > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        return {name: np.where(has, formulas[name](), np.nan) for name in names}


def metrics_at(
    ranked_hits: np.ndarray, n_heldout: np.ndarray, wanted: Sequence[MetricAt]
) -> dict[str, np.ndarray]:
    """Per-user arrays of each wanted metric, keyed by label (`recall@20`), each from the first k columns
    of one (users x K) hit matrix such as evaluate's "ranked_hits"; k above K raises ValueError."""
    ranked_hits = np.asarray(ranked_hits, dtype=bool)
    if ranked_hits.ndim != 2:
        raise ValueError(f"ranked_hits must be 2-D (users x K), got shape {ranked_hits.shape}")
    depth = ranked_hits.shape[1]
    out_of_range = [metric.label for metric in wanted if not 1 <= metric.k <= depth]
    if out_of_range:
        raise ValueError(
            f"{', '.join(out_of_range)}: k must be between 1 and {depth}, the depth of the ranking"
        )
    names_at: dict[int, list[str]] = {}
    for metric in wanted:
        names_at.setdefault(metric.k, []).append(metric.name)
    per_k = {k: user_metrics(ranked_hits[:, :k], n_heldout, k, names) for k, names in names_at.items()}
    return {metric.label: per_k[metric.k][metric.name] for metric in wanted}


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


def check_disjoint(known: sp.spmatrix, heldout: sp.spmatrix) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Both as canonical CSR; ValueError when their shapes differ or they share an item of a user."""
    if known.shape != heldout.shape:
        raise ValueError(f"known {known.shape} and heldout {heldout.shape} differ in shape")
    known, heldout = _canonical(known), _canonical(heldout)
    if _pattern(known).multiply(_pattern(heldout)).nnz:
        raise ValueError("known and held-out items overlap; refusing to score the held-out set")
    return known, heldout


def evaluate_ranked(
    rank_fn: Callable[[np.ndarray], torch.Tensor | np.ndarray], heldout: sp.spmatrix, k: int = 5,
    batch_size: int = 256,
) -> dict[str, np.ndarray]:
    """As `evaluate`, from `rank_fn(users)`: each user's top k item indices (-1 padded), called in batches of
    users with a held-out item."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    heldout = _canonical(heldout)
    n_heldout = np.diff(heldout.indptr).astype(np.int64)
    hits = np.zeros((heldout.shape[0], k), dtype=bool)
    users = np.flatnonzero(n_heldout)
    for start in range(0, len(users), batch_size):
        batch = users[start : start + batch_size]
        hits[batch] = hits_at_k(rank_fn(batch), heldout[batch])
    per_user = user_metrics(hits, n_heldout, k)
    return {**per_user, "n_heldout": n_heldout, "hits": hits.sum(axis=1), "ranked_hits": hits}
