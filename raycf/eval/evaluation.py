"""Evaluate a model on a split: each user's input row in (train, or fold-in), held-out rows (valid or test)
scored, known items masked."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from raycf.data.split import Split
from raycf.eval.metrics import (
    METRICS,
    MetricAt,
    check_disjoint,
    evaluate_ranked,
    exact_mean,
    exact_sum,
    mean_metrics,
    metrics_at,
)
from raycf.eval.ranking import batch_rows, rank, rank_batch
from raycf.models import Recommender, SparseRows

PARTS = ("valid", "test")
NOT_METRICS = ("n_heldout", "hits", "ranked_hits")
"""Per-user arrays of `evaluate` that are counts, not metrics to average."""


SPAN_SLACK = 1.25
"""RankingTask.rank ranks a whole span of resident rows when it is at most this much longer than the users in it."""


@dataclass(frozen=True)
class RankingTask:
    """What ranking one part of a split needs: each user's inputs, the items never ranked (`known`) and the held-out
    items, checked disjoint once (a Trainer validates many times)."""

    inputs: sp.csr_matrix
    known: sp.csr_matrix
    heldout: sp.csr_matrix
    rows: SparseRows | None = None
    """`inputs` resident on the model's device (a Trainer's training rows, when they are the inputs)."""

    @classmethod
    def of(cls, split: Split, part: str = "valid", mask: str = "train", rows: SparseRows | None = None) -> RankingTask:
        """The task of `part`: validation masks the inputs only, test the inputs or (mask "train+valid") the
        validation items too; `rows`: split.inputs(part) already resident."""
        if part not in PARTS:
            raise ValueError(f"part must be one of {PARTS}, got {part!r}")
        known, heldout = check_disjoint(split.known(part, mask if part == "test" else "train"), getattr(split, part))
        inputs = split.inputs(part)
        if rows is not None and (rows.n_rows, rows.n_items, len(rows.indices)) != (*inputs.shape, inputs.nnz):
            raise ValueError(f"rows {rows.n_rows} x {rows.n_items} ({len(rows.indices)} entries) are not the "
                             f"{part} inputs {inputs.shape} ({inputs.nnz} entries)")
        return cls(inputs, known, heldout, rows)

    def rank(self, model: Recommender, users: np.ndarray, k: int) -> torch.Tensor:
        """The top k items of `users` (ascending row indices; raycf.eval.ranking.rank): where they lie in a span of the
        resident rows at most SPAN_SLACK times their number, the whole span is cut without copying and ranked
        (the other rows' results dropped); otherwise their rows of `inputs` are."""
        start, stop = int(users[0]), int(users[-1]) + 1
        if self.rows is None or stop - start > SPAN_SLACK * len(users):
            return rank(model, self.inputs[users], self.known[users], k)[0]
        top = rank_batch(model, self.rows.batch(start, stop), self.known[start:stop], k)[0]
        return top if stop - start == len(users) else top[torch.from_numpy(users - start).to(top.device)]


def evaluate_model(
    model: Recommender, split: Split, part: str = "valid", mask: str = "train", k: int = 5,
    task: RankingTask | None = None,
) -> dict[str, np.ndarray]:
    """Per-user metric arrays of `model` on `part`, each user ranked (raycf.eval.ranking.rank) from the part's inputs
    (Split.inputs) with its known items masked (RankingTask.of; `task`: that task, prepared already)."""
    task = RankingTask.of(split, part, mask) if task is None else task
    was_training = model.training
    model.eval()
    try:
        return evaluate_ranked(lambda users: task.rank(model, users, k), task.heldout, k,
                               batch_size=batch_rows(split.n_items))
    finally:
        model.train(was_training)


def evaluate_metrics(
    model: Recommender, split: Split, part: str, metrics: Sequence[MetricAt], mask: str = "train",
    task: RankingTask | None = None,
) -> dict[str, np.ndarray]:
    """Per-user arrays of each metric (keyed by its field: `ndcg`, `recall@20`), from one ranking at the largest
    k; "n_heldout" too."""
    per_user = evaluate_model(model, split, part, mask, k=max(metric.k for metric in metrics), task=task)
    values = metrics_at(per_user["ranked_hits"], per_user["n_heldout"], metrics)
    return {**{metric.field: values[metric.label] for metric in metrics}, "n_heldout": per_user["n_heldout"]}


def summarize(per_user: dict[str, np.ndarray]) -> dict[str, float]:
    """Means of every metric array over users with a held-out item (exact sums), and "users": their count."""
    means = mean_metrics(per_user)
    counted = ~np.isnan(per_user[METRICS[0]])
    for name, values in per_user.items():
        if name not in means and name not in NOT_METRICS:
            means[name] = exact_mean(exact_sum(values[counted]), int(counted.sum()))
    return {name: float(value) for name, value in means.items()}
