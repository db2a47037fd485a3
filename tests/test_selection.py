"""One meaning of "best": the study's (or `raycf train`'s) metric at its k picks every trial's best epoch,
its patience, ASHA and the leaderboard."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY_STUDY, run_raycf

from raycf.data.schemes.records import split_interactions
from raycf.data.synthetic import generate_synthetic
from raycf.errors import RaycfError
from raycf.eval.metrics import METRICS, Selection
from raycf.models.config import TrainConfig
from raycf.runs.layout import BEST_FILE, REPEATS_FILE
from raycf.storage.location import Location, parse_results
from raycf.study.schema import load_study
from raycf.train.trainer import train
from raycf.tune.driver import LEADERBOARD_FILE, TRIALS_FILE
from raycf.tune.seed_runs import ENDED_ON_ITS_OWN, read_trial_run, scored_on_test, submission_order
from raycf.tune.selection import SELECT_FILE


@pytest.mark.parametrize(("text", "expected"), [
    ("ndcg", Selection("ndcg", 5)), ("recall@20", Selection("recall", 20)), ("mrr@1", Selection("mrr", 1)),
])
def test_metric_names_are_name_at_k(text: str, expected: Selection) -> None:
    assert Selection.parse(text) == expected
    assert Selection.parse(text).key == ("valid_" + (expected.name if expected.k == 5 else text))


@pytest.mark.parametrize(("text", "message"), [
    ("auc", "unknown metric 'auc'"), ("ndcg@0", "k must be an integer >= 1"), ("ndcg@x", "k must be an integer"),
])
def test_bad_metric_names_are_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Selection.parse(text)


def test_training_keeps_the_best_epoch_of_its_metric_at_its_k(small_split) -> None:
    config = TrainConfig.for_model("multvae", hidden=16, lr=1e-2, max_epochs=12, patience=4, seed=0)
    selection = Selection.parse("recall@10")
    result = train(small_split, config, selection=selection)
    curve = [report.valid["recall@10"] for report in result.history]
    assert result.best_epoch == int(np.argmax(curve)) + 1
    assert result.best_valid["recall@10"] == max(curve)
    assert result.epochs_run - result.best_epoch == 4 or result.epochs_run == 12  # patience counted on it too
    by_ndcg = train(small_split, config)
    assert [r.valid["ndcg"] for r in by_ndcg.history][: len(curve)] == [r.valid["ndcg"] for r in result.history]


def test_study_metric_recall_keeps_every_trials_recall_best_epoch(ray_cluster, tmp_path: Path) -> None:
    study = tmp_path / "recall.yaml"
    study.write_text(TINY_STUDY.replace("seed: 0\n", "seed: 0\nmetric: recall\n"))
    assert run_raycf("tune", str(study), "--storage", str(tmp_path), "--name", "run") == 0
    run_dir = tmp_path / "run"
    trials = pd.read_parquet(run_dir / TRIALS_FILE)
    for _, trial in trials.iterrows():
        (result_file,) = run_dir.glob(f"run_trial_{trial['trial_id']}_*/result.json")
        rows = {row["epoch"]: row["valid_recall"] for row in parse_results(result_file.read_text())}
        epochs = sorted(rows)
        best = epochs[int(np.argmax([rows[epoch] for epoch in epochs]))]  # the first of equal values
        assert trial["best_epoch"] == best, trial["trial_id"]
        assert trial["valid_recall"] == rows[best]
    leaderboard = pd.read_parquet(run_dir / LEADERBOARD_FILE)
    for _, row in leaderboard.iterrows():
        assert row["valid_recall"] == trials[trials["model"] == row["model"]]["valid_recall"].max()
    best = json.loads((run_dir / BEST_FILE).read_text())
    assert best["metric"] == "recall@5" and best["valid"]["recall"] == leaderboard["valid_recall"].max()


@pytest.mark.parametrize(("metric", "message"), [
    ("auc", "metric: unknown metric 'auc'"), ("recall@0", "metric: metric 'recall@0': k must be an integer >= 1"),
])
def test_bad_study_metric_is_one_line_before_ray(tmp_path: Path, metric: str, message: str) -> None:
    study = tmp_path / "bad.yaml"
    study.write_text(TINY_STUDY.replace("seed: 0\n", f"seed: 0\nmetric: {metric}\n"))
    with pytest.raises(Exception, match=message):
        load_study(study)
    done = subprocess.run([sys.executable, "-m", "raycf", "tune", str(study), "--storage", str(tmp_path / "runs")],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and message in done.stderr
    assert not (tmp_path / "runs").exists()


def test_train_metric_option_is_checked(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "raycf", "train", "--model", "autorec", "--metric", "ndcg@-1",
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, check=False)
    assert done.returncode == 2 and "--metric" in done.stderr and "k must be an integer >= 1" in done.stderr
    assert not (tmp_path / "out").exists()


def test_robust_selection_picks_the_best_mean_over_seeds(ray_cluster, tmp_path: Path) -> None:
    study = tmp_path / "select.yaml"
    study.write_text(TINY_STUDY + "select: {top: 2, seeds: [0, 1]}\n")
    assert run_raycf("tune", str(study), "--storage", str(tmp_path), "--name", "run") == 0
    run_dir = tmp_path / "run"
    trials = pd.read_parquet(run_dir / TRIALS_FILE)
    rows = pd.read_parquet(run_dir / SELECT_FILE)
    assert sorted(rows.groupby("model")["trial_id"].nunique().items()) == [("autorec", 2), ("multvae", 2)]
    assert sorted(set(rows["seed"])) == [0, 1] and len(rows) == 8
    for model, group in rows.groupby("model"):  # the candidates are the model's two best searched trials
        searched = trials[trials["model"] == model].sort_values(["valid_ndcg", "trial_id"], ascending=[False, True])
        assert set(group["trial_id"]) == set(searched["trial_id"].head(2))
    means = rows.groupby("trial_id")["valid_ndcg"].mean()
    leaderboard = pd.read_parquet(run_dir / LEADERBOARD_FILE)
    for _, row in leaderboard.iterrows():
        model_means = means[rows[rows["model"] == row["model"]]["trial_id"].unique()]
        assert row["trial_id"] == model_means.idxmax() and row["select_mean"] == model_means.max()
        assert row["select_seeds"] == "[0, 1]"
    best = json.loads((run_dir / BEST_FILE).read_text())
    assert best["select"]["mean"] == leaderboard["select_mean"].max() and best["select"]["seeds"] == [0, 1]
    # a candidate's row is that configuration trained on that seed's split, as `raycf train` would
    row = rows[(rows["model"] == "autorec") & (rows["seed"] == 1)].iloc[0]
    split = split_interactions(generate_synthetic(n_users=300, n_items=100), seed=1)
    result = train(split, TrainConfig.from_dict(json.loads(row["config"])))
    assert result.best_valid["ndcg"] == row["valid_ndcg"]
    assert run_raycf("report", str(run_dir)) == 0
    report = (run_dir / "report.md").read_text()
    assert "## Robust selection" in report and "noise" in report


def test_a_trial_on_its_own_split_is_not_trained_again(ray_cluster, tmp_path: Path, capsys) -> None:
    """Every trial is a candidate (top 3 of 3), selection and repeats on seeds 0 (the study's) and 1: a trial that
    ended on its own gives its seed-0 rows itself; its other seeds and the ASHA-stopped trials are trained. The
    console says so as each phase starts and as each of its runs ends."""
    study = tmp_path / "reuse.yaml"
    study.write_text(TINY_STUDY + "select: {top: 3, seeds: [0, 1]}\nrepeat_seeds: [1, 0]\n")
    assert run_raycf("tune", str(study), "--storage", str(tmp_path), "--name", "run") == 0
    console = capsys.readouterr().out
    run_dir = tmp_path / "run"
    trials = pd.read_parquet(run_dir / TRIALS_FILE).set_index("trial_id")
    assert "asha" in set(trials["stopped_by"]) and set(trials["stopped_by"]) & set(ENDED_ON_ITS_OWN)
    rows = pd.read_parquet(run_dir / SELECT_FILE)
    assert set(rows["trial_id"]) == set(trials.index) and list(rows["seed"]) == [0, 1] * 6  # in candidate order
    assert list(rows["trial_id"]) == [trial for trial in rows["trial_id"].unique() for _ in (0, 1)]
    ended = rows["trial_id"].map(trials["stopped_by"]).isin(ENDED_ON_ITS_OWN)
    assert (rows["from_trial"] == (ended & (rows["seed"] == 0))).all() and 0 < rows["from_trial"].sum() < 6
    reused = int(rows["from_trial"].sum())
    assert f"selection: 12 runs on split seeds 0, 1: {12 - reused} to train, {reused} " in console
    done = re.findall(r"^selection: (\d+) of 12 done \(.*\): trial (\S+) (\w+), split seed (\d), valid ndcg@5 "
                      r"([0-9.]+) at epoch (\d+)( \(the trial's own run\))?$", console, flags=re.MULTILINE)
    assert [int(line[0]) for line in done] == list(range(1, 13))
    assert sorted((trial, int(seed), bool(own)) for _, trial, _, seed, _, _, own in done) == sorted(
        zip(rows["trial_id"], rows["seed"], rows["from_trial"]))
    repeats = pd.read_parquet(run_dir / REPEATS_FILE)
    winners = pd.read_parquet(run_dir / LEADERBOARD_FILE).set_index("model")["trial_id"]
    winner_ended = repeats["model"].map(winners).map(trials["stopped_by"]).isin(ENDED_ON_ITS_OWN)
    assert (repeats["from_trial"] == (winner_ended & (repeats["seed"] == 0))).all()
    # each row is what training its configuration on its seed's split gives, with the trial's one thread
    fields = ["best_epoch", "epochs_run", *(f"valid_{name}" for name in METRICS), *METRICS]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _, row in rows[rows["from_trial"] | (rows["seed"] == 1)].drop_duplicates("trial_id").iterrows():
            split = split_interactions(generate_synthetic(n_users=300, n_items=100), seed=int(row["seed"]))
            result = train(split, TrainConfig.from_dict(json.loads(row["config"])))
            trained = {"best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
                       **{f"valid_{name}": result.best_valid[name] for name in METRICS},
                       **scored_on_test(result.model, split, Selection())}
            assert {name: row[name] for name in fields} == {name: trained[name] for name in fields}, row["trial_id"]
    finally:
        torch.set_num_threads(threads)
    # a reused row's seconds are the trial's own, as its results recorded them: it was not trained again
    location = Location.of(str(run_dir), "")
    for _, row in rows[rows["from_trial"]].iterrows():
        figures = read_trial_run(location, trials.loc[row["trial_id"]], Selection()).figures
        assert (row["train_seconds"], row["valid_seconds"]) == (figures.train_seconds, figures.valid_seconds)
    assert (rows["train_seconds"] > 0).all() and (rows["valid_seconds"] > 0).all()


def test_trainings_are_submitted_longest_first_and_the_trials_own_runs_last() -> None:
    assert submission_order([5, 30, 10, 30, 40], [False, False, True, False, True]) == [1, 3, 0, 2, 4]


@pytest.mark.parametrize(("select", "message"), [
    ("{top: 0, seeds: [0]}", "select.top: must be >= 1, got 0"),
    ("{top: 2, seeds: [0, x]}", "select.seeds: must be an integer >= 0, got 'x'"),
    ("{top: 2}", "select.seeds: missing; it is required"),
    ("{top: 2, seeds: [0], best: 1}", "select.best: unknown key"),
])
def test_bad_select_is_refused_naming_the_key(tmp_path: Path, select: str, message: str) -> None:
    study = tmp_path / "bad.yaml"
    study.write_text(TINY_STUDY + f"select: {select}\n")
    with pytest.raises(RaycfError, match=re.escape(message)):
        load_study(study)
