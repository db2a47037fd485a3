"""Every command on an object store: a real S3 API server (moto's server mode, IAM authentication on) on
127.0.0.1, and the two-raylet cluster of test_cluster_jobs.py, both started by the test session.

The quickstart study runs on both nodes with `--storage s3://...`, is scored and reported from S3, copied to
a local disk and scored and reported there after the S3 original is deleted (relocatable runs), with the same
top-k and summary to the last digit. A scoring killed mid-write leaves the previous output whole; `--resume`
continues a study from S3; bad buckets, credentials and endpoints are refused in one line before Ray starts.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import ObjectStore, TwoNodeCluster

from raycf.data.source import prepare_split
from raycf.data.synthetic import generate_synthetic
from raycf.report.run_report import REPORT_HTML, REPORT_MD
from raycf.runs.layout import BEST_FILE, REPEATS_FILE
from raycf.score.job import SUMMARY_JSON, TOPK_DIR, USER_METRICS_DIR
from raycf.storage.location import POINTER_FILE
from raycf.study.schema import load_study
from raycf.tune.driver import SPLIT_DIR, TRIALS_FILE

ROOT = Path(__file__).resolve().parents[1]
RAYCF = [sys.executable, "-m", "raycf"]
METRICS = ("precision", "recall", "ndcg", "mrr")


def raycf(*args: str, env: dict[str, str], timeout: float = 400) -> subprocess.CompletedProcess:
    done = subprocess.run([*RAYCF, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)
    assert done.returncode == 0, (f"raycf {' '.join(args)} exited {done.returncode}:\n"
                                  f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def wait_until(condition: Callable[[], object], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {seconds} s"
        time.sleep(0.2)


def download(store: ObjectStore, prefix: str, local: Path) -> None:
    """Every object under `prefix` into `local`, as `aws s3 cp --recursive` would."""
    for key in store.keys(prefix):
        if key.endswith("/"):  # a directory marker
            continue
        target = local / key[len(prefix):].lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(store.read(key))


def scores_of(directory: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """topk, user_metrics (sorted by user) and the summary of a local scoring output, following its pointer."""
    if (directory / POINTER_FILE).exists():
        directory = directory / json.loads((directory / POINTER_FILE).read_text())["version"]
    topk = pd.read_parquet(directory / TOPK_DIR).sort_values(["user_id", "rank"], ignore_index=True)
    users = pd.read_parquet(directory / USER_METRICS_DIR).sort_values("user_id", ignore_index=True)
    return topk, users, json.loads((directory / SUMMARY_JSON).read_text())


def versions(store: ObjectStore, prefix: str) -> set[str]:
    return {key[len(prefix):].split("/", 1)[0] for key in store.keys(prefix) if key[len(prefix):].startswith("v-")}


@pytest.fixture(scope="module")
def s3_study(two_nodes: TwoNodeCluster, object_store: ObjectStore) -> str:
    """studies/quickstart.yaml submitted to the two nodes with --storage s3://raycf/runs, seed repeats on the study's
    own split seed, then scored there."""
    output = raycf("tune", "studies/quickstart.yaml", "--submit", two_nodes.dashboard, "--storage",
                   object_store.uri("runs"), "--name", "cluster", "--repeat-seeds", "0", env=two_nodes.env).stdout
    assert "SUCCEEDED" in output
    run = object_store.uri("runs/cluster")
    assert "SUCCEEDED" in raycf("score", run, "--submit", two_nodes.dashboard, env=two_nodes.env).stdout
    return run


def test_study_on_s3_runs_on_both_nodes_and_is_scored_and_reported_from_s3(s3_study: str, two_nodes: TwoNodeCluster,
                                                                           object_store: ObjectStore) -> None:
    trials = pd.read_parquet(io.BytesIO(object_store.read(f"runs/cluster/{TRIALS_FILE}")))
    assert len(trials) == 10 and trials["error"].isna().all() and trials["node_id"].nunique() == 2
    assert trials["checkpoint"].str.startswith("run_trial_").all()  # relative: the run can move
    # each model's best trial that ended on its own is its seed-0 repeat, read from S3, not trained again
    repeats = pd.read_parquet(io.BytesIO(object_store.read(f"runs/cluster/{REPEATS_FILE}")))
    ended = trials[trials["stopped_by"] != "asha"].groupby("model")["valid_ndcg"].max()
    best = trials.groupby("model")["valid_ndcg"].max()
    assert list(repeats["from_trial"]) == [bool(ended.get(model) == best[model]) for model in repeats["model"]]
    assert repeats["from_trial"].any() and (repeats["train_seconds"] > 0).all()
    pointer = json.loads(object_store.read(f"runs/cluster/scores/{POINTER_FILE}"))
    assert versions(object_store, "runs/cluster/scores/") == {pointer["version"]}
    summary = json.loads(object_store.read(f"runs/cluster/scores/{pointer['version']}/{SUMMARY_JSON}"))
    raycf("report", s3_study, env=two_nodes.env)
    report = object_store.read(f"runs/cluster/{REPORT_MD}").decode()
    assert f"| {summary['ndcg']:.4f} |" in report and object_store.keys(f"runs/cluster/{REPORT_HTML}")


def test_a_run_copied_from_s3_scores_and_reports_locally_the_same(s3_study: str, two_nodes: TwoNodeCluster,
                                                                  object_store: ObjectStore, tmp_path: Path) -> None:
    local = tmp_path / "copy"
    download(object_store, "runs/cluster/", local)
    for key in object_store.keys("runs/cluster/"):  # the original is gone: nothing may point back at it
        object_store.client().delete_object(Bucket=object_store.bucket, Key=key)
    study = load_study(ROOT / "studies" / "quickstart.yaml")
    split = prepare_split(study.data, study.fractions, study.seed)
    manifest = json.loads((local / SPLIT_DIR / "manifest.json").read_text())
    assert manifest["split_sha256"] == split.manifest["split_sha256"]  # the same split as a local one
    env = {key: value for key, value in two_nodes.env.items() if not key.startswith("AWS_")}  # no S3 at all
    raycf("score", str(local), "--out", str(tmp_path / "scores"), "--address", two_nodes.gcs, env=env)
    s3_topk, s3_users, s3_summary = scores_of(local / "scores")
    topk, users, summary = scores_of(tmp_path / "scores")
    pd.testing.assert_frame_equal(topk, s3_topk)
    pd.testing.assert_frame_equal(users, s3_users)
    assert {name: summary[name] for name in METRICS} == {name: s3_summary[name] for name in METRICS}
    assert summary["trial_id"] == json.loads((local / BEST_FILE).read_text())["trial_id"]
    raycf("report", str(local), env=env)
    assert f"| {s3_summary['ndcg']:.4f} |" in (local / REPORT_MD).read_text()


@pytest.fixture(scope="module")
def s3_train_run(two_nodes: TwoNodeCluster, object_store: ObjectStore, tmp_path_factory) -> str:
    """`raycf train --out s3://...` of 3,000 synthetic users (no Ray), committed through its pointer."""
    ratings = tmp_path_factory.mktemp("ratings") / "ratings.csv"
    generate_synthetic(n_users=3000, n_items=80, mean_interactions=20, min_interactions=10).to_csv(ratings, index=False)
    run = object_store.uri("train/run")
    raycf("train", "--model", "autorec", "--hidden", "8", "--max-epochs", "1", "--ratings", str(ratings), "--out", run,
          "--quiet", env=two_nodes.env)
    return run


def test_train_writes_one_version_behind_a_pointer(s3_train_run: str, object_store: ObjectStore) -> None:
    (version,) = versions(object_store, "train/run/")
    assert json.loads(object_store.read(f"train/run/{POINTER_FILE}")) == {"version": version}
    names = {key.rsplit("/", 1)[-1] for key in object_store.keys(f"train/run/{version}/")}
    assert {"checkpoint.pt", "metrics.json", "manifest.json", "train.parquet"} <= names


def test_scoring_killed_mid_write_leaves_the_previous_output_whole(s3_train_run: str, two_nodes: TwoNodeCluster,
                                                                   object_store: ObjectStore) -> None:
    out = object_store.uri("train/scores")
    raycf("score", s3_train_run, "--out", out, "--k", "4", "--address", two_nodes.gcs, env=two_nodes.env)
    before = object_store.keys("train/scores/")
    (old,) = versions(object_store, "train/scores/")
    killed = subprocess.Popen([*RAYCF, "score", s3_train_run, "--out", out, "--actors", "1", "--batch-size", "8",
                               "--address", two_nodes.gcs], cwd=ROOT, env=two_nodes.env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: len(versions(object_store, "train/scores/")) == 2, 120, "the second scoring's version")
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    (orphan,) = versions(object_store, "train/scores/") - {old}
    after = object_store.keys("train/scores/")
    # pointer and old version as they were
    assert {key: tag for key, tag in after.items() if orphan not in key} == before
    parts = [key for key in after if key.startswith(f"train/scores/{old}/{TOPK_DIR}/") and key.endswith(".parquet")]
    topk = pd.concat([pd.read_parquet(io.BytesIO(object_store.read(key))) for key in parts])
    assert set(topk["rank"]) == {1, 2, 3, 4} and topk["user_id"].nunique() == 3000  # the previous output, whole
    raycf("score", s3_train_run, "--out", out, "--address", two_nodes.gcs, env=two_nodes.env)
    (new,) = versions(object_store, "train/scores/")  # the killed run's leftovers went with the old version
    assert new != old and json.loads(object_store.read(f"train/scores/{POINTER_FILE}"))["version"] == new


def test_resume_continues_a_study_from_s3(two_nodes: TwoNodeCluster, object_store: ObjectStore,
                                          tmp_path: Path) -> None:
    study = tmp_path / "long.yaml"
    text = (ROOT / "studies" / "quickstart.yaml").read_text()
    for old, new in (("{n_users: 600, n_items: 200}", "{n_users: 3000, n_items: 300}"), ("type: asha", "type: fifo"),
                     ("max_t: 30", "max_t: 150"), ("  grace_period: 3\n  reduction_factor: 3\n", ""),
                     ("patience: 10", "patience: 150")):
        assert old in text, old
        text = text.replace(old, new)
    study.write_text(text)  # the quickstart's trials, each running 150 epochs: the kill finds them mid-run
    driver = subprocess.Popen([*RAYCF, "tune", str(study), "--storage", object_store.uri("runs"), "--name", "resumed",
                               "--address", two_nodes.gcs, "--max-concurrent", "2"],
                              cwd=ROOT, env=two_nodes.env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def results() -> dict[str, list[dict]]:
        """Each trial's result.json rows as stored on S3, by trial id."""
        rows = {}
        for key in object_store.keys("runs/resumed/"):
            if key.endswith("/result.json"):
                lines = object_store.read(key).decode().splitlines()
                trial = [json.loads(line) for line in lines if line.strip()]
                if trial:  # a trial Tune has just created has an empty file
                    rows[trial[0]["trial_id"]] = trial
        return rows

    def held() -> dict[str, int | None]:
        """The epoch of each trial's checkpoint in Tune's latest experiment state on S3 (what a resume
        starts from); None where that checkpoint is gone."""
        from ray.tune.experiment import Trial

        states = sorted(key for key in object_store.keys("runs/resumed/experiment_state-"))
        if not states:
            return {}
        epochs = {}
        for trial_json, run_metadata in json.loads(object_store.read(states[-1]))["trial_data"]:
            trial = Trial.from_json_state(trial_json, stub=True)
            trial.restore_run_metadata(run_metadata)
            key = None if trial.checkpoint is None else f"{trial.checkpoint.path.split('/', 1)[1]}/trainer.pt"
            if key is not None:
                epochs[trial.trial_id] = (torch.load(io.BytesIO(object_store.read(key)), weights_only=True)["epoch"]
                                          if object_store.keys(key) else None)
        return epochs

    wait_until(lambda: any(epoch is not None for epoch in held().values()), 180,
               "a trial checkpoint in Tune's experiment state on S3")
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    killed_at = time.time()
    checkpoints = held()
    assert not object_store.keys(f"runs/resumed/{TRIALS_FILE}"), "the study ended before the driver was killed"
    raycf("tune", "--resume", object_store.uri("runs/resumed"), "--address", two_nodes.gcs, env=two_nodes.env)
    trials = pd.read_parquet(io.BytesIO(object_store.read(f"runs/resumed/{TRIALS_FILE}")))
    # No checkpoint that the saved state names is ever deleted (raycf.tune.checkpoints; README, Faults)
    assert all(epoch is not None for epoch in checkpoints.values()), checkpoints
    assert len(trials) == 10 and trials["error"].isna().all(), trials["error"].dropna().tolist()
    for checkpoint in trials["checkpoint"]:  # pruned on S3 too: one checkpoint per trial, the one recorded
        trial_dir, kept = Path(checkpoint).parent.parent.name, Path(checkpoint).parent.name
        assert {key.split("/")[3] for key in object_store.keys(f"runs/resumed/{trial_dir}/checkpoint_")} == {kept}
    after = results()
    continued = 0
    for trial_id, epoch in checkpoints.items():  # a trial held with a checkpoint goes on right after it
        if epoch is None:
            continue
        # Rows of the killed run may reach S3 late (with the resumed driver's first upload); the resumed
        # run's rows come seconds after the kill (result timestamps are whole seconds).
        new = [row["epoch"] for row in after[trial_id] if row["timestamp"] > killed_at + 1]
        assert not new or new[0] == epoch + 1, (trial_id, epoch, [row["epoch"] for row in after[trial_id]])
        continued += bool(new)
    assert continued >= 1, "no trial was continued"


@pytest.mark.parametrize(
    ("command", "env_change", "expected"),
    [
        (["tune", "studies/quickstart.yaml", "--storage", "s3://no-such-bucket/runs"], {},
         "s3://no-such-bucket/runs: bucket 'no-such-bucket' does not exist"),
        (["score", "s3://raycf/nothing"], {"AWS_SECRET_ACCESS_KEY": "wrong"}, "the credentials were refused"),
        (["train", "--model", "autorec", "--out", "s3://raycf/new"],
         {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None}, "no credentials found"),
        (["report", "s3://raycf/runs/x"], {"AWS_ENDPOINT_URL": "http://127.0.0.1:9"},
         "cannot reach the object store at http://127.0.0.1:9"),
    ],
    ids=["no-bucket", "wrong-credentials", "no-credentials", "unreachable-endpoint"],
)
def test_bad_object_store_is_one_line_and_exit_2_before_ray(object_store: ObjectStore, tmp_path: Path,
                                                            command: list[str], env_change: dict,
                                                            expected: str) -> None:
    env = {**os.environ, **object_store.env, "HOME": str(tmp_path)}
    for key, value in env_change.items():
        env.pop(key) if value is None else env.__setitem__(key, value)
    before = object_store.keys("")
    started = time.monotonic()
    done = subprocess.run([*RAYCF, *command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("raycf: error:") and expected in lines[0], done.stderr
    assert "Ray dashboard" not in done.stdout and time.monotonic() - started < 60
    assert object_store.keys("") == before  # nothing written
