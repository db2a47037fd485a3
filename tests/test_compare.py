"""`raycf compare`: paired per-user statistics against scipy / numpy, Holm by hand, pairs, refusals, S3 and
two real `raycf score` outputs."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import run_raycf
from scipy import stats

from raycf.errors import RaycfError
from raycf.eval.metrics import METRICS
from raycf.report.compare import (
    ALL_ZERO_NOTE,
    COMPARE_JSON,
    COMPARE_MD,
    CONSTANT_NOTE,
    holm,
    paired_statistics,
    run_compare,
)
from raycf.score.job import SUMMARY_JSON, USER_METRICS_DIR

SPLIT = "a" * 64
USERS = np.array([11, 12, 13, 14, 15, 16, 17, 18, 19, 20])
# A hand-made example: per-user metric values of two models on the same 10 users (one without a test item).
N_TEST = np.array([2, 1, 3, 1, 2, 1, 4, 2, 0, 1])
NDCG_A = np.array([0.50, 0.00, 0.80, 1.00, 0.30, 0.00, 0.60, 0.25, np.nan, 0.90])
NDCG_B = np.array([0.40, 0.10, 0.50, 1.00, 0.00, 0.00, 0.70, 0.05, np.nan, 0.35])


def metric_values(ndcg: np.ndarray) -> dict[str, np.ndarray]:
    """Per-user P/R/NDCG/MRR derived from `ndcg` (any values in [0, 1] will do for the comparison)."""
    return {"precision": ndcg / 2, "recall": np.sqrt(ndcg), "ndcg": ndcg, "mrr": ndcg ** 2}


def write_scores(directory: Path, values: dict[str, np.ndarray], *, users: np.ndarray = USERS,
                 n_test: np.ndarray = N_TEST, k: int = 5, mask: str = "train", split: str = SPLIT,
                 model: str = "pop", shuffle: int | None = None) -> Path:
    """A `raycf score` output as it writes it: user_metrics/part-0.parquet (its schema) and summary.json."""
    frame = pd.DataFrame({
        "user_id": users.astype(np.int64),
        "n_test": n_test.astype(np.int32),
        "hits": np.minimum(n_test, 1).astype(np.int32),
        **{name: np.where(n_test > 0, values[name], np.nan) for name in METRICS},
        **{name: np.where(n_test > 0, column, np.nan) for name, column in values.items() if name not in METRICS},
    })
    if shuffle is not None:
        frame = frame.sample(frac=1.0, random_state=shuffle).reset_index(drop=True)
    (directory / USER_METRICS_DIR).mkdir(parents=True)
    frame.to_parquet(directory / USER_METRICS_DIR / "part-0.parquet", index=False)
    evaluated = frame[frame["n_test"] > 0]
    summary = {
        **{name: float(evaluated[name].mean()) for name in values},
        "k": k, "mask": mask, "split_sha256": split, "model": model, "trial_id": f"{model}_00000",
        "dataset": "synthetic", "users_scored": len(frame), "users_evaluated": len(evaluated),
        "users_skipped": {"no_test_items": len(frame) - len(evaluated)},
    }
    (directory / SUMMARY_JSON).write_text(json.dumps(summary, indent=2))
    return directory


def tree(directory: Path) -> list[Path]:
    return sorted(directory.rglob("*"))


def valid(values: np.ndarray) -> np.ndarray:
    return values[N_TEST > 0]


def test_paired_statistics_match_scipy_and_numpy() -> None:
    a, b = valid(NDCG_A), valid(NDCG_B)
    result = paired_statistics(a, b)
    d = a - b
    n = len(d)
    assert result["mean_a"] == pytest.approx(np.mean(a), abs=1e-15)
    assert result["mean_b"] == pytest.approx(np.mean(b), abs=1e-15)
    assert result["mean_difference"] == pytest.approx(np.mean(d), abs=1e-15)
    assert result["mean_difference"] == pytest.approx(1.25 / 9, abs=1e-15)  # summed by hand
    t_test = stats.ttest_rel(a, b)
    assert result["t"] == pytest.approx(t_test.statistic, rel=1e-12)
    assert result["p_t"] == pytest.approx(t_test.pvalue, rel=1e-9)
    assert result["df"] == n - 1
    scipy_ci = t_test.confidence_interval(0.95)
    assert result["ci95"] == pytest.approx([scipy_ci.low, scipy_ci.high], abs=1e-12)
    half = stats.t.ppf(0.975, n - 1) * np.std(d, ddof=1) / np.sqrt(n)
    assert result["ci95"] == pytest.approx([np.mean(d) - half, np.mean(d) + half], abs=1e-12)
    # Wilcoxon: zero differences dropped, W = the smaller of the signed-rank sums; p from scipy's two-sample form.
    nonzero = d[d != 0]
    ranks = stats.rankdata(np.abs(nonzero))
    assert result["wilcoxon_w"] == pytest.approx(min(ranks[nonzero > 0].sum(), ranks[nonzero < 0].sum()))
    assert result["p_wilcoxon"] == pytest.approx(stats.wilcoxon(a, b).pvalue, rel=1e-12)
    assert result["effect_size_dz"] == pytest.approx(np.mean(d) / np.std(d, ddof=1), rel=1e-12)
    assert result["users_differing"] == 7 and result["note"] is None


def test_all_zero_and_constant_differences_are_reported_not_raised() -> None:
    a = valid(NDCG_A)
    same = paired_statistics(a, a.copy())
    assert (same["t"], same["p_t"], same["wilcoxon_w"], same["p_wilcoxon"], same["effect_size_dz"]) == (0, 1, 0, 1, 0)
    assert same["ci95"] == [0.0, 0.0] and same["mean_difference"] == 0.0 and same["note"] == ALL_ZERO_NOTE
    shifted = paired_statistics(np.full(6, 0.75), np.full(6, 0.25))
    assert shifted["t"] == np.inf and shifted["effect_size_dz"] == np.inf and shifted["p_t"] == 0.0
    assert shifted["ci95"] == [0.5, 0.5] and shifted["note"] == CONSTANT_NOTE
    assert shifted["p_wilcoxon"] == pytest.approx(stats.wilcoxon(np.full(6, 0.5)).pvalue)


def test_holm_on_a_hand_worked_sequence() -> None:
    # sorted: 0.005 x 4 = 0.02; 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04 -> raised to 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02], abs=1e-15)
    assert holm([0.5, 0.6]) == [1.0, 1.0]  # 0.5 x 2 = 1.0, capped; 0.6 x 1 raised to 1.0
    assert holm([0.02, 0.02, 0.9]) == pytest.approx([0.06, 0.06, 0.9])
    assert holm([0.2]) == [0.2] and holm([]) == []


def test_two_inputs_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = write_scores(tmp_path / "a", metric_values(NDCG_A), model="ease")
    b = write_scores(tmp_path / "b", metric_values(NDCG_B), model="pop", shuffle=3)  # rows in another order
    assert run_raycf("compare", str(a), str(b), "--out", str(tmp_path / "cmp")) == 0
    printed = capsys.readouterr().out
    assert "compared 2 scoring outputs over 9 users (k=5, --mask train): 1 pair(s) x 4 metrics" in printed
    assert "A - B: ndcg@5 +0.1389" in printed and f"{tmp_path / 'cmp'}/{COMPARE_JSON}" in printed
    assert sorted(path.name for path in (tmp_path / "cmp").iterdir()) == [COMPARE_JSON, COMPARE_MD]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a", "b", "cmp"]  # no staging left behind
    result = json.loads((tmp_path / "cmp" / COMPARE_JSON).read_text())
    assert result["users_compared"] == 9 and result["k"] == 5 and result["split_sha256"] == SPLIT
    assert result["metrics"] == list(METRICS)
    assert [(item["label"], item["path"], item["model"]) for item in result["inputs"]] == [
        ("A", str(a), "ease"), ("B", str(b), "pop")]
    assert result["inputs"][0]["summary"]["ndcg"] == pytest.approx(np.nanmean(NDCG_A))
    (pair,) = result["pairs"]
    assert (pair["a"], pair["b"], pair["a_path"], pair["b_path"]) == ("A", "B", str(a), str(b))
    values_a, values_b = metric_values(NDCG_A), metric_values(NDCG_B)
    for name in METRICS:
        row = pair["metrics"][name]
        expected = paired_statistics(valid(values_a[name]), valid(values_b[name]))
        for key, value in expected.items():
            assert row[key] == (value if value is None else pytest.approx(value, rel=1e-12, abs=1e-15)), (name, key)
        assert row["mean_a"] == pytest.approx(result["inputs"][0]["summary"][name], abs=1e-15)
    tests = list(pair["metrics"].values())
    for key in ("p_t", "p_wilcoxon"):
        assert [row[f"{key}_holm"] for row in tests] == pytest.approx(holm([row[key] for row in tests]))
    for row in tests:
        assert row["significant_holm"] == (row["p_t_holm"] <= 0.05 and row["p_wilcoxon_holm"] <= 0.05)
    assert result["holm"] == {"families": ["t", "wilcoxon"], "tests_per_family": 4}
    markdown = (tmp_path / "cmp" / COMPARE_MD).read_text()
    assert "## A vs B" in markdown and "| ndcg@5 | 0.4833 | 0.3444 | +0.1389 |" in markdown


def test_three_inputs_give_three_pairs_holm_over_all_and_shared_report_metrics(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ndcg_c = np.clip(NDCG_B + rng.normal(0, 0.1, len(USERS)), 0, 1)
    recall20 = {name: np.clip(values + 0.1, 0, 1) for name, values in
                (("a", NDCG_A), ("b", NDCG_B), ("c", ndcg_c))}
    a = write_scores(tmp_path / "a", {**metric_values(NDCG_A), "recall@20": recall20["a"], "map@10": NDCG_A})
    b = write_scores(tmp_path / "b", {**metric_values(NDCG_B), "recall@20": recall20["b"]})
    c = write_scores(tmp_path / "c", {**metric_values(ndcg_c), "recall@20": recall20["c"], "map@10": ndcg_c})
    out, result = run_compare([str(a), str(b), str(c)], str(tmp_path / "cmp"))
    assert out == str(tmp_path / "cmp")
    assert result["metrics"] == [*METRICS, "recall@20"]  # map@10 is not in b
    assert [(pair["a"], pair["b"]) for pair in result["pairs"]] == [("A", "B"), ("A", "C"), ("B", "C")]
    tests = [row for pair in result["pairs"] for row in pair["metrics"].values()]
    assert len(tests) == 15 and result["holm"]["tests_per_family"] == 15
    for key in ("p_t", "p_wilcoxon"):
        assert [row[f"{key}_holm"] for row in tests] == pytest.approx(holm([row[key] for row in tests]))
        assert all(row[f"{key}_holm"] >= row[key] for row in tests)
    b_c = result["pairs"][2]["metrics"]["recall@20"]
    assert b_c["mean_difference"] == pytest.approx(np.mean(valid(recall20["b"]) - valid(recall20["c"])), abs=1e-15)
    markdown = (tmp_path / "cmp" / COMPARE_MD).read_text()
    assert [line for line in markdown.splitlines() if line.startswith("## ")] == ["## A vs B", "## A vs C", "## B vs C"]


def test_identical_outputs_give_p_one_with_a_note(tmp_path: Path) -> None:
    a = write_scores(tmp_path / "a", metric_values(NDCG_A))
    shutil.copytree(a, tmp_path / "copy")
    _, result = run_compare([str(a), str(tmp_path / "copy")], str(tmp_path / "cmp"))
    for row in result["pairs"][0]["metrics"].values():
        assert (row["p_t"], row["p_t_holm"], row["p_wilcoxon"], row["p_wilcoxon_holm"]) == (1.0, 1.0, 1.0, 1.0)
        assert row["note"] == ALL_ZERO_NOTE and not row["significant_holm"]
    assert ALL_ZERO_NOTE in (tmp_path / "cmp" / COMPARE_MD).read_text()


def _case_split(tmp: Path) -> list[str]:
    write_scores(tmp / "a", metric_values(NDCG_A))
    write_scores(tmp / "b", metric_values(NDCG_B), split="b" * 64)
    return [str(tmp / "a"), str(tmp / "b")]


def _case_k(tmp: Path) -> list[str]:
    write_scores(tmp / "a", metric_values(NDCG_A))
    write_scores(tmp / "b", metric_values(NDCG_B), k=10)
    return [str(tmp / "a"), str(tmp / "b")]


def _case_mask(tmp: Path) -> list[str]:
    write_scores(tmp / "a", metric_values(NDCG_A))
    write_scores(tmp / "b", metric_values(NDCG_B), mask="train+valid")
    return [str(tmp / "a"), str(tmp / "b")]


def _case_users(tmp: Path) -> list[str]:
    write_scores(tmp / "a", metric_values(NDCG_A))
    n_test = N_TEST.copy()
    n_test[0] = 0  # user 11 has no test item in b: another user set
    write_scores(tmp / "b", metric_values(NDCG_B), n_test=n_test)
    return [str(tmp / "a"), str(tmp / "b")]


def _case_no_summary(tmp: Path) -> list[str]:
    write_scores(tmp / "a", metric_values(NDCG_A))
    (tmp / "run" / "split").mkdir(parents=True)
    return [str(tmp / "a"), str(tmp / "run")]


def _case_run_dir(tmp: Path) -> list[str]:
    write_scores(tmp / "a", metric_values(NDCG_A))
    write_scores(tmp / "run" / "scores", metric_values(NDCG_B))
    return [str(tmp / "a"), str(tmp / "run")]


def _case_missing(tmp: Path) -> list[str]:
    write_scores(tmp / "a", metric_values(NDCG_A))
    return [str(tmp / "a"), str(tmp / "nowhere")]


def _case_out_used(tmp: Path) -> list[str]:
    write_scores(tmp / "a", metric_values(NDCG_A))
    write_scores(tmp / "b", metric_values(NDCG_B))
    (tmp / "cmp").mkdir()
    (tmp / "cmp" / "keep.txt").write_text("mine")
    return [str(tmp / "a"), str(tmp / "b")]


def _case_one_input(tmp: Path) -> list[str]:
    write_scores(tmp / "a", metric_values(NDCG_A))
    return [str(tmp / "a")]


def _case_twice(tmp: Path) -> list[str]:
    write_scores(tmp / "a", metric_values(NDCG_A))
    return [str(tmp / "a"), str(tmp / "a")]


REFUSALS = {
    "split": (_case_split, (r"/b: scored on another split than .*/a \(split_sha256 bbbbbbbbbbbb vs aaaaaaaaaaaa\); "
                            r"compare scores of runs on the same split")),
    "k": (_case_k, r"/b: scored at k=10 but .*/a at k=5; score both with the same --k"),
    "mask": (_case_mask, r"/b: scored with --mask train\+valid but .*/a with --mask train; score both with the same"),
    "users": (_case_users, (r"/b: its 8 users with a test item are not the 9 of .*/a \(1 only in .*/a, 0 only in "
                            r".*/b\); score both for the same users")),
    "no summary": (_case_no_summary, r"/run: no summary.json, so not a `raycf score` output; give a `raycf score`"),
    "run dir": (_case_run_dir, r"/run: no summary.json, so not a `raycf score` output; give .*/run/scores$"),
    "missing": (_case_missing, r"/nowhere: does not exist; give a `raycf score` output directory"),
    "out used": (_case_out_used, r"/cmp: output directory exists and is not empty; choose a new --out"),
    "one input": (_case_one_input, r"compare needs at least two SCORES directories, got 1"),
    "twice": (_case_twice, r"/a: given twice; compare different scoring outputs"),
}


@pytest.mark.parametrize("case", REFUSALS, ids=list(REFUSALS))
def test_refusals_are_one_line_exit_2_and_write_nothing(case: str, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    make, pattern = REFUSALS[case]
    inputs = make(tmp_path)
    out = str(tmp_path / "cmp")
    before = tree(tmp_path)
    with pytest.raises(RaycfError, match=pattern):
        run_compare(inputs, out)
    assert run_raycf("compare", *inputs, "--out", out) == 2
    error = capsys.readouterr().err
    assert error.startswith("raycf: error: ") and error.endswith("\n") and error.count("\n") == 1, error
    assert re.search(pattern, error.rstrip("\n")), error
    assert tree(tmp_path) == before


def test_no_scores_at_all_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_raycf("compare", "--out", "x") == 2
    error = capsys.readouterr().err
    assert re.match(r"raycf: error: Missing argument 'SCORES\.\.\.'", error) and error.count("\n") == 1


def test_outputs_on_an_object_store_behind_their_pointers(object_store, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from raycf.storage.atomic import PendingOutput
    from raycf.storage.location import Location

    for name, value in object_store.env.items():
        monkeypatch.setenv(name, value)
    uris = []
    for name, ndcg in (("a", NDCG_A), ("b", NDCG_B)):
        local = write_scores(tmp_path / name, metric_values(ndcg))
        output = PendingOutput.begin(Location.of(object_store.uri(f"compare/{name}"), ""))
        output.staged.put_directory(local)
        output.commit()
        uris.append(object_store.uri(f"compare/{name}"))
    out, result = run_compare(uris, object_store.uri("compare/cmp"))
    pointer = json.loads(object_store.read("compare/cmp/current.json"))
    stored = json.loads(object_store.read(f"compare/cmp/{pointer['version']}/{COMPARE_JSON}"))
    assert stored["pairs"][0]["metrics"]["ndcg"]["mean_difference"] == pytest.approx(np.mean(
        valid(NDCG_A) - valid(NDCG_B)), abs=1e-15)
    assert stored["users_compared"] == result["users_compared"] == 9
    with pytest.raises(RaycfError, match=r"compare/cmp: output directory exists and is not empty"):
        run_compare(uris, out)


def test_two_real_scoring_outputs(ray_cluster, tmp_path: Path) -> None:
    from raycf.data.spec import DataSpec
    from raycf.models.config import TrainConfig
    from raycf.score.job import ScoreOptions, run_scoring
    from raycf.train.trainer import run_training

    data = DataSpec(synthetic={"n_users": 200, "n_items": 80})
    summaries: list[dict[str, Any]] = []
    for model in ("pop", "ease"):
        run_training(data, TrainConfig.for_model(model, seed=0), fractions=(0.6, 0.2, 0.2), mask="train",
                     out=tmp_path / model)
        summaries.append(run_scoring(str(tmp_path / model), ScoreOptions(out=str(tmp_path / f"{model}-scores")))[1])
    assert summaries[0]["split_sha256"] == summaries[1]["split_sha256"]
    out, result = run_compare([str(tmp_path / "pop-scores"), str(tmp_path / "ease-scores")], str(tmp_path / "cmp"))
    assert result["users_compared"] == summaries[0]["users_evaluated"] == summaries[1]["users_evaluated"]
    (pair,) = result["pairs"]
    for name in METRICS:
        row = pair["metrics"][name]
        assert row["mean_difference"] == pytest.approx(summaries[0][name] - summaries[1][name], abs=1e-12)
        assert (row["mean_a"], row["mean_b"]) == (summaries[0][name], summaries[1][name])  # exact, as summed there
    assert [item["model"] for item in result["inputs"]] == ["pop", "ease"]
    assert json.loads((Path(out) / COMPARE_JSON).read_text())["pairs"][0]["metrics"]["ndcg"]["p_t"] == pytest.approx(
        pair["metrics"]["ndcg"]["p_t"])
