"""Quality on the real MovieLens 1M, seed-0 split, reference settings (about 3 minutes on 2 cores)."""

from __future__ import annotations

import pytest
from conftest import ml1m_path

from raycf.config import TrainConfig
from raycf.data.loaders import read_interactions
from raycf.data.split import Split, split_interactions
from raycf.evaluate import evaluate_model, summarize
from raycf.train import train

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not ml1m_path().is_file(), reason=f"ML-1M not found at {ml1m_path()} (set RAYCF_ML1M)"),
]


@pytest.fixture(scope="module")
def ml1m_split() -> Split:
    return split_interactions(read_interactions(ml1m_path()), seed=0, source=str(ml1m_path()))


def test_split_follows_the_protocol(ml1m_split: Split) -> None:
    counts = ml1m_split.manifest["counts"]
    assert ml1m_split.n_users == 6040
    assert counts["train"] == 600_125  # round(0.6 * 1,000,209)
    assert 3600 <= ml1m_split.n_items <= 3706
    assert counts["valid"] + ml1m_split.manifest["dropped"]["valid"] == 200_042


@pytest.mark.parametrize(
    ("model", "overrides", "floor"),
    [
        ("multvae", {}, 0.285),  # reference settings: constant beta 0.2, dropout 0.5, 200 units
        ("autorec", {"l2": 1e-3}, 0.27),  # lambda from the grid {1e-4, 1e-3, 1e-2, 1e-1}
    ],
)
def test_reference_settings_reach_the_table(ml1m_split: Split, model: str, overrides: dict, floor: float) -> None:
    result = train(ml1m_split, TrainConfig.for_model(model, seed=0, **overrides))
    test = summarize(evaluate_model(result.model, ml1m_split, "test", mask="train"))
    print(f"{model}: best epoch {result.best_epoch}, test {test}")
    assert test["ndcg"] >= floor
    assert result.epochs_run == result.best_epoch + 50  # stopped by patience, not by the epoch limit
