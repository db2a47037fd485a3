"""The four baselines (pop, EASE, ItemKNN, iALS) against hand-written or dense references, their fit under the
Trainer (epochs, resuming), and the config errors that refuse bad baseline settings (what every model does,
checkpoints and foreign hyperparameters included, is in test_every_model.py)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from implicit.cpu.als import AlternatingLeastSquares
from scipy.sparse import csr_matrix
from threadpoolctl import threadpool_limits

import raycf.models.ials
from raycf.data.split import Split
from raycf.errors import RaycfError
from raycf.eval.evaluation import evaluate_model, summarize
from raycf.models import (
    EASE,
    IALS,
    FittedRecommender,
    ItemKNN,
    Popularity,
    SparseBatch,
    build_model,
    planned_epochs,
)
from raycf.models.config import TrainConfig
from raycf.train.trainer import Trainer, train


def random_binary(n_users: int, n_items: int, density: float, seed: int) -> csr_matrix:
    """A seeded users x items 0/1 float32 matrix."""
    rng = np.random.default_rng(seed)
    return csr_matrix((rng.random((n_users, n_items)) < density).astype(np.float32))


def fit(model: FittedRecommender, train_matrix: csr_matrix) -> FittedRecommender:
    """Run every iteration of the model's fit, as a complete run would."""
    for iteration in range(type(model).iterations(model.config)):
        model.fit_iteration(train_matrix, iteration)
    return model.eval()


def fitted(name: str, train_matrix: csr_matrix, **overrides: object) -> FittedRecommender:
    """A baseline built from its reference settings plus `overrides`, fitted on `train_matrix`."""
    model = build_model(TrainConfig.for_model(name, **overrides), train_matrix.shape[1])
    assert isinstance(model, FittedRecommender)
    return fit(model, train_matrix)


def scores_of(model: FittedRecommender, users: csr_matrix) -> torch.Tensor:
    """The model's scores for the rows of `users`."""
    with torch.no_grad():
        return model.scores(SparseBatch.from_csr(users))


# --- Popularity -----------------------------------------------------------------------------------------------

def test_popularity_ranks_by_train_user_count_ties_to_the_lower_index() -> None:
    """Items rank by how many train users have them (not by summed values); equal counts: lower index first."""
    rows = [0, 0, 0, 1, 1, 2, 2, 2, 3, 3]
    cols = [1, 4, 0, 1, 3, 1, 4, 3, 4, 0]
    values = [1, 1, 1, 1, 1, 1, 1, 1, 1, 5.0]  # item 0 sums to 6 but has 2 users
    train_matrix = csr_matrix((np.array(values, dtype=np.float32), (rows, cols)), shape=(4, 5))
    # user counts per item: 0 -> 2, 1 -> 3, 2 -> 0, 3 -> 2, 4 -> 3
    model = fitted("pop", train_matrix)
    assert isinstance(model, Popularity)
    users = csr_matrix(np.array([[0, 0, 1, 0, 0], [0, 0, 0, 0, 0]], dtype=np.float32))
    scores = scores_of(model, users)
    assert scores.shape == (2, 5)
    assert len(set(scores[0].tolist())) == 5  # no two items share a score
    expected = torch.tensor([1, 4, 0, 3, 2])
    for row in scores:
        assert torch.equal(torch.argsort(row, descending=True), expected)


# --- EASE -----------------------------------------------------------------------------------------------------

def ease_reference(x: np.ndarray, l2: float) -> np.ndarray:
    """Steck's closed form in float64: B = I - P diag(1/diag(P)), P = (X^T X + l2 I)^-1, zero diagonal."""
    gram = x.T @ x + l2 * np.eye(x.shape[1])
    precision = np.linalg.inv(gram)
    weights = np.eye(x.shape[1]) - precision @ np.diag(1.0 / np.diag(precision))
    np.fill_diagonal(weights, 0.0)
    return weights


def test_ease_equals_the_dense_closed_form() -> None:
    """The weights and the scores x_u B match a float64 numpy computation; the diagonal is exactly zero."""
    train_matrix = random_binary(40, 12, 0.3, seed=1)
    l2 = 5.0
    model = fitted("ease", train_matrix, l2=l2)
    assert isinstance(model, EASE)
    reference = ease_reference(train_matrix.toarray().astype(np.float64), l2)
    np.testing.assert_allclose(model.weights.numpy(), reference, rtol=1e-4, atol=1e-6)
    assert torch.equal(torch.diagonal(model.weights), torch.zeros(12))
    users = random_binary(9, 12, 0.4, seed=2)
    np.testing.assert_allclose(scores_of(model, users).numpy(), users.toarray() @ reference, rtol=1e-4, atol=1e-5)


# --- ItemKNN --------------------------------------------------------------------------------------------------

def itemknn_reference(x: np.ndarray, users: np.ndarray, k: int, shrink: float) -> np.ndarray:
    """Brute force: cosine with shrinkage over binary columns, self excluded, each item's k most similar kept,
    score(u, i) = sum of sim(i, j) over the user's items j among i's neighbours."""
    n_items = x.shape[1]
    columns = (x > 0).astype(np.float64)
    norms = np.sqrt(columns.sum(axis=0))
    similarity = np.zeros((n_items, n_items))
    for i in range(n_items):
        for j in range(n_items):
            if i != j and norms[i] * norms[j] + shrink > 0:
                similarity[i, j] = columns[:, i] @ columns[:, j] / (norms[i] * norms[j] + shrink)
    scores = np.zeros((users.shape[0], n_items))
    for i in range(n_items):
        candidates = [j for j in range(n_items) if j != i]
        kept = sorted(candidates, key=lambda j: -similarity[i, j])[:k]
        for u in range(users.shape[0]):
            scores[u, i] = sum(similarity[i, j] for j in kept if users[u, j] > 0)
    return scores


def assert_distinct_similarities(x: np.ndarray, shrink: float) -> None:
    """Precondition: every item's similarities to the other items are distinct, so which k neighbours it keeps
    does not depend on how ties are broken."""
    columns = (x > 0).astype(np.float64)
    norms = np.sqrt(columns.sum(axis=0))
    similarity = columns.T @ columns / (np.outer(norms, norms) + shrink)
    for i in range(x.shape[1]):
        others = np.delete(similarity[i], i)
        assert len(np.unique(others.round(12))) == len(others), f"item {i}: tied similarities"


@pytest.mark.parametrize("shrink", [0.0, 3.0])
def test_itemknn_equals_a_brute_force_top_k_cosine(shrink: float) -> None:
    """With k < n_items - 1, scores equal the dense reference (shrinkage 0 and > 0)."""
    train_matrix = random_binary(60, 10, 0.3, seed=8)
    k = 3
    x = train_matrix.toarray()
    assert_distinct_similarities(x, shrink)
    model = fitted("itemknn", train_matrix, neighbors=k, shrink=shrink)
    assert isinstance(model, ItemKNN)
    assert model.neighbor_items.shape == (10, k)
    users = random_binary(8, 10, 0.4, seed=4)
    expected = itemknn_reference(x, users.toarray(), k, shrink)
    np.testing.assert_allclose(scores_of(model, users).numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shrink", [0.0, 3.0])
def test_itemknn_item_without_train_users_scores_zero_not_nan(shrink: float) -> None:
    """An empty item column (0/0 cosine when shrink is 0) gives finite weights, zero scores, and scores for the
    other items as if it were absent."""
    x = random_binary(30, 7, 0.4, seed=5).toarray()
    x[:, 2] = 0.0
    model = fitted("itemknn", csr_matrix(x), neighbors=6, shrink=shrink)
    assert torch.isfinite(model.neighbor_weights).all()
    users = csr_matrix(np.ones((3, 7), dtype=np.float32))
    scores = scores_of(model, users)
    assert torch.isfinite(scores).all()
    assert torch.equal(scores[:, 2], torch.zeros(3))
    expected = itemknn_reference(x, users.toarray(), 6, shrink)
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-5, atol=1e-6)


# --- iALS -----------------------------------------------------------------------------------------------------

def ials_fold_in_reference(item_factors: np.ndarray, users: np.ndarray, l2: float, alpha: float) -> np.ndarray:
    """Dense float64 solve of (Y^T C_u Y + l2 I) x = Y^T C_u p_u, c = alpha on the user's items, 1 elsewhere."""
    y = item_factors.astype(np.float64)
    solved = []
    for row in users:
        confidence = np.where(row > 0, alpha, 1.0)
        system = y.T @ (confidence[:, None] * y) + l2 * np.eye(y.shape[1])
        solved.append(np.linalg.solve(system, y.T @ (confidence * (row > 0))))
    return np.array(solved)


def test_ials_fold_in_equals_implicits_user_solve() -> None:
    """fold_in gives the user factors that implicit's exact solver recalculates from the same item factors, and
    a dense least-squares solve; scores are those factors times the item factors."""
    l2, alpha, factors = 0.5, 4.0, 6
    train_matrix = random_binary(60, 25, 0.2, seed=6)
    model = fitted("ials", train_matrix, factors=factors, l2=l2, alpha=alpha, iterations=3)
    assert isinstance(model, IALS)
    users = random_binary(11, 25, 0.25, seed=7)
    folded = model.fold_in(SparseBatch.from_csr(users)).numpy()

    with threadpool_limits(1, "blas"):
        als = AlternatingLeastSquares(factors=factors, regularization=l2, alpha=alpha, use_cg=False, num_threads=1)
        als.item_factors = model.item_factors.numpy().copy()
        implicit_users = als.recalculate_user(np.arange(users.shape[0]), users)
    dense = ials_fold_in_reference(model.item_factors.numpy(), users.toarray(), l2, alpha)
    np.testing.assert_allclose(folded, implicit_users, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(folded, dense, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        scores_of(model, users).numpy(), dense @ model.item_factors.numpy().T.astype(np.float64), rtol=1e-5, atol=1e-6
    )


def test_ials_beats_popularity_on_synthetic_validation_ndcg(small_split: Split) -> None:
    """On seeded synthetic data with planted structure, iALS ranks validation items better than popularity."""
    pop = fitted("pop", small_split.train)
    ials = fitted("ials", small_split.train, factors=16, l2=1.0, alpha=5.0, iterations=8)
    pop_ndcg = summarize(evaluate_model(pop, small_split, "valid", k=5))["ndcg"]
    ials_ndcg = summarize(evaluate_model(ials, small_split, "valid", k=5))["ndcg"]
    print(f"valid NDCG@5: pop {pop_ndcg:.4f}, ials {ials_ndcg:.4f}")
    assert ials_ndcg > pop_ndcg


def ials_trainer(split: Split) -> Trainer:
    """A fresh Trainer of a 5-iteration iALS run."""
    return Trainer(split, TrainConfig.for_model("ials", factors=8, iterations=5, max_epochs=20, seed=3))


def test_ials_trainer_resumed_after_two_epochs_continues_exactly(small_split: Split) -> None:
    """A run stopped after 2 epochs and restored (through a weights-only torch file) into a fresh Trainer ends
    with the very item factors of an uninterrupted run."""
    uninterrupted = ials_trainer(small_split)
    while not uninterrupted.finished:
        uninterrupted.run_epoch()

    first = ials_trainer(small_split)
    for _ in range(2):
        first.run_epoch()
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = ials_trainer(small_split)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert resumed.epoch == 2
    while not resumed.finished:
        resumed.run_epoch()

    assert resumed.epoch == uninterrupted.epoch == 5
    assert not torch.equal(first.model.item_factors, uninterrupted.model.item_factors)  # the rest did something
    assert torch.equal(resumed.model.item_factors, uninterrupted.model.item_factors)
    assert resumed.best_epoch == uninterrupted.best_epoch
    assert torch.equal(resumed.best_model().item_factors, uninterrupted.best_model().item_factors)


@pytest.mark.parametrize(("users_per_chunk", "solves"), [(1, 8), (3, 3)])
def test_ials_fold_in_in_chunks_gives_the_default_scores(
    users_per_chunk: int, solves: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bounding the padded entries gathered at once (8 users in chunks, the last one partial; an empty user
    among them) solves chunk by chunk and leaves the scores as they are."""
    train_matrix = random_binary(40, 20, 0.3, seed=8)
    model = fitted("ials", train_matrix, factors=5, iterations=2)
    users = random_binary(8, 20, 0.3, seed=9).tolil()
    users[4, :] = 0
    users = users.tocsr()
    default = scores_of(model, users)
    calls: list[int] = []
    solve = torch.linalg.solve
    monkeypatch.setattr(torch.linalg, "solve", lambda a, b: calls.append(len(a)) or solve(a, b))
    monkeypatch.setattr(raycf.models.ials, "FOLD_IN_ENTRIES", users_per_chunk * int(np.diff(users.indptr).max()))
    chunked = scores_of(model, users)
    assert len(calls) == solves and sum(calls) == 8
    torch.testing.assert_close(chunked, default, rtol=1e-6, atol=1e-7)
    assert torch.equal(model.fold_in(SparseBatch.from_csr(users))[4], torch.zeros(5))  # no items: no factors


# --- all baselines --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("name", "overrides", "epochs"),
    [
        ("pop", {"max_epochs": 7}, 1),
        ("ease", {"max_epochs": 7}, 1),
        ("itemknn", {"max_epochs": 7}, 1),
        ("ials", {"factors": 4, "iterations": 3, "max_epochs": 7}, 3),
        ("ials", {"factors": 4, "iterations": 5, "max_epochs": 2}, 2),
    ],
)
def test_trainer_runs_a_baseline_for_its_planned_epochs(
    name: str, overrides: dict[str, int], epochs: int, small_split: Split
) -> None:
    """Closed-form models take one epoch, iALS min(iterations, max_epochs), each one validated."""
    config = TrainConfig.for_model(name, **overrides)
    assert planned_epochs(config) == epochs
    result = train(small_split, config)
    assert result.epochs_run == epochs
    assert [report.epoch for report in result.history] == list(range(1, epochs + 1))
    assert all(report.valid is not None for report in result.history)
    assert result.best_valid["ndcg"] > 0


# --- config ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("name", "overrides", "message"),
    [
        ("ease", {"l2": 0.0}, r"^config: l2 must be > 0 for ease, got 0\.0$"),
        ("ials", {"l2": 0.0}, r"^config: l2 must be > 0 for ials, got 0\.0$"),
        ("ease", {"l2": -1.0}, r"^config: l2 must be > 0 for ease, got -1\.0$"),
        ("itemknn", {"neighbors": 0}, r"^config: neighbors must be >= 1, got 0$"),
        ("itemknn", {"shrink": -1.0}, r"^config: shrink must be >= 0, got -1\.0$"),
        ("ials", {"factors": 0}, r"^config: factors must be >= 1, got 0$"),
        ("ials", {"alpha": 0.0}, r"^config: alpha must be > 0, got 0\.0$"),
    ],
)
def test_bad_baseline_settings_are_refused_naming_the_field(
    name: str, overrides: dict[str, object], message: str
) -> None:
    """TrainConfig.for_model raises a one-line RaycfError that names the field and the rule."""
    with pytest.raises(RaycfError, match=message):
        TrainConfig.for_model(name, **overrides)
