"""Faults in a `raycf tune` study on a real Ray: killed trial workers, a killed driver, lost trial endings.

Each trial's `result.json` (one row per reported epoch: `epoch`, `pid`, `checkpoint_dir_name`) is the
record of what ran where; the assertions compare it before and after each fault.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from conftest import load_checkpoint, run_raycf

from raycf.data.source import load_split
from raycf.models.config import TrainConfig
from raycf.runs.layout import BEST_FILE
from raycf.runs.record import StudyRecord
from raycf.storage.location import Location
from raycf.train.trainer import Trainer
from raycf.tune.checkpoints import KILL_DRIVER_ENV
from raycf.tune.driver import (
    ENDED_FILE,
    MODEL_FILE,
    SPLIT_DIR,
    STATE_FILE,
    TRIALS_FILE,
    restore_trial_checkpoint,
    trainable_for,
    write_results,
    write_trial_checkpoint,
)

Row = dict[str, Any]
CHECKPOINT_EVERY = 4

# Epochs of about 0.1 s (2,000 users x 400 items), so that a kill lands mid-epoch and mid-trial.
FAULT_STUDY = """
name: faults
seed: 0
data:
  dataset: synthetic
  synthetic: {{n_users: 2000, n_items: 400}}
scheduler: {{type: fifo, max_t: {max_t}}}
resources: {{cpus_per_trial: 1}}
max_failures: 2
checkpoint_every: {checkpoint_every}
models:
  multvae:
    fixed: {{hidden: 32, lr: 1.0e-2}}
    search:
      patience: {{grid: {patiences}}}
  autorec:
    fixed: {{hidden: 32, lr: 1.0e-2, patience: {max_t}}}
"""


def write_study(tmp_path: Path, max_t: int, patiences: list[int], checkpoint_every: int | None = None) -> Path:
    path = tmp_path / "faults.yaml"
    every = "null" if checkpoint_every is None else checkpoint_every
    path.write_text(FAULT_STUDY.format(max_t=max_t, patiences=patiences, checkpoint_every=every))
    return path


def result_rows(trial_dir: Path) -> list[Row]:
    """The trial's reported epochs as the run directory holds them now. A line being written is left out; a line
    that a killed driver's upload cut short, and a resumed driver appended to, gives the appended result."""
    path = trial_dir / "result.json"
    rows = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        row = last_whole_result(line)
        if row is not None:
            rows.append(row)
    return rows


def last_whole_result(line: str) -> Row | None:
    """The result a line holds, or the one that makes up its end after a cut-short one; None for neither."""
    for start in (index for index, char in enumerate(line) if char == "{"):
        try:
            row = json.loads(line[start:])
        except json.JSONDecodeError:
            continue
        return row if "trial_id" in row else None
    return None


def all_rows(run_dir: Path) -> dict[str, list[Row]]:
    return {trial_dir.name: result_rows(trial_dir) for trial_dir in sorted(run_dir.glob("run_trial_*"))}


def ended(rows: list[Row]) -> bool:
    """Whether these rows are a whole trial: Tune stopped it (done) or it met its own end."""
    last, config = rows[-1], rows[-1]["config"]["trial"]
    return bool(last["done"]) or last["epoch"] >= config["max_epochs"] or (
        last["epoch"] - last["best_epoch"] >= config["patience"])


def tune_state(run_dir: Path) -> dict[str, tuple[str, int | None]]:
    """Per trial id, what Tune's latest saved experiment state (what a resume starts from) holds: the status,
    and the epoch of the trial's checkpoint (None without one)."""
    from ray.tune.experiment import Trial

    state = json.loads(max(run_dir.glob("experiment_state-*.json")).read_text())
    held = {}
    for trial_json, run_metadata in state["trial_data"]:
        trial = Trial.from_json_state(trial_json, stub=True)
        trial.restore_run_metadata(run_metadata)
        epoch = None
        if trial.checkpoint is not None:
            epoch = torch.load(Path(trial.checkpoint.path) / STATE_FILE, weights_only=True)["epoch"]
        held[trial.trial_id] = (json.loads(trial_json)["status"], epoch)
    return held


def test_trial_checkpoint_keeps_the_best_weights_and_a_finished_trainer_stays_finished(small_split, tmp_path):
    config = TrainConfig.for_model("multvae", hidden=16, lr=1e-2, max_epochs=40, patience=3, seed=0)
    trainer = Trainer(small_split, config)
    while not trainer.finished:
        report = trainer.run_epoch()
        if report.improved:  # a mid-run checkpoint: the run continues from it exactly
            write_trial_checkpoint(trainer, tmp_path)
            resumed = Trainer(small_split, config)
            restore_trial_checkpoint(resumed, tmp_path)
            assert resumed.run_epoch().loss == trainer.run_epoch().loss
    assert trainer.epoch > trainer.best_epoch  # the last epochs did not improve
    write_trial_checkpoint(trainer, tmp_path)
    model, meta = load_checkpoint(tmp_path / MODEL_FILE)
    assert meta["epoch"] == trainer.best_epoch
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, trainer.best_state[name].cpu())
    restored = Trainer(small_split, config)
    restore_trial_checkpoint(restored, tmp_path)
    assert restored.finished and (restored.epoch, restored.best_epoch) == (trainer.epoch, trainer.best_epoch)
    for name, tensor in restored.model.state_dict().items():
        assert torch.equal(tensor, trainer.model.state_dict()[name])


def kill_workers(run_dir: Path, model: str, at_epochs: list[int], killed: list[Row], stop: threading.Event) -> None:
    """SIGKILL the worker of the `model` trial once it has reported `at_epochs[k]` epochs, for each k in turn;
    the trial has a checkpoint by then (epoch 1 always improves) and is mid-epoch."""
    while len(killed) < len(at_epochs) and not stop.is_set():
        for rows in all_rows(run_dir).values():
            if not rows or rows[0]["model"] != model:
                continue
            live = [row for row in rows if row["pid"] not in {old["pid"] for old in killed}]
            if live and live[-1]["epoch"] >= at_epochs[len(killed)]:
                os.kill(live[-1]["pid"], signal.SIGKILL)
                killed.append(live[-1])
        time.sleep(0.05)


def test_killed_trial_worker_is_retried_from_its_last_checkpoint(ray_cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "0.2")  # result.json in the run directory lags 0.2 s at most
    study = write_study(tmp_path, max_t=40, patiences=[40], checkpoint_every=CHECKPOINT_EVERY)
    run_dir = tmp_path / "run"
    killed: list[Row] = []
    stop = threading.Event()
    killer = threading.Thread(target=kill_workers, args=(run_dir, "multvae", [3, 14], killed, stop), daemon=True)
    killer.start()
    try:
        assert run_raycf("tune", str(study), "--storage", str(tmp_path), "--name", "run") == 0
    finally:
        stop.set()
        killer.join()
    assert len(killed) == 2, "the trial ended before both faults were injected"
    trials = pd.read_parquet(run_dir / TRIALS_FILE).set_index("model")
    assert trials["error"].isna().all() and (trials["epochs_run"] == 40).all()
    assert trials.loc["multvae", "retries"] == 2 and trials.loc["autorec", "retries"] == 0
    assert json.loads((run_dir / BEST_FILE).read_text())["retries"] == 2
    rows = result_rows(run_dir / Path(trials.loc["multvae", "checkpoint"]).parent.parent.name)
    pids = list(dict.fromkeys(row["pid"] for row in rows))
    assert pids[:2] == [row["pid"] for row in killed] and len(pids) == 3
    rerun = 0
    for pid in pids[1:]:  # each new worker starts right after the last checkpoint its predecessors reported
        start = next(index for index, row in enumerate(rows) if row["pid"] == pid)
        restored, killed_after = rows[start]["epoch"] - 1, rows[start - 1]
        checkpointed = [row["epoch"] for row in rows[:start] if row["checkpoint_dir_name"]]
        # Tune saves a reported checkpoint in a second call to the worker: a kill between the two loses it
        lost_save = killed_after["checkpoint_dir_name"] is not None and restored == checkpointed[-2:][0]
        assert restored == checkpointed[-1] or lost_save, (restored, checkpointed)
        assert killed_after["epoch"] - restored <= CHECKPOINT_EVERY  # regular checkpoints bound what is redone
        rerun += killed_after["epoch"] - restored
    assert [row["epoch"] for row in rows if row["pid"] == pids[-1]][-1] == 40
    print(f"\nworker kills at epochs {[row['epoch'] for row in killed]}, resumed at "
          f"{[next(row['epoch'] for row in rows if row['pid'] == pid) for pid in pids[1:]]}; faults injected 2, "
          f"survived 2; reported epochs trained again after the kills {rerun}")


def start_driver(ray_cluster, study: Path, tmp_path: Path) -> subprocess.Popen:
    """`raycf tune STUDY` as its own process group on the session's cluster, writing tmp_path/run."""
    return subprocess.Popen(
        [sys.executable, "-m", "raycf", "tune", str(study), "--storage", str(tmp_path), "--name", "run",
         "--address", ray_cluster.get_runtime_context().gcs_address],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )


def kill_driver(ray_cluster, driver: subprocess.Popen) -> float:
    """SIGKILL the driver and anything it started, wait until Ray has ended its trials; the time of the kill."""
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    killed_at = time.time()
    wait_for_trials_to_end(ray_cluster)
    return killed_at


def wait_for_trials_to_end(ray_cluster) -> None:
    """Ray ends a dead driver's trial actors: wait for their CPUs back."""
    deadline = time.monotonic() + 60
    while ray_cluster.available_resources().get("CPU", 0) < ray_cluster.cluster_resources()["CPU"]:
        assert time.monotonic() < deadline, "the killed driver's trials still hold their CPUs after 60 s"
        time.sleep(0.1)


def test_killed_driver_resumes_without_losing_or_repeating_epochs(ray_cluster, tmp_path, monkeypatch):
    # Mult-VAE with patience 3 ends early while its patience-40 twin runs on without checkpoints (its best
    # epoch is long past). Tune saves its experiment state (and uploads result.json) every 0.5 s here, not
    # every 10 s, so that the kill comes while the twin runs; a driver killed right after the first trial's
    # end can still find it recorded as running.
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "0.5")
    study = write_study(tmp_path, max_t=40, patiences=[3, 40])
    run_dir = tmp_path / "run"
    driver = start_driver(ray_cluster, study, tmp_path)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # kill once a trial has ended and another one is mid-run
        states = [ended(rows) for rows in all_rows(run_dir).values() if rows]
        if any(states) and not all(states):
            break
        time.sleep(0.05)
    killed_at = kill_driver(ray_cluster, driver)
    assert not (run_dir / TRIALS_FILE).exists(), "the study finished before it could be interrupted"
    stored = all_rows(run_dir)
    held = tune_state(run_dir)
    assert run_raycf("tune", "--resume", str(run_dir)) == 0
    trials = pd.read_parquet(run_dir / TRIALS_FILE)
    assert len(trials) == 3 and trials["error"].isna().all() and (trials["retries"] == 0).all(), trials.to_dict()
    assert json.loads((run_dir / BEST_FILE).read_text())["retries"] == 0
    outcomes = {"ended before the kill": 0, "of them, held as running by Tune": 0, "interrupted": 0,
                "not started": 0}
    rerun = 0
    for name, rows in all_rows(run_dir).items():
        assert rows[: len(stored.get(name, []))] == stored.get(name, [])  # nothing stored before the kill is lost
        old = [row for row in rows if row["timestamp"] <= killed_at]  # what the killed driver recorded
        new = rows[len(old):]
        assert all(row["timestamp"] > killed_at for row in new)
        status, checkpointed = held[rows[0]["trial_id"]]
        if old and ended(old):
            outcomes["ended before the kill"] += 1
            outcomes["of them, held as running by Tune"] += status != "TERMINATED"
            assert new == [], f"{name} trained again after it had ended"
        elif old:
            outcomes["interrupted"] += 1
            assert checkpointed is not None and new[0]["epoch"] == checkpointed + 1, (
                f"{name} did not continue from its last checkpoint ({checkpointed}): {[row['epoch'] for row in rows]}")
            rerun += old[-1]["epoch"] - checkpointed
        else:
            outcomes["not started"] += 1
            assert new[0]["epoch"] == 1
        assert ended(rows)
    assert outcomes["ended before the kill"] >= 1 and outcomes["interrupted"] >= 1, outcomes
    print(f"\ndriver killed once; trials {outcomes}; reported epochs trained again after the kill {rerun}")


def test_a_retry_before_the_driver_is_killed_is_still_counted_after_resume(ray_cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "0.5")  # result.json in the run directory lags 0.5 s at most
    study = write_study(tmp_path, max_t=40, patiences=[40], checkpoint_every=CHECKPOINT_EVERY)
    run_dir = tmp_path / "run"
    driver = start_driver(ray_cluster, study, tmp_path)
    killed: list[Row] = []
    stop = threading.Event()
    killer = threading.Thread(target=kill_workers, args=(run_dir, "multvae", [3], killed, stop), daemon=True)
    killer.start()
    killer.join(timeout=120)
    stop.set()
    assert len(killed) == 1, "the Mult-VAE trial's worker was not killed"

    def retried_epoch() -> int:
        rows = next((rows for rows in all_rows(run_dir).values() if rows and rows[0]["model"] == "multvae"), [])
        return max((row["epoch"] for row in rows if row["pid"] != killed[0]["pid"]), default=0)

    deadline = time.monotonic() + 120  # the retried worker gets past two regular checkpoints: Tune saved its state
    while retried_epoch() < killed[0]["epoch"] + 2 * CHECKPOINT_EVERY:
        assert time.monotonic() < deadline, "the retried trial did not get far enough"
        time.sleep(0.05)
    kill_driver(ray_cluster, driver)
    assert not (run_dir / TRIALS_FILE).exists(), "the study finished before the driver could be killed"
    assert run_raycf("tune", "--resume", str(run_dir)) == 0
    trials = pd.read_parquet(run_dir / TRIALS_FILE).set_index("model")
    assert trials["error"].isna().all() and (trials["epochs_run"] == 40).all()
    assert trials.loc["multvae", "retries"] == 1 and trials.loc["autorec", "retries"] == 0, trials["retries"]
    best = json.loads((run_dir / BEST_FILE).read_text())
    assert best["retries"] == trials.loc[best["model"], "retries"]


def test_trials_restored_after_their_end_do_not_train_again(ray_cluster, tiny_study, tmp_path):
    """Tune keeps trial endings in an experiment state saved every few seconds: a driver killed right after a
    trial ended can restore it as unfinished. Here every ended trial is restored that way, on purpose."""
    from ray import tune
    from ray.tune.tune_config import ResumeConfig

    assert run_raycf("tune", str(tiny_study), "--storage", str(tmp_path), "--name", "run") == 0
    run_dir = tmp_path / "run"
    trials = pd.read_parquet(run_dir / TRIALS_FILE)
    assert set(trials["stopped_by"]) >= {"asha"} and set(trials["stopped_by"]) & {"patience", "max_t"}
    for _, trial in trials[trials["stopped_by"] != "asha"].iterrows():  # these rely on their final checkpoint
        (run_dir / Path(trial["checkpoint"]).parent / ENDED_FILE).unlink()
    before = all_rows(run_dir)
    record = StudyRecord.read(Location.of(str(run_dir), ""))
    resume_all = ResumeConfig(finished=ResumeConfig.ResumeType.RESUME)
    trainable = trainable_for(load_split(run_dir / SPLIT_DIR), record)
    results = tune.Tuner.restore(str(run_dir), trainable=trainable, _resume_config=resume_all).fit()
    assert all_rows(run_dir) == before
    again = write_results(Location.of(str(run_dir), ""), record, results, 0.0)
    assert len(again) == 2
    columns = ["trial_id", "epochs_run", "best_epoch", "valid_ndcg", "stopped_by", "checkpoint", "retries"]
    assert pd.read_parquet(run_dir / TRIALS_FILE)[columns].sort_values("trial_id").reset_index(drop=True).equals(
        trials[columns].sort_values("trial_id").reset_index(drop=True))


def run_cli(argv: list[str], env: dict[str, str], log: str) -> None:
    """`raycf ARGV` in a process of the fork server, with these environment variables and its output in `log`."""
    from raycf.cli.main import main

    os.environ.update(env)
    with open(log, "a") as out:
        os.dup2(out.fileno(), 1)
        os.dup2(out.fileno(), 2)
    main(argv)


@pytest.fixture(scope="module")
def drivers() -> Iterator[Any]:
    """Processes forked from one that has imported raycf already: a driver starts in a second, not in ten."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["raycf.cli.main", "raycf.tune.driver", "raycf.data.source"])
    yield context


def drive(ray_cluster, drivers: Any, tmp_path: Path, args: list[str], kill_at: int | None) -> int | None:
    """`raycf ARGS` as a driver of its own on the session's cluster; with `kill_at`, the driver kills itself
    (KILL_DRIVER_ENV) once a trial has registered that many checkpoints. Its exit code once Ray ended its trials."""
    env = {KILL_DRIVER_ENV: str(kill_at or "")}
    argv = [*args, "--address", ray_cluster.get_runtime_context().gcs_address]
    process = drivers.Process(target=run_cli, args=(argv, env, str(tmp_path / "driver.log")))
    process.start()
    process.join(timeout=300)
    wait_for_trials_to_end(ray_cluster)
    return process.exitcode


def named_checkpoints_exist(run_dir: Path) -> dict[str, tuple[str, int | None]]:
    """tune_state, asserting that each checkpoint the saved experiment state names is still there."""
    try:
        return tune_state(run_dir)
    except FileNotFoundError as error:
        raise AssertionError(f"the saved experiment state names a deleted checkpoint: {error}") from None


def sessions_of(rows: list[Row]) -> list[list[Row]]:
    """A trial's results cut where another worker process (a new driver session's) reported."""
    runs: list[list[Row]] = []
    for row in rows:
        if not runs or runs[-1][-1]["pid"] != row["pid"]:
            runs.append([])
        runs[-1].append(row)
    return runs


RESUMES = 20


def test_a_driver_killed_right_after_each_checkpoint_resumes_every_time(ray_cluster, drivers, tmp_path):
    """The driver is killed 1 + RESUMES times, each time right after Tune registered a trial's 2nd to 4th
    checkpoint of the session, before it saved its state (where Tune's own pruning had deleted the checkpoint its
    saved state named); each `raycf tune --resume` continues every trial from the checkpoint that the saved state
    names: no epoch is lost, none before that checkpoint is trained again, and no trial errors."""
    study = write_study(tmp_path, max_t=40, patiences=[40], checkpoint_every=1)
    run_dir = tmp_path / "run"
    args = ["tune", str(study), "--storage", str(tmp_path), "--name", "run"]
    kills: list[tuple[float, dict[str, tuple[str, int | None]]]] = [(0.0, {})]
    """When each session ended, and what the saved state then named: where the next session starts."""
    for session in range(1 + RESUMES):
        code = drive(ray_cluster, drivers, tmp_path, args, kill_at=2 + session % 3)
        assert code == -signal.SIGKILL, f"session {session} was not killed (exit {code}): see {tmp_path}/driver.log"
        kills.append((time.time(), named_checkpoints_exist(run_dir)))
        args = ["tune", "--resume", str(run_dir)]
    assert drive(ray_cluster, drivers, tmp_path, args, kill_at=None) == 0, (tmp_path / "driver.log").read_text()[-3000:]
    trials = pd.read_parquet(run_dir / TRIALS_FILE).set_index("trial_id")
    assert trials["error"].isna().all() and (trials["retries"] == 0).all(), trials.to_dict()
    checked = 0
    for name, rows in all_rows(run_dir).items():
        trial_id = rows[0]["trial_id"]
        for run in sessions_of(rows):  # each session's first epoch follows the checkpoint the saved state named
            _, held = [state for killed_at, state in kills if killed_at < run[0]["timestamp"]][-1].get(
                trial_id, ("", None))
            assert run[0]["epoch"] == (held or 0) + 1, (name, held, [row["epoch"] for row in run])
            assert [row["epoch"] for row in run] == list(range(run[0]["epoch"], run[-1]["epoch"] + 1))
            checked += 1
        assert ended(rows) and rows[-1]["epoch"] == trials.loc[trial_id, "epochs_run"] == 40
        assert [path.name for path in (run_dir / name).glob("checkpoint_*")] == [
            Path(trials.loc[trial_id, "checkpoint"]).parent.name], "the older checkpoints are left after the end"
    print(f"\ndriver killed {len(kills) - 1} times inside the window, resumed {RESUMES + 1} times; trial sessions "
          f"that started where the saved state said {checked}; trials errored 0")
