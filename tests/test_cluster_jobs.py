"""A real two-node Ray cluster on loopback: `ray start --head` and `ray start --address`, 1 CPU each.

`raycf tune --submit` and `raycf score --submit` run as Ray Jobs on it, their trials and scorers land on
both nodes, the outputs equal a one-node run's under the same seed, a node's Prometheus endpoint serves
raycf's metrics while the study runs, and a directory one node cannot see is refused as --storage.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from conftest import TwoNodeCluster, free_ports

from raycf.score.job import SUMMARY_JSON, TOPK_DIR
from raycf.tune.driver import SPLIT_DIR, TRIALS_FILE

ROOT = Path(__file__).resolve().parents[1]
RAYCF = [sys.executable, "-m", "raycf"]
SCORE_METRICS = ("ray_raycf_users_scored_total", "ray_raycf_users_per_second")
STUDY_METRICS = ("ray_raycf_trials_running", "ray_raycf_best_valid_metric", "ray_raycf_epochs_per_second")


def raycf(*args: str, env: dict[str, str] | None = None, timeout: float = 400) -> subprocess.CompletedProcess:
    done = subprocess.run([*RAYCF, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def scrape(urls: list[str]) -> set[str]:
    """The metric names the nodes' Prometheus endpoints serve now."""
    names = set()
    for url in urls:
        try:
            text = urllib.request.urlopen(url, timeout=3).read().decode()
        except OSError:
            continue
        names.update(line.split("{")[0].split(" ")[0] for line in text.splitlines() if line.startswith("ray_raycf"))
    return names


@dataclass
class ClusterRun:
    run_dir: Path
    output: str
    metrics_seen: set[str]


def run_while_scraping(cluster: TwoNodeCluster, *args: str) -> tuple[str, set[str]]:
    """Run `raycf ARGS` (a submission) while polling the nodes' metrics endpoints every second."""
    seen: set[str] = set()
    running = threading.Event()
    running.set()

    def poll() -> None:
        while running.is_set():
            seen.update(scrape(cluster.metrics))
            time.sleep(1)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        done = raycf(*args, env=cluster.env)
    finally:
        running.clear()
        poller.join()
    return done.stdout, seen


@pytest.fixture(scope="module")
def submitted_study(two_nodes: TwoNodeCluster) -> ClusterRun:
    """studies/quickstart.yaml sent with --submit, the nodes' metrics endpoints polled while it runs."""
    output, seen = run_while_scraping(two_nodes, "tune", "studies/quickstart.yaml", "--submit", two_nodes.dashboard,
                                      "--storage", str(two_nodes.base / "shared"), "--name", "cluster")
    return ClusterRun(two_nodes.base / "shared" / "cluster", output, seen)


def test_submitted_study_runs_as_a_job_on_both_nodes(two_nodes: TwoNodeCluster, submitted_study: ClusterRun) -> None:
    assert "submitted Ray job raysubmit_" in submitted_study.output
    assert f"{two_nodes.dashboard}/#/jobs/raysubmit_" in submitted_study.output
    assert "SUCCEEDED" in submitted_study.output
    trials = pd.read_parquet(submitted_study.run_dir / TRIALS_FILE)
    assert len(trials) == 10 and trials["error"].isna().all()
    assert trials["node_id"].nunique() == 2


def test_node_metrics_endpoint_serves_raycf_metrics_while_a_study_runs(submitted_study: ClusterRun) -> None:
    assert set(STUDY_METRICS) <= submitted_study.metrics_seen, submitted_study.metrics_seen


def result_rows(trial_dir: Path) -> pd.DataFrame:
    return pd.read_json(trial_dir / "result.json", lines=True)[["epoch", "valid_ndcg"]]


def test_cluster_outputs_equal_a_one_node_run(two_nodes: TwoNodeCluster, submitted_study: ClusterRun,
                                              tmp_path: Path) -> None:
    local_env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    done = raycf("tune", "studies/quickstart.yaml", "--storage", str(tmp_path), "--name", "single", env=local_env)
    assert "Ray dashboard: http://127.0.0.1:" in done.stdout  # the local Ray raycf starts listens on loopback
    single, cluster = tmp_path / "single", submitted_study.run_dir
    for part in sorted((single / SPLIT_DIR).iterdir()):  # the same split, byte for byte
        assert part.read_bytes() == (cluster / SPLIT_DIR / part.name).read_bytes(), part.name
    single_trials = pd.read_parquet(single / TRIALS_FILE).set_index("config")
    cluster_trials = pd.read_parquet(cluster / TRIALS_FILE).set_index("config")
    assert sorted(single_trials.index) == sorted(cluster_trials.index)
    for config, row in single_trials.iterrows():  # every epoch both ran gave the same validation NDCG
        other = cluster_trials.loc[config]
        mine, theirs = (result_rows((run / r["checkpoint"]).parents[1]) for run, r in ((single, row), (cluster, other)))
        common = min(len(mine), len(theirs))
        assert common >= 1
        pd.testing.assert_frame_equal(mine.head(common), theirs.head(common))
    # Score one configuration that ran the same epochs on both (ASHA's stops depend on timing).
    same = [config for config in single_trials.index
            if single_trials.loc[config, "epochs_run"] == cluster_trials.loc[config, "epochs_run"]]
    config = max(same, key=lambda c: single_trials.loc[c, "valid_ndcg"])
    outputs = {}
    for name, run, trials in (("single", single, single_trials), ("cluster", cluster, cluster_trials)):
        checkpoint_dir = str((run / trials.loc[config, "checkpoint"]).parent)
        out = two_nodes.base / "shared" / f"scores-{name}"
        if name == "cluster":
            output, seen = run_while_scraping(two_nodes, "score", checkpoint_dir, "--out", str(out), "--batch-size",
                                              "100", "--submit", two_nodes.dashboard)
            assert "SUCCEEDED" in output
            assert set(SCORE_METRICS) <= seen, seen
        else:
            raycf("score", checkpoint_dir, "--out", str(out), "--batch-size", "100", env=local_env)
        outputs[name] = out
    summaries = {name: json.loads((out / SUMMARY_JSON).read_text()) for name, out in outputs.items()}
    assert len(summaries["cluster"]["nodes"]) == 2
    for metric in ("precision", "recall", "ndcg", "mrr", "users_scored"):
        assert summaries["single"][metric] == summaries["cluster"][metric]
    topk = {name: pd.read_parquet(out / TOPK_DIR).sort_values(["user_id", "rank"]).reset_index(drop=True)
            for name, out in outputs.items()}
    pd.testing.assert_frame_equal(topk["single"], topk["cluster"])


def test_a_directory_one_node_cannot_see_is_refused_as_storage(two_nodes: TwoNodeCluster) -> None:
    if two_nodes.private is None:
        pytest.skip("needs `unshare --mount` (root) to give the worker node a directory the head cannot share")
    started = time.monotonic()
    done = subprocess.run([*RAYCF, "tune", "studies/quickstart.yaml", "--address", two_nodes.gcs,
                           "--storage", str(two_nodes.private), "--name", "refused"],
                          cwd=ROOT, env=two_nodes.env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and str(two_nodes.private) in lines[0] and "cannot see it" in lines[0]
    assert not (two_nodes.private / "refused").exists()
    assert time.monotonic() - started < 60


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--submit", "http://127.0.0.1:{port}"], "cannot reach"),
        (["--submit", "127.0.0.1:8265"], "http://HEAD:8265"),
        (["--submit", "http://127.0.0.1:{port}", "--storage", "runs"], "absolute path on shared storage"),
        (["--no-wait"], "--submit"),
    ],
)
def test_bad_submission_is_one_line_and_exit_2_within_seconds(args: list[str], expected: str) -> None:
    port = free_ports(1)[0]
    storage = [] if "--storage" in args else ["--storage", "/tmp/raycf-never-written"]
    started = time.monotonic()
    done = subprocess.run([*RAYCF, "tune", "studies/quickstart.yaml", *storage,
                           *(arg.format(port=port) for arg in args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("raycf: error:") and expected in lines[0], done.stderr
    assert time.monotonic() - started < 15
    assert not Path("/tmp/raycf-never-written").exists()


STATUS = ("import sys; from ray.job_submission import JobSubmissionClient; "
          "print(JobSubmissionClient(sys.argv[1]).get_job_status(sys.argv[2]))")


def wait_for_job(cluster: TwoNodeCluster, job_id: str, seconds: float = 240) -> str:
    """The job's final status (SUCCEEDED, FAILED or STOPPED), asked of the job server with the token."""
    deadline = time.monotonic() + seconds
    while True:
        done = subprocess.run([sys.executable, "-c", STATUS, cluster.dashboard, job_id], env=cluster.env,
                              capture_output=True, text=True, timeout=60, check=True)
        status = done.stdout.strip()
        if status in ("SUCCEEDED", "FAILED", "STOPPED") or time.monotonic() > deadline:
            return status
        time.sleep(2)


def job_id_in(output: str) -> str:
    return next(word for word in output.split() if word.startswith("raysubmit_"))


def test_a_submission_without_the_clusters_token_is_one_line(two_nodes: TwoNodeCluster) -> None:
    env = {key: value for key, value in two_nodes.env.items() if not key.startswith("RAY_AUTH")}
    done = subprocess.run([*RAYCF, "tune", "studies/quickstart.yaml", "--submit", two_nodes.dashboard, "--storage",
                           str(two_nodes.base / "shared")], cwd=ROOT, env={**env, "HOME": str(two_nodes.base)},
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "auth token" in lines[0], done.stderr


def test_ctrl_c_detaches_and_no_wait_returns_at_once_while_the_jobs_go_on(two_nodes: TwoNodeCluster,
                                                                          submitted_study: ClusterRun) -> None:
    follower = subprocess.Popen([*RAYCF, "tune", "studies/quickstart.yaml", "--submit", two_nodes.dashboard,
                                 "--storage", str(two_nodes.base / "shared"), "--name", "detached"],
                                cwd=ROOT, env=two_nodes.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
    first = follower.stdout.readline()
    while first and not first.startswith("submitted Ray job raysubmit_"):
        first = follower.stdout.readline()
    time.sleep(3)
    follower.send_signal(signal.SIGINT)
    rest, _ = follower.communicate(timeout=30)
    assert follower.returncode == 0 and "detached" in rest
    started = time.monotonic()
    done = raycf("score", str(submitted_study.run_dir), "--out", str(two_nodes.base / "shared" / "no-wait"),
                 "--submit", two_nodes.dashboard, "--no-wait", env=two_nodes.env)
    assert time.monotonic() - started < 20 and "ray job logs --follow" in done.stdout
    assert wait_for_job(two_nodes, job_id_in(first)) == "SUCCEEDED"  # Ctrl-C did not stop the study
    assert (two_nodes.base / "shared" / "detached" / TRIALS_FILE).is_file()
    assert wait_for_job(two_nodes, job_id_in(done.stdout)) == "SUCCEEDED"
    assert (two_nodes.base / "shared" / "no-wait" / SUMMARY_JSON).is_file()
