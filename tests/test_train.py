"""One training run: learns planted structure, stops early, is deterministic and resumable."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import evaluate_scores

from raycf.data.split import Split
from raycf.eval.evaluation import evaluate_model, summarize
from raycf.models.config import TrainConfig
from raycf.train.trainer import Trainer, train


def popularity_ndcg(split: Split) -> float:
    """Validation NDCG@5 of ranking every user's unseen items by train popularity."""
    popularity = torch.from_numpy(np.asarray(split.train.sum(axis=0)).ravel().astype(np.float32))
    per_user = evaluate_scores(lambda users: popularity.repeat(len(users), 1), split.train, split.valid, k=5)
    return summarize(per_user)["ndcg"]


@pytest.mark.parametrize("model", ["multvae", "autorec"])
def test_both_models_beat_popularity_on_planted_structure(model: str, small_split: Split) -> None:
    config = TrainConfig.for_model(model, hidden=32, batch_size=50, max_epochs=60, patience=15, lr=3e-3)
    result = train(small_split, config)
    assert result.best_valid["ndcg"] > popularity_ndcg(small_split) + 0.02
    # the returned model holds the best epoch's weights
    assert summarize(evaluate_model(result.model, small_split, "valid"))["ndcg"] == pytest.approx(
        result.best_valid["ndcg"]
    )


def test_early_stopping_waits_patience_epochs_after_the_best(small_split: Split) -> None:
    config = TrainConfig.for_model("multvae", hidden=8, max_epochs=500, patience=4, lr=0.05)
    result = train(small_split, config)
    assert result.epochs_run < 500
    assert result.epochs_run == result.best_epoch + 4
    assert [report.epoch for report in result.history] == list(range(1, result.epochs_run + 1))


def test_eval_every_validates_only_on_due_epochs(small_split: Split) -> None:
    config = TrainConfig.for_model("autorec", hidden=8, max_epochs=7, eval_every=3)
    result = train(small_split, config)
    assert [report.epoch for report in result.history if report.valid is not None] == [3, 6, 7]


def test_same_seed_same_run_and_another_seed_differs(small_split: Split) -> None:
    config = TrainConfig.for_model("multvae", hidden=16, max_epochs=5)
    first, second = train(small_split, config), train(small_split, config)
    assert [r.loss for r in first.history] == [r.loss for r in second.history]
    assert all(torch.equal(a, b) for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values()))
    other = train(small_split, TrainConfig.for_model("multvae", hidden=16, max_epochs=5, seed=1))
    assert [r.loss for r in other.history] != [r.loss for r in first.history]


def test_restored_state_continues_exactly_as_an_uninterrupted_run(small_split: Split) -> None:
    config = TrainConfig.for_model("multvae", hidden=16, max_epochs=6)
    straight = Trainer(small_split, config)
    reports = [straight.run_epoch() for _ in range(6)]
    interrupted = Trainer(small_split, config)
    for _ in range(3):
        interrupted.run_epoch()
    saved = interrupted.state_dict()
    resumed = Trainer(small_split, config)
    resumed.load_state_dict(saved)
    tail = [resumed.run_epoch() for _ in range(3)]
    assert [r.loss for r in tail] == [r.loss for r in reports[3:]]
    assert resumed.best_epoch == straight.best_epoch


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible to torch on this machine")
def test_gpu_training_matches_cpu_quality(small_split: Split) -> None:
    config = TrainConfig.for_model("multvae", hidden=16, max_epochs=8)
    on_gpu, on_cpu = train(small_split, config, device="cuda"), train(small_split, config)
    assert next(on_gpu.model.parameters()).is_cuda
    assert on_gpu.best_valid["ndcg"] == pytest.approx(on_cpu.best_valid["ndcg"], abs=0.02)


def test_validation_ranks_wide_rows_as_a_full_sort() -> None:
    """top_k on rows wide enough for its grouped search (8192 items or more) ranks as a stable full sort: score
    descending, ties to the lower index, known items never, -1 once a row runs out of candidates."""
    import scipy.sparse as sp

    from raycf.eval.metrics import top_k

    rng = np.random.default_rng(0)
    n_items, k = 9001, 7
    scores = torch.from_numpy(rng.integers(0, 40, size=(6, n_items)).astype(np.float32))  # many ties
    scores[1] = 1.0  # one value everywhere
    scores[2, rng.choice(n_items, 3)] = 99.0  # three clear winners, then ties
    known = sp.random(6, n_items, density=0.3, format="csr", random_state=1)
    known = sp.csr_matrix(sp.vstack([known[:5], sp.csr_matrix(np.r_[np.ones(n_items - 3), np.zeros(3)])]))
    expected = []
    for row in range(6):
        candidates = np.setdiff1d(np.arange(n_items), known[row].indices)
        order = candidates[np.lexsort((candidates, -scores[row, candidates].numpy()))][:k]
        expected.append(np.pad(order, (0, k - len(order)), constant_values=-1))
    assert np.array_equal(top_k(scores.clone(), known, k).numpy(), np.array(expected))
