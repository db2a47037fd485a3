"""Tests for raycf.eval.metrics: hand-computed cases and a cross-check against a slow reference."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from conftest import evaluate_scores, run_raycf

from raycf.eval.metrics import (
    ALL_METRICS,
    METRICS,
    REPORT_K,
    MetricAt,
    Selection,
    exact_mean,
    exact_sum,
    hits_at_k,
    mean_metrics,
    metrics_at,
    parse_metric_list,
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
EXPECTED_MORE = {
    # a hit in the top 3 for every user with a held-out item.
    "hit_rate": [1.0, 1.0, math.nan, 1.0],
    # u0: (1/1 + 2/3) / min(2, 3); u1: (1/3) / 1; u3: (1/2) / 1.
    "map": [(1 + 2 / 3) / 2, 1 / 3, math.nan, 0.5],
    # hits / min(3, held out): 2 / 2, 1 / 1, -, 1 / 1.
    "recall_capped": [1.0, 1.0, math.nan, 1.0],
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


def test_user_metrics_every_metric_on_the_tiny_example() -> None:
    per_user = user_metrics(np.array(EXPECTED_HITS), np.array([2, 1, 0, 1]), K, ALL_METRICS)
    assert list(per_user) == list(ALL_METRICS)
    for name, expected in {**EXPECTED, **EXPECTED_MORE}.items():
        assert per_user[name].dtype == np.float64
        np.testing.assert_allclose(per_user[name], expected, rtol=1e-12)
    only = user_metrics(np.array(EXPECTED_HITS), np.array([2, 1, 0, 1]), K, ("map", "recall"))
    assert list(only) == ["map", "recall"]


def test_map_and_hit_rate_hand_worked_for_one_user() -> None:
    # Ranks 1..5 hit at 2, 4, 5; 4 held-out items.
    hits = np.array([[False, True, False, True, True]])
    names = ("hit_rate", "map")
    # @5: AP = (1/2 + 2/4 + 3/5) / min(4, 5) = 1.6 / 4.
    at5 = user_metrics(hits, np.array([4]), 5, names)
    assert at5["hit_rate"][0] == 1.0 and at5["map"][0] == pytest.approx(0.4, rel=1e-12)
    # @3: hit at 2 only, AP = (1/2) / min(4, 3).
    at3 = user_metrics(hits[:, :3], np.array([4]), 3, names)
    assert at3["hit_rate"][0] == 1.0 and at3["map"][0] == pytest.approx(1 / 6, rel=1e-12)
    # @1: no hit.
    at1 = user_metrics(hits[:, :1], np.array([4]), 1, names)
    assert at1["hit_rate"][0] == 0.0 and at1["map"][0] == 0.0
    # 2 held-out items, both found at 2 and 4: (1/2 + 2/4) / min(2, 5).
    two = np.array([[False, True, False, True, False]])
    assert user_metrics(two, np.array([2]), 5, names)["map"][0] == pytest.approx(0.5, rel=1e-12)
    # Nothing held out: NaN.
    assert all(np.isnan(v[0]) for v in user_metrics(np.zeros((1, 5), bool), np.array([0]), 5, names).values())


def test_recall_capped_divides_by_k_where_more_items_are_held_out() -> None:
    """Liang et al.'s Recall@k: hits / min(k, n_heldout); raycf's recall: hits / n_heldout."""
    hits = np.array([[True, False, True, False, True], [False, True, False, False, False],
                     [False] * 5, [True, True, False, False, False]])
    n_heldout = np.array([10, 2, 0, 4])
    at5 = user_metrics(hits, n_heldout, 5, ("recall", "recall_capped"))
    # 3 hits of 10: 3/10 against 3/5; 1 of 2: 1/2 both; 2 of 4: 2/4 both (4 < k).
    np.testing.assert_allclose(at5["recall"], [0.3, 0.5, math.nan, 0.5], rtol=1e-12)
    np.testing.assert_allclose(at5["recall_capped"], [0.6, 0.5, math.nan, 0.5], rtol=1e-12)
    at3 = metrics_at(hits, n_heldout, parse_metric_list("recall@3,recall_capped@3"))
    # top 3: 2 hits of 10 -> 2/3 capped; 1 of 2 -> 1/2; 2 of 4 -> 2/3 capped, 2/4 not.
    np.testing.assert_allclose(at3["recall@3"], [0.2, 0.5, math.nan, 0.5], rtol=1e-12)
    np.testing.assert_allclose(at3["recall_capped@3"], [2 / 3, 0.5, math.nan, 2 / 3], rtol=1e-12)
    assert MetricAt.parse("recall_capped@20").field == "recall_capped@20"
    assert MetricAt.parse("recall_capped").field == "recall_capped@5"  # not one of the bare P/R/NDCG/MRR@5
    assert Selection.parse("recall_capped@20").key == "valid_recall_capped@20"


def test_recall_capped_selects_and_reports_in_a_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`raycf train` on held-out users picks its best epoch by recall_capped@10 and reports both recalls @20."""
    out = tmp_path / "run"
    assert run_raycf("train", "--model", "pop", "--dataset", "synthetic", "--scheme", "users", "--heldout-users", "30",
                     "--metric", "recall_capped@10", "--report-metrics", "recall@20,recall_capped@20",
                     "--out", str(out)) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["selection"] == {"metric": "recall_capped@10", "mode": "max",
                                    "report_metrics": ["recall@20", "recall_capped@20"]}
    for part in ("valid", "test"):
        values = metrics[part]
        assert values["recall_capped@20"] >= values["recall@20"] > 0 and 0 < values["recall_capped@10"] <= 1
    assert "recall_capped@10_se" in metrics["valid"]
    header = next(line for line in capsys.readouterr().out.splitlines() if "recall_capped@20" in line)
    assert header.split()[-3:] == ["recall_capped@10", "recall@20", "recall_capped@20"]  # one column each


def test_user_metrics_unknown_name() -> None:
    with pytest.raises(ValueError, match=r"unknown metrics \['auc'\]; expected names from precision, .*, map"):
        user_metrics(np.zeros((1, 2), bool), np.array([1]), 2, ("ndcg", "auc"))


@pytest.mark.parametrize(("text", "expected"), [
    ("recall@20", MetricAt("recall", 20)), ("map", MetricAt("map", REPORT_K)),
    (" hit_rate@1 ", MetricAt("hit_rate", 1)), ("ndcg@100", MetricAt("ndcg", 100)),
    ("precision@007", MetricAt("precision", 7)), ("mrr", MetricAt("mrr", REPORT_K)),
])
def test_metric_at_parse_and_label(text: str, expected: MetricAt) -> None:
    assert MetricAt.parse(text) == expected
    assert expected.label == f"{expected.name}@{expected.k}"
    assert MetricAt.parse(expected.label) == expected
    assert MetricAt.parse("recall@20").label == "recall@20"


@pytest.mark.parametrize(("text", "message"), [
    ("foo@5", "unknown metric 'foo@5'; use name@k with name one of precision, recall, ndcg, mrr, hit_rate, map, "
              "recall_capped (e.g. recall@20)"),
    ("", "unknown metric ''; use name@k"),
    ("Recall@5", "unknown metric 'Recall@5'"),
    ("recall @5", "unknown metric 'recall @5'"),
    ("ndcg@0", "metric 'ndcg@0': k must be an integer >= 1 (e.g. ndcg@10)"),
    ("ndcg@", "metric 'ndcg@': k must be an integer >= 1"),
    ("map@-1", "metric 'map@-1': k must be an integer >= 1"),
    ("map@2.5", "metric 'map@2.5': k must be an integer >= 1"),
    ("map@x", "metric 'map@x': k must be an integer >= 1"),
    ("map@\u00b2", "k must be an integer >= 1"),
    ("recall@20@5", "metric 'recall@20@5': k must be an integer >= 1"),
    ("recall_capped@0", "metric 'recall_capped@0': k must be an integer >= 1 (e.g. recall_capped@10)"),
    ("recall_caped@20", "unknown metric 'recall_caped@20'; use name@k with name one of "),
])
def test_metric_at_parse_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as caught:
        MetricAt.parse(text)
    assert "\n" not in str(caught.value)


def test_parse_metric_list() -> None:
    assert parse_metric_list("recall@20,recall@50,ndcg@100") == (
        MetricAt("recall", 20), MetricAt("recall", 50), MetricAt("ndcg", 100))
    # Whitespace tolerated, duplicates (a bare name is name@REPORT_K) dropped keeping the first.
    assert parse_metric_list(" map@10 , recall ,map@10, recall@5,hit_rate@1 ") == (
        MetricAt("map", 10), MetricAt("recall", 5), MetricAt("hit_rate", 1))
    assert parse_metric_list("") == () and parse_metric_list("   ") == ()
    with pytest.raises(ValueError, match=re.escape("unknown metric 'auc@5'; use name@k")):
        parse_metric_list("recall@20, auc@5")
    with pytest.raises(ValueError, match=re.escape("metric 'ndcg@0': k must be an integer >= 1")):
        parse_metric_list("ndcg@0")


def test_selection_accepts_every_metric() -> None:
    assert Selection.parse("map@10") == Selection("map", 10)
    assert Selection.parse("hit_rate", "min") == Selection("hit_rate", REPORT_K, "min")
    assert Selection.parse("map@10").key == "valid_map@10"
    with pytest.raises(ValueError, match=re.escape("unknown metric 'auc'; use name@k with name one of "
                                                   + ", ".join(ALL_METRICS))):
        Selection.parse("auc")
    with pytest.raises(ValueError, match=re.escape("mode must be one of max, min, got 'up'")):
        Selection.parse("map", "up")


def test_metrics_at_on_the_tiny_example() -> None:
    hits = np.array(EXPECTED_HITS)
    n_heldout = np.array([2, 1, 0, 1])
    wanted = parse_metric_list("map@3,recall@1,hit_rate@3,ndcg@2,map@3")
    out = metrics_at(hits, n_heldout, wanted)
    assert list(out) == ["map@3", "recall@1", "hit_rate@3", "ndcg@2"]
    np.testing.assert_allclose(out["map@3"], EXPECTED_MORE["map"], rtol=1e-12)
    np.testing.assert_allclose(out["hit_rate@3"], EXPECTED_MORE["hit_rate"], rtol=1e-12)
    # @1: only u0's first item is a hit (1 of its 2).  @2: u0 DCG 1, IDCG 1 + 1/log2(3); u3 1/log2(3).
    np.testing.assert_allclose(out["recall@1"], [0.5, 0.0, math.nan, 0.0], rtol=1e-12)
    np.testing.assert_allclose(out["ndcg@2"], [1 / (1 + 1 / LOG2_3), 0.0, math.nan, 1 / LOG2_3], rtol=1e-12)
    assert metrics_at(hits, n_heldout, ()) == {}


def test_metrics_at_refuses_k_beyond_the_ranking() -> None:
    hits, n_heldout = np.array(EXPECTED_HITS), np.array([2, 1, 0, 1])
    with pytest.raises(ValueError, match=re.escape("recall@4, map@9: k must be between 1 and 3")):
        metrics_at(hits, n_heldout, parse_metric_list("recall@3,recall@4,map@9"))
    with pytest.raises(ValueError, match=re.escape("ndcg@0: k must be between 1 and 3")):
        metrics_at(hits, n_heldout, [MetricAt("ndcg", 0)])
    with pytest.raises(ValueError, match=re.escape("ranked_hits must be 2-D")):
        metrics_at(hits[0], n_heldout, [MetricAt("ndcg", 1)])


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

    out = evaluate_scores(score_fn, KNOWN, HELDOUT, k=K, batch_size=batch_size)
    for name in METRICS:
        np.testing.assert_allclose(out[name], EXPECTED[name], rtol=1e-12)
    assert out["n_heldout"].tolist() == [2, 1, 0, 1]
    assert out["hits"].tolist() == [2, 1, 0, 1]
    assert out["ranked_hits"].dtype == np.bool_ and out["ranked_hits"].tolist() == EXPECTED_HITS
    # User 2 has no held-out item and is never scored.
    assert sorted(u for batch in calls for u in batch) == [0, 1, 3]
    assert all(len(batch) <= batch_size for batch in calls)


def test_evaluate_skips_batches_without_held_out_users() -> None:
    def score_fn(users: np.ndarray) -> torch.Tensor:
        raise AssertionError("score_fn must not be called")

    out = evaluate_scores(score_fn, KNOWN, csr([[], [], [], []], 6), k=K)
    assert np.isnan(out["ndcg"]).all() and mean_metrics(out)["users"] == 0


def test_evaluate_refuses_overlap_and_bad_shapes() -> None:
    def score_fn(users: np.ndarray) -> torch.Tensor:
        return tiny_scores()[torch.from_numpy(users)]

    with pytest.raises(ValueError, match="overlap"):
        evaluate_scores(score_fn, KNOWN, csr([[1], [], [], []], 6), k=K)
    with pytest.raises(ValueError):
        evaluate_scores(score_fn, KNOWN, csr([[1]], 6), k=K)
    with pytest.raises(ValueError):
        evaluate_scores(score_fn, KNOWN, HELDOUT, k=0)
    with pytest.raises(ValueError):
        evaluate_scores(lambda users: torch.zeros(len(users), 5), KNOWN, HELDOUT, k=K)


def test_mask_protocol_changes_the_ranking() -> None:
    # One user, items 0..3 scored 0.9, 0.8, 0.7, 0.6; train {0}, valid {1}, test {2}; k = 1.
    train, test = csr([[0]], 4), csr([[2]], 4)

    def score_fn(users: np.ndarray) -> torch.Tensor:
        return torch.tensor([[0.9, 0.8, 0.7, 0.6]])

    # "train": item 1 (a validation item) ranks first and is a miss.
    assert (
        evaluate_scores(score_fn, train, test, k=1)["precision"][
            0
        ]
        == 0.0
    )
    # "train+valid": item 2 ranks first and is a hit.
    assert (
        evaluate_scores(score_fn, csr([[0, 1]], 4), test, k=1)[
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
        evaluate_scores(score_fn, known, heldout, k=k, batch_size=b) for b in (1, 7, 64)
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


def brute_force(
    scores: np.ndarray, known: list[set[int]], heldout: list[set[int]], k: int
) -> dict[str, list[float]]:
    """Every metric at k, one user at a time: rank candidates by score, ties to the lower index."""
    out: dict[str, list[float]] = {name: [] for name in ALL_METRICS}
    for s, kn, ho in zip(scores, known, heldout):
        if not ho:
            for name in ALL_METRICS:
                out[name].append(math.nan)
            continue
        candidates = [j for j in range(len(s)) if j not in kn]
        ranking = sorted(candidates, key=lambda j: (-s[j], j))[:k]
        is_hit = [j in ho for j in ranking]
        n_hits = sum(is_hit)
        first = is_hit.index(True) + 1 if n_hits else None
        dcg = sum(1 / math.log2(rank + 1) for rank, hit in enumerate(is_hit, 1) if hit)
        idcg = sum(1 / math.log2(rank + 1) for rank in range(1, min(k, len(ho)) + 1))
        ap = sum(sum(is_hit[:rank]) / rank for rank, hit in enumerate(is_hit, 1) if hit)
        out["precision"].append(n_hits / k)
        out["recall"].append(n_hits / len(ho))
        out["ndcg"].append(dcg / idcg)
        out["mrr"].append(1 / first if first else 0.0)
        out["hit_rate"].append(1.0 if n_hits else 0.0)
        out["map"].append(ap / min(len(ho), k))
        out["recall_capped"].append(n_hits / min(len(ho), k))
    return out


@pytest.mark.parametrize("seed", range(4))
def test_every_metric_at_every_k_from_one_ranking(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    n_users, n_items = 50, 15
    # One-decimal scores (many ties), a few -inf candidates; known density 0..0.95, so many users have fewer
    # candidates than the larger k, some none; every 6th user has nothing held out.
    scores = np.round(rng.random((n_users, n_items)), 1).astype(np.float32)
    scores[rng.random(scores.shape) < 0.05] = -INF
    known_dense = rng.random((n_users, n_items)) < rng.random((n_users, 1)) * 0.95
    heldout_dense = (~known_dense) & (rng.random((n_users, n_items)) < 0.3)
    heldout_dense[::6] = False
    known = sp.csr_matrix(known_dense.astype(np.float32))
    heldout = sp.csr_matrix(heldout_dense.astype(np.float32))
    known_sets = [set(np.flatnonzero(row)) for row in known_dense]
    heldout_sets = [set(np.flatnonzero(row)) for row in heldout_dense]
    ks = (1, 2, 3, 5, 10, 14, 20)  # 20 > n_items
    big_k = max(ks)

    def score_fn(users: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(scores[users])

    full = evaluate_scores(score_fn, known, heldout, k=big_k, batch_size=16)
    ranked_hits = full["ranked_hits"]
    assert ranked_hits.shape == (n_users, big_k) and ranked_hits.dtype == np.bool_
    assert not ranked_hits[~heldout_dense.any(axis=1)].any()
    n_heldout = full["n_heldout"]
    wanted = [MetricAt(name, k) for k in ks for name in ALL_METRICS]
    got = metrics_at(ranked_hits, n_heldout, wanted)
    assert list(got) == [metric.label for metric in wanted]
    for k in ks:
        expected = brute_force(scores, known_sets, heldout_sets, k)
        for name in ALL_METRICS:
            np.testing.assert_allclose(got[f"{name}@{k}"], expected[name], rtol=1e-12, atol=0, err_msg=f"{name}@{k}")
        # The same as evaluating at k itself, bit for bit.
        at_k = evaluate_scores(score_fn, known, heldout, k=k, batch_size=7)
        np.testing.assert_array_equal(at_k["ranked_hits"], ranked_hits[:, :k])
        for name in METRICS:
            np.testing.assert_array_equal(at_k[name], got[f"{name}@{k}"])
        assert at_k["hits"].tolist() == ranked_hits[:, :k].sum(axis=1).tolist()
