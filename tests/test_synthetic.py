"""The synthetic generator: determinism, shape of the data, popularity skew and planted structure."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.sparse.linalg import svds

from raycf.data.synthetic import generate_synthetic
from raycf.errors import DataError


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return generate_synthetic(seed=3)


def test_same_seed_same_frame(frame: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(frame, generate_synthetic(seed=3))
    assert not frame.equals(generate_synthetic(seed=4))


def test_layout_and_raw_ids(frame: pd.DataFrame) -> None:
    assert list(frame.columns) == ["user_id", "item_id"]
    assert (frame.dtypes == np.int64).all()
    assert frame.equals(frame.sort_values(["user_id", "item_id"], ignore_index=True))
    assert not frame.duplicated().any()
    assert np.array_equal(np.unique(frame["user_id"]), np.arange(1, 2001))
    items = np.unique(frame["item_id"])
    assert len(items) <= 500 and not np.array_equal(items, np.arange(len(items)))


def test_interaction_counts(frame: pd.DataFrame) -> None:
    per_user = frame.groupby("user_id").size()
    assert per_user.min() >= 20
    assert 30 <= per_user.mean() <= 60
    everything = generate_synthetic(n_users=50, n_items=30, min_interactions=30, mean_interactions=30)
    assert (everything.groupby("user_id").size() == 30).all()


def _top_decile_share(frame: pd.DataFrame, n_items: int) -> float:
    counts = np.sort(frame["item_id"].value_counts().to_numpy())[::-1]
    return counts[: n_items // 10].sum() / counts.sum()


def test_popularity_skew(frame: pd.DataFrame) -> None:
    skewed = _top_decile_share(frame, 500)
    flat = _top_decile_share(generate_synthetic(seed=3, popularity_skew=0.0), 500)
    assert skewed > 0.3, "top 10% of items should hold far more than 10% of interactions"
    assert skewed > flat + 0.12


def _recall_at_20(scores: np.ndarray, train: sp.csr_matrix, test: sp.csr_matrix) -> float:
    scores = scores.copy()
    scores[train.nonzero()] = -np.inf
    top = np.argpartition(-scores, 20, axis=1)[:, :20]
    hits = np.take_along_axis(test.toarray(), top, axis=1).sum(axis=1)
    wanted = np.minimum(np.asarray(test.sum(axis=1)).ravel(), 20)
    return float((hits[wanted > 0] / wanted[wanted > 0]).mean())


def test_planted_structure_is_learnable(frame: pd.DataFrame) -> None:
    """A rank-8 factorisation of held-in records beats popularity on held-out ones."""
    users = frame["user_id"].to_numpy() - 1
    items = np.unique(frame["item_id"].to_numpy(), return_inverse=True)[1]
    held_out = np.random.default_rng(0).random(len(frame)) < 0.2
    shape = (users.max() + 1, items.max() + 1)

    def matrix(mask: np.ndarray) -> sp.csr_matrix:
        return sp.csr_matrix((np.ones(mask.sum(), np.float32), (users[mask], items[mask])), shape=shape)

    train, test = matrix(~held_out), matrix(held_out)
    left, sigma, right = svds(train, k=8, random_state=0)
    popularity = np.tile(np.asarray(train.sum(axis=0)), (shape[0], 1))
    assert _recall_at_20((left * sigma) @ right, train, test) > 1.2 * _recall_at_20(popularity, train, test)


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"n_users": 0}, "n_users"),
        ({"n_items": 2.5}, "n_items"),
        ({"n_factors": True}, "n_factors"),
        ({"min_interactions": 600}, "min_interactions"),
        ({"mean_interactions": 501}, "mean_interactions"),
        ({"mean_interactions": 0}, "mean_interactions"),
        ({"popularity_skew": -1.0}, "popularity_skew"),
        ({"popularity_skew": float("nan")}, "popularity_skew"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_arguments(kwargs: dict, named: str) -> None:
    with pytest.raises(DataError, match=named) as caught:
        generate_synthetic(**kwargs)
    assert "\n" not in str(caught.value)
