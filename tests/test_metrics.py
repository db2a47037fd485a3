"""Tests for raycf.metrics: hand-computed cases and a cross-check against a slow reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from raycf.metrics import (
    MASK_PROTOCOLS,
    METRICS,
    evaluate,
    exact_mean,
    exact_sum,
    hits_at_k,
    known_items,
    mean_metrics,
    top_k,
    user_metrics,
)

INF = float("inf")


def csr(rows: list[list[int]], n_items: int) -> sp.csr_matrix:
    """A 0/1 CSR with the given item lists per row."""
    data = [(r, c) for r, items in enumerate(rows) for c in items]
    r, c = (
        (np.array(x, dtype=np.int64) for x in zip(*data))
        if data
        else (np.zeros(0, int),) * 2
    )
    return sp.csr_matrix(
        (np.ones(len(r), np.float32), (r, c)), shape=(len(rows), n_items)
    )


# Tiny example: 4 users x 6 items, k = 3.
# u0: candidates 0,2,3,4,5 (1 is known) -> top [0, 2, 3]; held-out {0, 3} -> hits T F T.
# u1: ties at 0.5 on 0,1,3,4 (2 known) -> lower index first: [0, 1, 3], 4 falls off; hit at rank 3.
# u2: no held-out item -> NaN, not averaged.
# u3: only 3 and 5 are candidates (high scores on known items must not show) -> [5, 3, -1].
SCORES = [
    [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],
    [0.5, 0.5, 0.9, 0.5, 0.5, 0.1],
    [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
    [1.0, 1.0, 1.0, 0.2, 1.0, 0.3],
]
KNOWN = csr([[1], [2], [0], [0, 1, 2, 4]], 6)
HELDOUT = csr([[0, 3], [3], [], [3]], 6)
K = 3
EXPECTED_TOP = [[0, 2, 3], [0, 1, 3], [5, 4, 3], [5, 3, -1]]
EXPECTED_HITS = [
    [True, False, True],
    [False, False, True],
    [False] * 3,
    [False, True, False],
]
LOG2_3 = math.log2(3)
EXPECTED = {
    # u0: 2 hits / k=3; u1, u3: 1 hit / 3.
    "precision": [2 / 3, 1 / 3, math.nan, 1 / 3],
    # every held-out item is found.
    "recall": [1.0, 1.0, math.nan, 1.0],
    # u0: DCG = 1/log2(2) + 1/log2(4) = 1.5; IDCG over min(3, 2) = 2 hits = 1 + 1/log2(3).
    # u1: DCG = 1/log2(4) = 0.5, IDCG = 1.  u3: DCG = 1/log2(3), IDCG = 1.
    "ndcg": [1.5 / (1 + 1 / LOG2_3), 0.5, math.nan, 1 / LOG2_3],
    # first hit at rank 1, 3, -, 2.
    "mrr": [1.0, 1 / 3, math.nan, 0.5],
}


def tiny_scores() -> torch.Tensor:
    return torch.tensor(SCORES, dtype=torch.float32)


def test_top_k_tiny_example() -> None:
    assert top_k(tiny_scores(), KNOWN, K).tolist() == EXPECTED_TOP


def test_top_k_returns_int64_and_masks_in_place() -> None:
    scores = tiny_scores()
    out = top_k(scores, KNOWN, K)
    assert out.dtype == torch.int64 and out.shape == (4, K)
    assert scores[0, 1] == -INF and scores[3, 4] == -INF


def test_top_k_ties_inside_and_across_boundary() -> None:
    scores = torch.tensor([[0.3, 0.7, 0.7, 0.7, 0.1], [0.2, 0.2, 0.2, 0.2, 0.2]])
    none = csr([[], []], 5)
    # Row 0: 0.7 on 1,2,3 then 0.3 on 0, 0.1 on 4.  Row 1: all tied -> index order.
    assert top_k(scores.clone(), none, 2).tolist() == [[1, 2], [0, 1]]
    assert top_k(scores.clone(), none, 4).tolist() == [[1, 2, 3, 0], [0, 1, 2, 3]]
    assert top_k(scores.clone(), none, 5).tolist() == [[1, 2, 3, 0, 4], [0, 1, 2, 3, 4]]
    # Masking 1 and 2 of row 1: the tie 0,3,4 in index order.
    assert top_k(scores.clone(), csr([[], [1, 2]], 5), 2).tolist() == [[1, 2], [0, 3]]


def test_top_k_k_larger_than_candidates_and_items() -> None:
    scores = torch.tensor([[0.1, 0.3, 0.2], [0.5, 0.5, 0.5], [0.1, 0.2, 0.3]])
    known = csr([[0], [], [0, 1, 2]], 3)
    # Candidates: row 0 -> 1, 2; row 1 -> all three tied; row 2 -> none.
    assert top_k(scores, known, 5).tolist() == [
        [1, 2, -1, -1, -1],
        [0, 1, 2, -1, -1],
        [-1, -1, -1, -1, -1],
    ]


def test_top_k_candidates_scored_minus_inf_are_not_confused_with_the_mask() -> None:
    scores = torch.tensor([[-INF, 0.5, -INF, -INF], [-INF, -INF, -INF, -INF]])
    known = csr([[2], [0, 1]], 4)
    # Row 0: candidates 0, 1, 3 -> 1 (0.5), then the -inf ties 0, 3.  Row 1: 2, 3 only.
    assert top_k(scores, known, 4).tolist() == [[1, 0, 3, -1], [2, 3, -1, -1]]


def test_top_k_nan_among_candidates_raises_but_not_when_masked() -> None:
    nan = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        top_k(torch.tensor([[0.1, nan, 0.3]]), csr([[]], 3), 2)
    assert top_k(torch.tensor([[0.1, nan, 0.3]]), csr([[1]], 3), 2).tolist() == [[2, 0]]


def test_top_k_bad_arguments() -> None:
    with pytest.raises(ValueError):
        top_k(tiny_scores(), KNOWN, 0)
    with pytest.raises(ValueError):
        top_k(tiny_scores(), csr([[]], 6), 2)
    with pytest.raises(ValueError):
        top_k(torch.ones(4, 6, dtype=torch.int64), KNOWN, 2)


def test_top_k_float64_and_unsorted_duplicate_csr() -> None:
    # Duplicate, unsorted entries of item 2 and 0 in one row still mask each once.
    known = sp.csr_matrix(
        (np.ones(3), np.array([2, 0, 2]), np.array([0, 3])), shape=(1, 4)
    )
    scores = torch.tensor([[0.4, 0.3, 0.9, 0.3]], dtype=torch.float64)
    assert top_k(scores, known, 3).tolist() == [[1, 3, -1]]


def test_hits_at_k() -> None:
    assert hits_at_k(np.array(EXPECTED_TOP), HELDOUT).tolist() == EXPECTED_HITS
    assert hits_at_k(torch.tensor(EXPECTED_TOP), HELDOUT).tolist() == EXPECTED_HITS
    # No held-out item at all; -1 padding is never a hit.
    assert hits_at_k(np.array([[-1, 0]]), csr([[]], 3)).tolist() == [[False, False]]
    assert hits_at_k(np.array([[-1, 2]]), csr([[2]], 3)).tolist() == [[False, True]]


def test_user_metrics_tiny_example() -> None:
    per_user = user_metrics(np.array(EXPECTED_HITS), np.array([2, 1, 0, 1]), K)
    assert set(per_user) == set(METRICS)
    for name in METRICS:
        assert per_user[name].dtype == np.float64
        np.testing.assert_allclose(per_user[name], EXPECTED[name], rtol=1e-12)


def test_user_metrics_more_held_out_than_k() -> None:
    # 5 held-out items, all 3 slots hit: IDCG over min(3, 5) = 3 -> NDCG 1, recall 3/5.
    per_user = user_metrics(np.array([[True, True, True]]), np.array([5]), 3)
    assert per_user["ndcg"][0] == pytest.approx(1.0)
    assert per_user["recall"][0] == pytest.approx(0.6)
    assert per_user["precision"][0] == pytest.approx(1.0)
    # No hit: everything 0.
    per_user = user_metrics(np.array([[False, False, False]]), np.array([2]), 3)
    assert [per_user[name][0] for name in METRICS] == [0.0, 0.0, 0.0, 0.0]


def test_user_metrics_shape_mismatch() -> None:
    with pytest.raises(ValueError):
        user_metrics(np.zeros((2, 3), bool), np.array([1, 1]), 4)


def test_mean_metrics_excludes_users_without_held_out() -> None:
    means = mean_metrics(
        user_metrics(np.array(EXPECTED_HITS), np.array([2, 1, 0, 1]), K)
    )
    assert means["users"] == 3
    # Over u0, u1, u3: precision (2/3 + 1/3 + 1/3) / 3 = 4/9; MRR (1 + 1/3 + 1/2) / 3 = 11/18.
    assert means["precision"] == pytest.approx(4 / 9)
    assert means["recall"] == pytest.approx(1.0)
    assert means["ndcg"] == pytest.approx(
        (1.5 / (1 + 1 / LOG2_3) + 0.5 + 1 / LOG2_3) / 3
    )
    assert means["mrr"] == pytest.approx(11 / 18)


def test_mean_metrics_no_users() -> None:
    means = mean_metrics(user_metrics(np.zeros((2, 3), bool), np.array([0, 0]), 3))
    assert means["users"] == 0
    assert all(math.isnan(means[name]) for name in METRICS)


def test_exact_mean_is_the_same_however_the_values_are_batched_and_ordered() -> None:
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.random(50_000), np.ones(500), np.zeros(500), [1e-9, 2.0**-70]])
    whole = exact_mean(exact_sum(values), len(values))
    assert whole == pytest.approx(math.fsum(values) / len(values), rel=1e-15)
    shuffled = rng.permutation(values)
    for parts in (7, 64, 1001):  # float sums of these batchings differ in the last bits; these must not
        batched = sum(exact_sum(part) for part in np.array_split(shuffled, parts))
        assert exact_mean(batched, len(values)) == whole
    assert exact_sum(np.array([])) == 0 and exact_mean(0, 0) != exact_mean(0, 0)  # NaN


@pytest.mark.parametrize("batch_size", [1, 2, 3, 256])
def test_evaluate_matches_hand_values(batch_size: int) -> None:
    calls: list[list[int]] = []

    def score_fn(users: np.ndarray) -> torch.Tensor:
        calls.append(users.tolist())
        return tiny_scores()[torch.from_numpy(users)]

    out = evaluate(score_fn, KNOWN, HELDOUT, k=K, batch_size=batch_size)
    for name in METRICS:
        np.testing.assert_allclose(out[name], EXPECTED[name], rtol=1e-12)
    assert out["n_heldout"].tolist() == [2, 1, 0, 1]
    assert out["hits"].tolist() == [2, 1, 0, 1]
    # User 2 has no held-out item and is never scored.
    assert sorted(u for batch in calls for u in batch) == [0, 1, 3]
    assert all(len(batch) <= batch_size for batch in calls)


def test_evaluate_skips_batches_without_held_out_users() -> None:
    def score_fn(users: np.ndarray) -> torch.Tensor:
        raise AssertionError("score_fn must not be called")

    out = evaluate(score_fn, KNOWN, csr([[], [], [], []], 6), k=K)
    assert np.isnan(out["ndcg"]).all() and mean_metrics(out)["users"] == 0


def test_evaluate_refuses_overlap_and_bad_shapes() -> None:
    def score_fn(users: np.ndarray) -> torch.Tensor:
        return tiny_scores()[torch.from_numpy(users)]

    with pytest.raises(ValueError, match="overlap"):
        evaluate(score_fn, KNOWN, csr([[1], [], [], []], 6), k=K)
    with pytest.raises(ValueError):
        evaluate(score_fn, KNOWN, csr([[1]], 6), k=K)
    with pytest.raises(ValueError):
        evaluate(score_fn, KNOWN, HELDOUT, k=0)
    with pytest.raises(ValueError):
        evaluate(lambda users: torch.zeros(len(users), 5), KNOWN, HELDOUT, k=K)


def test_known_items_protocols() -> None:
    train = csr([[0, 1], [2]], 4)
    valid = csr([[1, 3], []], 4)
    assert known_items(train, valid, "train").toarray().tolist() == [
        [1, 1, 0, 0],
        [0, 0, 1, 0],
    ]
    assert known_items(train, valid, "train+valid").toarray().tolist() == [
        [1, 1, 0, 1],
        [0, 0, 1, 0],
    ]
    assert MASK_PROTOCOLS == ("train", "train+valid")
    with pytest.raises(ValueError):
        known_items(train, valid, "valid")
    with pytest.raises(ValueError):
        known_items(train, csr([[1]], 4), "train")


def test_mask_protocol_changes_the_ranking() -> None:
    # One user, items 0..3 scored 0.9, 0.8, 0.7, 0.6; train {0}, valid {1}, test {2}; k = 1.
    train, valid, test = csr([[0]], 4), csr([[1]], 4), csr([[2]], 4)

    def score_fn(users: np.ndarray) -> torch.Tensor:
        return torch.tensor([[0.9, 0.8, 0.7, 0.6]])

    # "train": item 1 (a validation item) ranks first and is a miss.
    assert (
        evaluate(score_fn, known_items(train, valid, "train"), test, k=1)["precision"][
            0
        ]
        == 0.0
    )
    # "train+valid": item 2 ranks first and is a hit.
    assert (
        evaluate(score_fn, known_items(train, valid, "train+valid"), test, k=1)[
            "precision"
        ][0]
        == 1.0
    )


def reference(
    scores: np.ndarray, known: list[set[int]], heldout: list[set[int]], k: int
) -> tuple[list[list[int]], dict[str, list[float]]]:
    """Straightforward top-k and metrics with Python loops and a stable argsort."""
    tops: list[list[int]] = []
    metrics: dict[str, list[float]] = {name: [] for name in METRICS}
    for s, kn, ho in zip(scores, known, heldout):
        cands = np.array([j for j in range(len(s)) if j not in kn], dtype=np.int64)
        order = cands[np.argsort(-s[cands], kind="stable")][:k].tolist()
        tops.append(order + [-1] * (k - len(order)))
        if not ho:
            for name in METRICS:
                metrics[name].append(math.nan)
            continue
        hit_ranks = [r + 1 for r, j in enumerate(order) if j in ho]
        metrics["precision"].append(len(hit_ranks) / k)
        metrics["recall"].append(len(hit_ranks) / len(ho))
        dcg = sum(1 / math.log2(r + 1) for r in hit_ranks)
        idcg = sum(1 / math.log2(r + 1) for r in range(1, min(k, len(ho)) + 1))
        metrics["ndcg"].append(dcg / idcg)
        metrics["mrr"].append(1 / hit_ranks[0] if hit_ranks else 0.0)
    return tops, metrics


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("k", [1, 3, 5, 12, 15])
def test_random_cross_check_against_reference(seed: int, k: int) -> None:
    rng = np.random.default_rng(seed)
    n_users, n_items = 40, 12
    # Scores rounded to one decimal: many ties; a few candidates scored -inf.
    scores = np.round(rng.random((n_users, n_items)), 1).astype(np.float32)
    scores[rng.random(scores.shape) < 0.05] = -INF
    # Per user: known density from 0 to 0.9 (so some have fewer than k candidates).
    state = rng.random((n_users, n_items))
    density = rng.random((n_users, 1)) * 0.9
    known_dense = state < density
    heldout_dense = (~known_dense) & (rng.random((n_users, n_items)) < 0.25)
    heldout_dense[::7] = False  # some users with nothing held out
    known = sp.csr_matrix(known_dense.astype(np.float32))
    heldout = sp.csr_matrix(heldout_dense.astype(np.float32))
    known_sets = [set(np.flatnonzero(row)) for row in known_dense]
    heldout_sets = [set(np.flatnonzero(row)) for row in heldout_dense]
    ref_top, ref_metrics = reference(scores, known_sets, heldout_sets, k)

    got_top = top_k(torch.from_numpy(scores.copy()), known, k)
    assert got_top.tolist() == ref_top
    for row, kn in zip(got_top.tolist(), known_sets):
        assert not kn & set(row)

    def score_fn(users: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(scores[users])

    results = [
        evaluate(score_fn, known, heldout, k=k, batch_size=b) for b in (1, 7, 64)
    ]
    for out in results:
        for name in METRICS:
            np.testing.assert_allclose(out[name], ref_metrics[name], rtol=1e-12, atol=0)
        assert out["n_heldout"].tolist() == [len(h) for h in heldout_sets]
    ref_mean = {name: float(np.nanmean(ref_metrics[name])) for name in METRICS}
    means = mean_metrics(results[0])
    assert means["users"] == sum(1 for h in heldout_sets if h)
    for name in METRICS:
        assert means[name] == pytest.approx(ref_mean[name], rel=1e-12)
