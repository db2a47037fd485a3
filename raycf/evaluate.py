"""Evaluate a model on a split: its train rows in, held-out rows (valid or test) scored, known items masked."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from raycf.data.split import Split
from raycf.metrics import evaluate, known_items, mean_metrics
from raycf.models import Recommender, SparseBatch

PARTS = ("valid", "test")


def model_scorer(model: Recommender, split: Split) -> Callable[[np.ndarray], torch.Tensor]:
    """score_fn(user indices) -> scores, the model's input being each user's train row."""
    device = model.device

    def score(users: np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            return model.scores(SparseBatch.from_csr(split.train[users], device))

    return score


def evaluate_model(
    model: Recommender, split: Split, part: str = "valid", mask: str = "train", k: int = 5
) -> dict[str, np.ndarray]:
    """Per-user metric arrays of `model` on `part`; validation always masks train items only."""
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    known = split.train if part == "valid" else known_items(split.train, split.valid, mask)
    was_training = model.training
    model.eval()
    try:
        return evaluate(model_scorer(model, split), known, getattr(split, part), k=k)
    finally:
        model.train(was_training)


def summarize(per_user: dict[str, np.ndarray]) -> dict[str, float]:
    """Means over users with a held-out item, as plain floats."""
    return {name: float(value) for name, value in mean_metrics(per_user).items()}
