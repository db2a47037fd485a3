"""Every use raycf makes of Ray internals that have no public equivalent, in one place.

Ray may change any of these in a minor release. tests/test_ray_private.py checks each one against the
installed Ray (on real Tune trials) and fails with a message naming what changed; the Ray versions the
suite passed with are listed in pyproject.toml (`[tool.raycf] tested-ray`). Everything else raycf uses
from Ray is public API (`ray.tune.Callback` hooks and the `Trial` properties they hand over: `path`,
`remote_experiment_path`, `checkpoint`, `config`, `last_result`, `num_failures`; `ray.tune.Checkpoint`,
`ResultGrid` / `Result`; `MLflowLoggerCallback`'s constructor, `setup` and `log_trial_*` hooks).
"""

from __future__ import annotations

import fnmatch
import json
import logging
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Any

import pyarrow.fs as pafs

RESULT_FILE = "result.json"
"""The JSON-lines file in each trial directory where Tune's driver appends every reported result
(Ray's `ray.air.constants.EXPR_RESULT_FILE`, not public). Needed because Ray does not save a
scheduler's rungs: `raycf.tune.asha` refills them on resume from what each trial reported before, and no
public API reads a restored trial's past results from inside a scheduler."""

CHECKPOINT_LOGGER = "ray.train._internal.storage"
"""The logger (a private module's) that prints `Checkpoint successfully created at: ...` for every
checkpoint a trial reports. A trial checkpoints at every improving epoch, so `quiet_checkpoint_logs`
raises it to WARNING in the trial; Ray has no public switch for that line."""

EXPERIMENT_STATE_FILES = "experiment_state-*.json"
"""The experiment state files Tune saves in the run directory, one per driver session; `Tuner.restore` reads the
newest by name (Ray's private `TuneController.CKPT_FILE_TMPL`)."""

JOB_UPLOAD_LOGGER = "ray._private.runtime_env.working_dir"
"""The logger of the job SDK's working_dir packaging and upload (`raycf ... --submit`): its INFO lines
and the warning that `.git` is left out of a working_dir (raycf always leaves it out) would bury the
job's own log. Ray has no public switch for them."""


def quiet_checkpoint_logs() -> None:
    """No line per checkpoint in a trial's output (see CHECKPOINT_LOGGER)."""
    logging.getLogger(CHECKPOINT_LOGGER).setLevel(logging.WARNING)


def quiet_job_upload_logs() -> None:
    """No packaging and upload chatter while submitting a job (see JOB_UPLOAD_LOGGER)."""
    logging.getLogger(JOB_UPLOAD_LOGGER).setLevel(logging.ERROR)


def trial_filesystem(trial: Any) -> pafs.FileSystem | None:
    """The pyarrow filesystem that `Trial.path` and `Trial.remote_experiment_path` are paths on (they
    carry no URI scheme: `bucket/runs/x` on S3); None for a trial Tune has not given storage.

    `Trial` has no public attribute for it (it is the private `StorageContext.storage_filesystem`); a
    trial's `Checkpoint.filesystem` is public but exists only once the trial has checkpointed.
    """
    storage = getattr(trial, "storage", None)
    return None if storage is None else storage.storage_filesystem


def trial_has_directory(trial: Any) -> bool:
    """Whether Tune has named the trial's directory yet (a new trial's is named when it first starts;
    `Trial.path` raises before). Reads the private `StorageContext.trial_dir_name`."""
    storage = getattr(trial, "storage", None)
    return storage is not None and storage.trial_dir_name is not None


def mlflow_trial_runs(logger: Any) -> dict[Any, str]:
    """The MLflow run id of each trial an `MLflowLoggerCallback` has started: its private `_trial_runs`, which
    Ray's own `on_trial_*` bookkeeping reads too, so raycf's logger records its runs there."""
    return logger._trial_runs


def mlflow_experiment_id(logger: Any) -> str:
    """The experiment id an `MLflowLoggerCallback` resolved in `setup` (its private `mlflow_util`'s)."""
    return logger.mlflow_util.experiment_id


def saved_checkpoints(filesystem: pafs.FileSystem, experiment_path: str) -> dict[str, str] | None:
    """What `Tuner.restore` of the run directory at `experiment_path` would restore each trial from: per trial
    directory name, the name of the checkpoint directory that Tune's newest saved experiment state gives the trial
    (trials without one left out). None when no state is saved there yet, or none can be read whole.

    Reads each trial's state as `ray.tune.ExperimentAnalysis` does (`Trial.from_json_state` and
    `restore_run_metadata`, not public), without reading every trial's results as it would."""
    from ray.tune.experiment import Trial

    listing = filesystem.get_file_info(pafs.FileSelector(experiment_path, allow_not_found=True))
    names = fnmatch.filter([PurePosixPath(info.path).name for info in listing], EXPERIMENT_STATE_FILES)
    if not names:
        return None
    try:
        with filesystem.open_input_stream(f"{experiment_path}/{max(names)}") as stream:
            state = json.loads(stream.readall())
    except (OSError, ValueError):  # being written (a local copy is not atomic): the next look will tell
        return None
    named = {}
    for trial_state, run_metadata in state["trial_data"]:
        trial = Trial.from_json_state(trial_state, stub=True)
        trial.restore_run_metadata(run_metadata)
        if trial.checkpoint is not None:
            path = PurePosixPath(trial.checkpoint.path)
            named[path.parent.name] = path.name
    return named


def function_trainable(function: Callable[[dict[str, Any]], None], name: str) -> type:
    """Tune's class trainable of a function trainable (`ray.tune.trainable.wrap_function`, a DeveloperAPI), a
    class raycf subclasses to name its actors (their `__repr__`, which the Ray dashboard shows): the public
    `tune.with_parameters` gives no such class. Its instances have Trainable's `trial_id` and `config`."""
    from ray.tune.trainable import wrap_function

    return wrap_function(function, name=name)
