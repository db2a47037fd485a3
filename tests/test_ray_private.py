"""The Ray internals raycf relies on (raycf/cluster/ray_private.py) still behave as it expects, on real Tune trials.

Each failure says what Ray changed; fix raycf/cluster/ray_private.py (and only it), then add the Ray release to
`[tool.raycf] tested-ray` in pyproject.toml.
"""

from __future__ import annotations

import importlib
import json
import logging
import posixpath
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import pytest
import ray
from ray import cloudpickle, tune
from ray.tune.schedulers import FIFOScheduler

from raycf.cluster import ray_private
from raycf.storage.location import parse_results
from raycf.tune.driver import RETRIES_FILE, TrialLedger

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT_LINE = "Checkpoint successfully created"
"""What Ray prints for every reported checkpoint through ray_private.CHECKPOINT_LOGGER."""


def pyproject() -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml on Python 3.10 needs tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def probe(config: dict[str, Any]) -> None:
    """A trainable: a checkpoint with Ray's checkpoint logger at INFO, one after quiet_checkpoint_logs, and a
    last result that says how many checkpoint lines each printed (counted by a handler on that logger)."""
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger = logging.getLogger(ray_private.CHECKPOINT_LOGGER)
    logger.addHandler(Keep())
    logger.setLevel(logging.INFO)
    printed = []
    for epoch in (1, 2):
        if epoch == 2:
            ray_private.quiet_checkpoint_logs()
        with tempfile.TemporaryDirectory() as directory:
            Path(directory, "state.json").write_text("{}")
            tune.report({"epoch": epoch}, checkpoint=tune.Checkpoint.from_directory(directory))
        printed.append(sum(CHECKPOINT_LINE in line for line in lines))
    tune.report({"epoch": 3, "lines_after_loud": printed[0], "lines_after_quiet": printed[1]})


class Recorder(FIFOScheduler):
    """A scheduler that notes, as raycf.tune.asha does, whether each trial added has its directory yet."""

    def __init__(self) -> None:
        super().__init__()
        self.named_when_added: list[bool] = []

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        self.named_when_added.append(ray_private.trial_has_directory(trial))
        super().on_trial_add(tune_controller, trial)


class Seen(tune.Callback):
    """Driver-side: what ray_private says of each trial when Tune completes it (as TrialLedger sees it)."""

    def __init__(self) -> None:
        self.trials: list[Any] = []
        self.filesystems: list[Any] = []
        self.named: list[bool] = []

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.trials.append(trial)
        self.filesystems.append(ray_private.trial_filesystem(trial))
        self.named.append(ray_private.trial_has_directory(trial))


@pytest.fixture(scope="module")
def probed(ray_cluster, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Recorder, Seen, Any]:
    """One real Tune experiment of one `probe` trial, with raycf's TrialLedger."""
    storage = tmp_path_factory.mktemp("ray-private")
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import this test module
    recorder, seen = Recorder(), Seen()
    results = tune.Tuner(
        probe,
        param_space={"unused": 0},
        tune_config=tune.TuneConfig(scheduler=recorder, num_samples=1),
        run_config=tune.RunConfig(name="probe", storage_path=str(storage), callbacks=[seen, TrialLedger()],
                                  verbose=0),
    ).fit()
    assert not results.errors, results.errors
    return storage / "probe", recorder, seen, results[0]


def test_result_file_is_the_one_tune_writes(probed) -> None:
    _, _, seen, _ = probed
    (trial,) = seen.trials
    filesystem = seen.filesystems[0]
    path = f"{trial.path}/{ray_private.RESULT_FILE}"
    assert filesystem.get_file_info(path).type == pafs.FileType.File, (
        f"Tune no longer writes each trial's results to {ray_private.RESULT_FILE!r} in its directory "
        f"(found {sorted(p.name for p in Path(trial.path).iterdir())}): update ray_private.RESULT_FILE, which "
        "raycf.tune.asha reads to refill ASHA's rungs on resume")
    with filesystem.open_input_stream(path) as stream:
        epochs = [result.get("epoch") for result in parse_results(stream.readall().decode())]
    assert epochs == [1, 2, 3], f"{path} no longer holds one JSON result a line (raycf.storage.location.parse_results)"


def test_result_file_name_is_rays_constant() -> None:
    try:
        from ray.air.constants import EXPR_RESULT_FILE
    except ImportError:
        pytest.skip("ray.air.constants.EXPR_RESULT_FILE is gone; test_result_file_is_the_one_tune_writes checks "
                    "the file itself")
    assert EXPR_RESULT_FILE == ray_private.RESULT_FILE, (
        f"Ray's result file is now {EXPR_RESULT_FILE!r}: update ray_private.RESULT_FILE")


def test_a_tune_trial_has_its_filesystem_and_directory_where_raycf_looks(probed) -> None:
    run_dir, recorder, seen, result = probed
    assert recorder.named_when_added == [False], (
        "a new trial handed to the scheduler's on_trial_add should not have a directory yet "
        f"(ray_private.trial_has_directory said {recorder.named_when_added})")
    assert seen.named == [True], "a completed trial has no directory (StorageContext.trial_dir_name)"
    (trial,) = seen.trials
    filesystem = seen.filesystems[0]
    assert isinstance(filesystem, pafs.FileSystem), (
        f"Trial.storage.storage_filesystem is no pyarrow filesystem but {filesystem!r}: update "
        "ray_private.trial_filesystem")
    assert Path(trial.path) == run_dir / Path(trial.path).name == Path(result.path), (
        f"Trial.path {trial.path} is not the trial's directory under the run directory {run_dir}")
    assert filesystem.get_file_info(trial.path).type == pafs.FileType.Directory
    assert trial.remote_experiment_path == posixpath.dirname(trial.path) == str(run_dir), (
        f"Trial.remote_experiment_path {trial.remote_experiment_path} is not the run directory {run_dir}")


def test_trial_ledger_writes_retries_into_the_run_directory(probed) -> None:
    """TrialLedger.on_experiment_end writes through ray_private.trial_filesystem at remote_experiment_path."""
    run_dir, _, seen, _ = probed
    (trial,) = seen.trials
    assert json.loads((run_dir / RETRIES_FILE).read_text()) == {Path(trial.path).name: 0}


def test_checkpoint_logger_is_the_one_that_prints_each_checkpoint(probed) -> None:
    *_, result = probed
    metrics = result.metrics
    assert metrics["lines_after_loud"] == 1, (
        f"Ray no longer prints {CHECKPOINT_LINE!r} through the logger {ray_private.CHECKPOINT_LOGGER!r}: find "
        "the logger that prints a line per checkpoint and update ray_private.CHECKPOINT_LOGGER")
    assert metrics["lines_after_quiet"] == 1, "quiet_checkpoint_logs() did not silence the second checkpoint's line"


def test_job_upload_logger_is_the_job_sdks_working_dir_packager() -> None:
    # ray.job_submission.JobSubmissionClient packages a working_dir through dashboard_sdk
    from ray.dashboard.modules import dashboard_sdk

    module = sys.modules.get(ray_private.JOB_UPLOAD_LOGGER) or importlib.import_module(ray_private.JOB_UPLOAD_LOGGER)
    packager = getattr(dashboard_sdk, "upload_working_dir_if_needed", None)
    assert packager is not None and packager.__module__ == ray_private.JOB_UPLOAD_LOGGER, (
        f"the job SDK no longer packages working_dir in {ray_private.JOB_UPLOAD_LOGGER!r}: find the module that "
        "does and update ray_private.JOB_UPLOAD_LOGGER")
    names = {value.name for value in vars(module).values() if isinstance(value, logging.Logger)}
    assert ray_private.JOB_UPLOAD_LOGGER in names, f"{module.__name__} logs through {names}, not its own name"


def test_tested_ray_versions_are_declared_and_documented() -> None:
    project = pyproject()
    tested = project["tool"]["raycf"]["tested-ray"]
    assert tested and all(version.count(".") == 2 for version in tested), tested
    (requirement,) = [dependency for dependency in project["project"]["dependencies"] if dependency.startswith("ray[")]
    floor = requirement.split(">=")[1].split(",")[0]
    assert any(version.startswith(f"{floor}.") or version == floor for version in tested), (
        f"pyproject.toml admits Ray {floor}, a release the suite was not run with (tested: {tested})")
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert f"tested with Ray {', '.join(tested)}" in readme, "README should name the tested Ray releases"
    if ray.__version__ not in tested:
        warnings.warn(f"Ray {ray.__version__} is not among the tested releases {tested}: if this suite passes, "
                      "add it to [tool.raycf] tested-ray in pyproject.toml (and README)", stacklevel=1)


def test_mlflow_logger_keeps_its_experiment_and_trial_runs_where_raycf_looks(tmp_path: Path) -> None:
    """raycf's MLflow logger (raycf.integrations.tune_loggers) subclasses Ray's and shares its private state."""
    from mlflow.tracking import MlflowClient
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    logger = MLflowLoggerCallback(tracking_uri=uri, experiment_name="probe")
    logger.setup()
    try:
        experiment_id = ray_private.mlflow_experiment_id(logger)
    except AttributeError as error:
        raise AssertionError(f"MLflowLoggerCallback no longer keeps `mlflow_util.experiment_id` ({error}): update "
                             "ray_private.mlflow_experiment_id") from None
    assert experiment_id == MlflowClient(tracking_uri=uri).get_experiment_by_name("probe").experiment_id
    runs = ray_private.mlflow_trial_runs(logger) if hasattr(logger, "_trial_runs") else None
    assert runs == {}, ("MLflowLoggerCallback no longer keeps its trials' runs in a dict `_trial_runs`: update "
                        "ray_private.mlflow_trial_runs")


def test_saved_checkpoints_are_what_the_saved_experiment_state_restores(probed) -> None:
    """raycf.tune.checkpoints prunes by ray_private.saved_checkpoints: the newest saved state's checkpoint per trial."""
    run_dir, _, seen, result = probed
    (trial,) = seen.trials
    named = ray_private.saved_checkpoints(seen.filesystems[0], str(run_dir))
    assert named == {Path(trial.path).name: Path(result.checkpoint.path).name} == {
        Path(trial.path).name: "checkpoint_000001"}, (
        f"ray_private.saved_checkpoints read {named} from {run_dir}'s {ray_private.EXPERIMENT_STATE_FILES}, not the "
        f"trial's last checkpoint {result.checkpoint.path}: update it to Tune's experiment state format")
    assert ray_private.saved_checkpoints(seen.filesystems[0], str(run_dir / "nowhere")) is None


def test_a_function_trainable_is_a_trainable_class_with_trial_id_and_config() -> None:
    """raycf.tune.naming subclasses it to name each trial's actor: it must stay a Trainable class whose instances
    know their trial id (a property) and config (set by Trainable.__init__)."""
    import inspect

    from ray.tune import Trainable

    from raycf.cluster.ray_private import function_trainable

    trainable = function_trainable(lambda config: None, "probe")
    assert inspect.isclass(trainable) and issubclass(trainable, Trainable), \
        "ray.tune.trainable.wrap_function no longer returns a Trainable class: raycf.tune.naming must change"
    assert isinstance(inspect.getattr_static(Trainable, "trial_id"), property), "Trainable.trial_id changed"
    assert "self.config" in inspect.getsource(Trainable.__init__), "Trainable no longer keeps its config"
