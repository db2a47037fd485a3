"""The baselines as Ray Tune trials on a real local Ray: one report per closed-form fit, one per iALS iteration,
leaderboard rows, checkpoints reloaded from disk, `raycf score --model ease`, the report; and the memory guard
that refuses an items x items model too big for the machine before Ray starts."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import load_checkpoint, run_raycf

from raycf.data.source import load_split
from raycf.errors import RaycfError
from raycf.eval.evaluation import evaluate_model, summarize
from raycf.models.config import TrainConfig
from raycf.report.run_report import REPORT_HTML, REPORT_MD
from raycf.score.job import SCORES_DIR, SUMMARY_JSON
from raycf.storage.location import parse_results
from raycf.train.memory import check_fit_memory
from raycf.tune.driver import LEADERBOARD_FILE, SPLIT_DIR, TRIALS_FILE

BASELINE_STUDY = """\
name: baselines
seed: 0
data:
  dataset: synthetic
  synthetic: {n_users: 300, n_items: 80}
metric: ndcg@5
scheduler: {type: asha, max_t: 10, grace_period: 2, reduction_factor: 3}
resources: {cpus_per_trial: 1}
max_concurrent: 2
models:
  pop: {}
  ease: {search: {l2: {grid: [10.0, 100.0]}}}
  itemknn: {search: {neighbors: {grid: [5, 20]}}, fixed: {shrink: 5.0}}
  ials: {fixed: {factors: 8, iterations: 3, l2: 1.0, alpha: 5.0}}
"""


@pytest.fixture(scope="module")
def baseline_run(ray_cluster, tmp_path_factory) -> Path:
    """The study above, run once by `raycf tune` for this module's tests."""
    base = tmp_path_factory.mktemp("baselines")
    study = base / "baselines.yaml"
    study.write_text(BASELINE_STUDY)
    assert run_raycf("tune", str(study), "--storage", str(base), "--name", "run") == 0
    return base / "run"


def test_closed_form_trials_report_once_and_ials_after_each_iteration(baseline_run: Path) -> None:
    trials = pd.read_parquet(baseline_run / TRIALS_FILE)
    assert sorted(trials["model"].value_counts().items()) == [("ease", 2), ("ials", 1), ("itemknn", 2), ("pop", 1)]
    assert trials["error"].isna().all() and (trials["stopped_by"] == "complete").all()
    epochs = dict(zip(trials["model"], trials["epochs_run"]))
    assert epochs == {"pop": 1, "ease": 1, "itemknn": 1, "ials": 3}
    reported = {}
    for path in baseline_run.glob("run_trial_*/result.json"):
        rows = parse_results(path.read_text())
        reported.setdefault(rows[0]["model"], []).append([row["epoch"] for row in rows])
    assert reported == {"pop": [[1]], "ease": [[1], [1]], "itemknn": [[1], [1]], "ials": [[1, 2, 3]]}


def test_every_baseline_has_a_leaderboard_row_whose_checkpoint_reproduces_it(baseline_run: Path) -> None:
    leaderboard = pd.read_parquet(baseline_run / LEADERBOARD_FILE)
    trials = pd.read_parquet(baseline_run / TRIALS_FILE)
    assert sorted(leaderboard["model"]) == ["ease", "ials", "itemknn", "pop"]
    split = load_split(baseline_run / SPLIT_DIR)
    for _, row in leaderboard.iterrows():
        assert row["valid_ndcg"] == trials.loc[trials["model"] == row["model"], "valid_ndcg"].max()
        model, _ = load_checkpoint(baseline_run / row["checkpoint"], expect_model=row["model"],
                                   expect_items=split.n_items)
        assert summarize(evaluate_model(model, split, "valid"))["ndcg"] == pytest.approx(row["valid_ndcg"], abs=1e-9)


def test_score_and_report_take_a_baseline(baseline_run: Path) -> None:
    assert run_raycf("score", str(baseline_run), "--model", "ease", "--actors", "1") == 0
    summary = json.loads((baseline_run / SCORES_DIR / SUMMARY_JSON).read_text())
    leaderboard = pd.read_parquet(baseline_run / LEADERBOARD_FILE).set_index("model")
    assert summary["model"] == "ease" and summary["trial_id"] == leaderboard.loc["ease", "trial_id"]
    split = load_split(baseline_run / SPLIT_DIR)
    model, _ = load_checkpoint(baseline_run / leaderboard.loc["ease", "checkpoint"])
    test = summarize(evaluate_model(model, split, "test"))
    assert summary["ndcg"] == pytest.approx(test["ndcg"], abs=1e-9) and summary["users_evaluated"] == test["users"]
    assert run_raycf("score", str(baseline_run), "--model", "pop", "--actors", "1", "--out",
                     str(baseline_run / "scores-pop")) == 0
    assert run_raycf("report", str(baseline_run)) == 0
    page = (baseline_run / REPORT_HTML).read_text()
    assert all(label in page for label in ("Popularity", "EASE", "ItemKNN", "iALS"))
    report = (baseline_run / REPORT_MD).read_text()  # two scored models: compared user by user
    compared = report.split("## Per-user comparison", 1)[1]
    assert f"raycf compare {baseline_run / 'scores'} {baseline_run / 'scores-pop'}" in compared
    ndcg = next(line for line in compared.splitlines() if line.startswith("| ndcg@5 |"))
    pop = json.loads((baseline_run / "scores-pop" / SUMMARY_JSON).read_text())
    assert f"| {summary['ndcg'] - pop['ndcg']:+.4f} |" in ndcg  # EASE minus popularity, as the summaries say


def test_the_memory_guard_names_the_items_and_bytes() -> None:
    config = TrainConfig.for_model("ease")
    with pytest.raises(RaycfError, match=r"^--model ease: ease on 20,000 items needs 6\.0 GiB \(6,400,000,000 bytes\) "
                                         r"for its items x items matrices, but 4\.0 GiB is available here; "):
        check_fit_memory(config, 1000, 20_000, "--model ease", available=4 * 2**30)
    check_fit_memory(config, 1000, 20_000, "--model ease", available=7 * 2**30)  # fits: no error
    check_fit_memory(TrainConfig.for_model("pop"), 1000, 10**9, "--model pop", available=1)  # no items x items


def test_a_study_too_big_for_memory_is_refused_before_ray_starts(tmp_path: Path) -> None:
    """EASE on ~150,000 train items would need hundreds of GiB: one line, exit 2, no Ray, nothing written."""
    ratings = tmp_path / "wide.csv"
    rows = [f"{item % 500},{item}" for item in range(250_000)] + [f"{user},0" for user in range(500)]
    ratings.write_text("user_id,item_id\n" + "\n".join(rows) + "\n")
    study = tmp_path / "wide.yaml"
    study.write_text(f"name: wide\ndata: {{ratings: {ratings}}}\nmodels: {{pop: {{}}, ease: {{}}}}\n")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "raycf", "tune", str(study), "--storage", str(tmp_path / "runs")],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"raycf: error: {study}: models.ease: ease on "), done.stderr
    assert " items needs " in lines[0] and " bytes) for its items x items matrices" in lines[0]
    assert "Ray" not in done.stdout and time.monotonic() - started < 60
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
