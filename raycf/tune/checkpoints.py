"""Trial checkpoints deleted only once no saved experiment state can restore from them.

Tune keeps every checkpoint (raycf gives it no `num_to_keep`). Tune's own deletion would come before it saves
the experiment state naming the newer checkpoint: a driver killed in between left a state (what
`raycf tune --resume` restores from) naming a deleted checkpoint, and that trial errored on resume.
`CheckpointPruner` instead reads the newest state saved in the run directory and deletes a trial's checkpoints
older than the one that state names (on a local disk and on an object store alike).
"""

from __future__ import annotations

import math
import os
import re
import signal
import time
from pathlib import PurePosixPath
from typing import Any

import pyarrow.fs as pafs
from ray import tune

from raycf.cluster.ray_private import saved_checkpoints, trial_filesystem, trial_has_directory

CHECKPOINT_DIR = re.compile(r"checkpoint_(\d+)")
"""Tune's name for a trial's checkpoint directories, numbered in the order they were reported."""
STATE_PERIOD_ENV = "TUNE_GLOBAL_CHECKPOINT_S"
"""Seconds between Tune's saves of the experiment state ("auto": at least 10)."""
KILL_DRIVER_ENV = "RAYCF_TEST_KILL_DRIVER_AT_CHECKPOINT"
"""A test hook: N makes the driver SIGKILL itself once a trial has N checkpoints registered in this session."""


def state_period_s() -> float:
    """How often Tune saves its experiment state: a newer state to prune by comes no more often."""
    value = os.environ.get(STATE_PERIOD_ENV, "auto")
    try:
        return float(value)
    except ValueError:
        return 10.0


def checkpoint_index(name: str) -> int | None:
    match = CHECKPOINT_DIR.fullmatch(name)
    return None if match is None else int(match.group(1))


class CheckpointPruner(tune.Callback):
    """Deletes the checkpoints of a trial that are older than the one Tune's newest saved state names for it."""

    def __init__(self) -> None:
        self.period_s = 10.0
        self.last_look = -math.inf
        self.checkpointed: dict[str, Any] = {}
        """Trials with a checkpoint registered since their last pruning, by trial id."""

    def setup(self, *args: Any, **info: Any) -> None:
        """At the start of each driver session (a resumed one restores this callback from the run directory)."""
        self.period_s = state_period_s()

    def on_checkpoint(self, iteration: int, trials: list[Any], trial: Any, checkpoint: Any, **info: Any) -> None:
        self.checkpointed[trial.trial_id] = trial

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        if self.checkpointed and time.monotonic() - self.last_look >= self.period_s:
            self.last_look = time.monotonic()
            self.prune(list(self.checkpointed.values()))

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        """Every trial, those restored from an earlier session included (Tune has saved its final state)."""
        self.prune(trials)

    def prune(self, trials: list[Any]) -> None:
        trials = [trial for trial in trials if trial_has_directory(trial) and trial_filesystem(trial) is not None]
        if not trials:
            return
        filesystem, experiment = trial_filesystem(trials[0]), trials[0].remote_experiment_path
        named = saved_checkpoints(filesystem, experiment)
        if named is None:
            return
        for trial in trials:
            kept = checkpoint_index(named.get(PurePosixPath(trial.path).name, ""))
            if kept is not None:
                delete_older(filesystem, trial.path, kept)
                self.checkpointed.pop(trial.trial_id, None)


def delete_older(filesystem: pafs.FileSystem, trial_path: str, kept: int) -> None:
    """Delete the checkpoint directories of the trial at `trial_path` numbered below `kept`."""
    for info in filesystem.get_file_info(pafs.FileSelector(trial_path, allow_not_found=True)):
        index = checkpoint_index(PurePosixPath(info.path).name)
        if info.type == pafs.FileType.Directory and index is not None and index < kept:
            filesystem.delete_dir(info.path)


class DriverKillSwitch(tune.Callback):
    """Test hook: with KILL_DRIVER_ENV set to N in the driver's environment, the driver kills itself right after
    Tune registered a trial's Nth checkpoint of the session and before it saves the experiment state that names
    it: where Tune's own deletion of the checkpoint before it used to leave a saved state naming a deleted
    checkpoint. Does nothing without KILL_DRIVER_ENV."""

    def __init__(self) -> None:
        self.at_checkpoint: int | None = None
        self.counts: dict[str, int] = {}

    def setup(self, *args: Any, **info: Any) -> None:
        """Read at the start of each driver session: a resumed run restores its callbacks from the run directory."""
        value = os.environ.get(KILL_DRIVER_ENV)
        self.at_checkpoint = int(value) if value else None

    def on_checkpoint(self, iteration: int, trials: list[Any], trial: Any, checkpoint: Any, **info: Any) -> None:
        self.counts[trial.trial_id] = self.counts.get(trial.trial_id, 0) + 1

    def on_trial_save(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """Tune has registered the checkpoint (on_checkpoint comes just before) and saves its state later."""
        if self.at_checkpoint is not None and self.counts.get(trial.trial_id, 0) >= self.at_checkpoint:
            os.kill(os.getpid(), signal.SIGKILL)


def checkpoint_callbacks() -> list[tune.Callback]:
    """The pruner and the test hook (inert unless its variable is set when a driver session starts)."""
    return [CheckpointPruner(), DriverKillSwitch()]
