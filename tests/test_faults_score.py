"""Faults injected for real while `raycf score` runs: a node lost, a full or unwritable disk, two runs into
one output, a killed driver. Every user is scored once, or the run fails with one line and nothing half
written: the previous output stays byte for byte, no staging directory or lock is left."""

from __future__ import annotations

import hashlib
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import ray
from conftest import run_raycf
from ray._private.state import actors

from raycf.data.source import load_split
from raycf.data.spec import DataSpec
from raycf.errors import RaycfError
from raycf.models.config import TrainConfig
from raycf.score.job import ScoreOptions, prepare_scoring, run_scoring
from raycf.train.trainer import run_training

USERS = 3000
FULL_DISK = (
    "import resource, runpy, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
    "limit = int(sys.argv.pop(1)); resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)); "
    "runpy.run_module('raycf', run_name='__main__')"
)
"""`python -c FULL_DISK BYTES score ...`: raycf score in a process that cannot grow a file past BYTES (writes
fail with EFBIG, as on a full disk, even as root). The child sets its own limit: this process runs Ray's
threads, which make a preexec_fn unsafe."""


@pytest.fixture(scope="module")
def scored_run(tmp_path_factory) -> Path:
    """A `raycf train` run of 3,000 synthetic users: checkpoint.pt and split/."""
    out = tmp_path_factory.mktemp("faults") / "run"
    data = DataSpec(synthetic={"n_users": USERS, "n_items": 80, "mean_interactions": 20, "min_interactions": 10})
    run_training(data, TrainConfig.for_model("autorec", hidden=8, max_epochs=1), fractions=(0.6, 0.2, 0.2),
                 mask="train", out=out)
    return out


@pytest.fixture(scope="module")
def previous(ray_cluster, scored_run, tmp_path_factory) -> Path:
    """A complete earlier output (k 4) of the run, to be left as it is by every failed run."""
    out = tmp_path_factory.mktemp("previous") / "scores"
    run_scoring(str(scored_run), ScoreOptions(out=str(out), k=4, actors=1, batch_size=512))
    return out


@pytest.fixture()
def add_node(session_cluster) -> Iterator[Callable[[int], Any]]:
    """Adds nodes of N CPUs to the session's cluster; those still there are removed after the test."""
    added = []

    def add(cpus: int) -> Any:
        added.append(session_cluster.add_node(num_cpus=cpus))
        session_cluster.wait_for_nodes()
        return added[-1]

    yield add
    for node in added:
        if node in session_cluster.worker_nodes:
            session_cluster.remove_node(node)


def scorers_on(node_id: str) -> list[dict[str, Any]]:
    """Live Scorer actors on that node, from the GCS actor table (the state API needs a dashboard)."""
    return [actor for actor in actors(actor_state_name="ALIVE").values()
            if "Scorer" in actor["ActorClassName"] and actor["Address"]["NodeID"] == node_id]


def in_thread(function: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """Start `function` in a daemon thread; the dict gets its `result` or `error`."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = function()
        except Exception as error:  # noqa: BLE001 - the test inspects it
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


def wait_until(condition: Callable[[], Any], seconds: float, running: threading.Thread | None = None) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert running is None or running.is_alive(), "the run ended before the fault could be injected"
        assert time.monotonic() < deadline, f"not within {seconds} s"
        time.sleep(0.1)


def digest(directory: Path) -> dict[str, str]:
    return {str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(directory.rglob("*")) if path.is_file()}


def every_user_once(out: Path, run: Path, k: int) -> None:
    users = sorted(load_split(run / "split").user_ids)
    metrics = pd.read_parquet(out / "user_metrics")
    topk = pd.read_parquet(out / "topk")
    assert metrics["user_id"].is_unique and sorted(metrics["user_id"]) == users
    assert (topk.groupby("user_id")["rank"].apply(sorted) == [list(range(1, k + 1))] * len(users)).all()


def nothing_left_beside(out: Path) -> None:
    assert sorted(path.name for path in out.parent.iterdir() if path.name.startswith(out.name)) == (
        [out.name] if out.exists() else [])


@pytest.fixture()
def address(ray_cluster) -> str:
    """The session cluster's address, for drivers in processes of their own."""
    return ray_cluster.get_runtime_context().gcs_address


def score_process(address: str, *args: str, limit: int | None = None) -> subprocess.Popen:
    """`raycf score ARGS` in a new process, a driver of its own on the cluster; `limit`: largest file size."""
    command = ["-m", "raycf"] if limit is None else ["-c", FULL_DISK, str(limit)]
    return subprocess.Popen([sys.executable, *command, "score", *args, "--address", address],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def one_line_error(stderr: str, expected: str) -> None:
    errors = [line for line in stderr.splitlines() if line.startswith("raycf: error:")]
    assert len(errors) == 1 and expected in errors[0], stderr[-3000:]


def test_node_removed_mid_run_its_actor_restarts_and_every_user_is_scored_once(session_cluster, add_node,
                                                                               scored_run, tmp_path) -> None:
    extra = add_node(1)
    out = tmp_path / "scores"
    job = prepare_scoring(str(scored_run), ScoreOptions(out=str(out), actors=3, batch_size=4))
    thread, outcome = in_thread(job.run)
    wait_until(lambda: scorers_on(extra.node_id) and list(tmp_path.glob("scores.tmp-*/topk/*")), 60, thread)
    [victim] = scorers_on(extra.node_id)
    session_cluster.remove_node(extra)  # graceful (SIGTERM), as when a cluster scales a node down
    thread.join(90)
    assert not thread.is_alive(), "scoring hangs after losing a node"
    assert "error" not in outcome, outcome.get("error")
    assert outcome["result"][1]["users_scored"] == USERS
    every_user_once(out, scored_run, 5)
    assert actors(victim["ActorID"])["NumRestarts"] >= 1  # started again on a CPU the pool freed
    nothing_left_beside(out)


def test_node_crash_leaving_no_room_for_the_actor_fails_in_bounded_time(session_cluster, add_node, scored_run,
                                                                        previous, tmp_path) -> None:
    big = add_node(2)  # the only node an actor of 2 CPUs fits on
    out = tmp_path / "scores"
    shutil.copytree(previous, out)
    before = digest(out)
    options = ScoreOptions(out=str(out), actors=1, cpus_per_actor=2, batch_size=4, stall_timeout_s=15)
    thread, outcome = in_thread(prepare_scoring(str(scored_run), options).run)
    wait_until(lambda: scorers_on(big.node_id) and list(tmp_path.glob("scores.tmp-*/topk/*")), 60, thread)
    crashed = time.monotonic()
    session_cluster.remove_node(big, allow_graceful=False)  # SIGKILL: a crash
    thread.join(60)
    assert not thread.is_alive(), "scoring hangs after losing a node"
    error = outcome.get("error")
    assert isinstance(error, RaycfError) and "made no progress for 15 s" in str(error), error
    assert time.monotonic() - crashed < 40
    assert digest(out) == before
    nothing_left_beside(out)
    wait_until(lambda: not any(scorers_on(node["NodeID"]) for node in ray.nodes()), 10)  # nothing left running


def test_disk_full_while_writing_is_one_line_and_the_previous_output_stays(address, scored_run, previous,
                                                                           tmp_path) -> None:
    out = tmp_path / "scores"
    shutil.copytree(previous, out)
    before = digest(out)
    scoring = score_process(address, str(scored_run), "--out", str(out), "--actors", "1", "--batch-size", "32",
                            limit=64 * 1024)
    _, stderr = scoring.communicate(timeout=120)
    assert scoring.returncode == 2, stderr[-3000:]
    one_line_error(stderr, f"{out}: cannot write the output (File too large)")
    assert digest(out) == before
    nothing_left_beside(out)


def test_output_location_that_cannot_be_created_is_refused_before_scoring(ray_cluster, scored_run, tmp_path,
                                                                          capsys) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    out = tmp_path / "a-file" / "scores"
    assert run_raycf("score", str(scored_run), "--out", str(out)) == 2
    one_line_error(capsys.readouterr().err, "cannot write the output there")
    assert [path.name for path in tmp_path.iterdir()] == ["a-file"]


def test_actors_the_cluster_cannot_start_are_refused_in_bounded_time(ray_cluster, scored_run, tmp_path,
                                                                     capsys) -> None:
    out = tmp_path / "scores"
    started = time.monotonic()
    assert run_raycf("score", str(scored_run), "--out", str(out), "--cpus-per-actor", "2", "--stall-timeout", "5") == 2
    one_line_error(capsys.readouterr().err, "could not start 2 scorer actors of 2 CPU")
    assert time.monotonic() - started < 60
    assert list(tmp_path.iterdir()) == []


def test_output_parent_nobody_may_write_is_refused(scored_run) -> None:
    """sysfs refuses new entries to every user, root included (permission bits would not stop root, as CI is)."""
    parent = Path("/sys")
    before = sorted(path.name for path in parent.iterdir())
    with pytest.raises(RaycfError, match=r"/sys/raycf-scores: cannot write the output there \(.*Permission denied"):
        prepare_scoring(str(scored_run), ScoreOptions(out=str(parent / "raycf-scores")))
    assert sorted(path.name for path in parent.iterdir()) == before


def test_second_run_into_the_same_output_is_refused_and_the_first_wins_whole(address, scored_run, previous,
                                                                             tmp_path) -> None:
    out = tmp_path / "scores"
    shutil.copytree(previous, out)
    first = score_process(address, str(scored_run), "--out", str(out), "--actors", "1", "--batch-size", "8")
    wait_until(lambda: list(tmp_path.glob("scores.tmp-*")), 60)
    second = score_process(address, str(scored_run), "--out", str(out), "--k", "3")
    _, second_err = second.communicate(timeout=120)
    _, first_err = first.communicate(timeout=120)
    assert (first.returncode, second.returncode) == (0, 2), first_err[-3000:]
    one_line_error(second_err, f"pid {first.pid} on {socket.gethostname()} is writing it now (lock file {out}.lock)")
    every_user_once(out, scored_run, 5)
    nothing_left_beside(out)


def test_killed_driver_leaves_the_previous_output_and_the_next_run_takes_over_its_lock(address, scored_run,
                                                                                       previous, tmp_path) -> None:
    out = tmp_path / "scores"
    shutil.copytree(previous, out)
    before = digest(out)
    killed = score_process(address, str(scored_run), "--out", str(out), "--actors", "1", "--batch-size", "8")
    wait_until(lambda: list(tmp_path.glob("scores.tmp-*")), 60)  # locked and staged: the job is under way
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert digest(out) == before
    assert (tmp_path / "scores.lock").exists() and list(tmp_path.glob("scores.tmp-*"))
    prepare_scoring(str(scored_run), ScoreOptions(out=str(out))).release()  # takes the lock over, clears
    assert digest(out) == before
    nothing_left_beside(out)


def test_checks_run_before_any_ray_call(scored_run, tmp_path) -> None:
    check = (
        "import sys, ray; from raycf.score.job import ScoreOptions, prepare_scoring; "
        "job = prepare_scoring(sys.argv[1], ScoreOptions(out=sys.argv[2])); "
        "assert not ray.is_initialized(); job.release()"
    )
    subprocess.run([sys.executable, "-c", check, str(scored_run), str(tmp_path / "scores")], check=True,
                   timeout=60)
    assert not list(tmp_path.iterdir())
