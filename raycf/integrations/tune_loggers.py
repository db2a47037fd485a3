"""A study's trials in MLflow and TensorBoard through Ray Tune's own logger callbacks: each trial a child run
of the run directory's MLflow parent run (raycf.integrations.mlflow_runs), its results at step = its epoch.

Nothing here imports mlflow, tensorboardX or Ray at module level: a study without tracking never loads them.
"""

from __future__ import annotations

import functools
import time
from typing import Any

from raycf.cluster.ray_private import mlflow_experiment_id, mlflow_trial_runs
from raycf.errors import RaycfError
from raycf.integrations.mlflow_runs import (
    PARAM_CHARS,
    PARENT_TAG,
    TAG_MODEL,
    TAG_RUN,
    TAG_STUDY,
    TAG_TRIAL,
    create_parent,
    experiment_id_of,
    first_line,
    mlflow_client,
    mlflow_name,
    quoted,
    require_package,
    warn,
)
from raycf.models.config import TrainConfig
from raycf.runs.record import StudyRecord


def tracking_callbacks(spec: Any, record: StudyRecord, storage: str, name: str) -> list[Any]:
    """Ray Tune callbacks for the study's `tracking` (a raycf.study.schema.TrackingSpec): MLflow (after creating the
    experiment and the run directory `storage`/`name`'s parent run) and TensorBoard. Empty without tracking."""
    callbacks: list[Any] = []
    if spec.mlflow is not None:
        require_package("mlflow", f"{spec.mlflow_from} needs the mlflow package: pip install 'raycf[mlflow]'")
        from mlflow.exceptions import MlflowException

        client = mlflow_client(spec.mlflow)
        try:
            experiment_id = experiment_id_of(client, record.name, spec.mlflow)
            parent = create_parent(client, experiment_id, record, name, f"{storage.rstrip('/')}/{name}")
        except MlflowException as error:
            raise RaycfError(f"{spec.mlflow_from} {spec.mlflow}: {first_line(error)}") from None
        print(f"mlflow: experiment {record.name!r}, parent run {parent_run_url(spec.mlflow, experiment_id, parent)}",
              flush=True)
        tags = {PARENT_TAG: parent, TAG_STUDY: record.name, TAG_RUN: name}
        callbacks.append(_logger_class()(tracking_uri=spec.mlflow, experiment_name=record.name, tags=tags))
    if spec.tensorboard:
        require_package("tensorboardX", f"{spec.tensorboard_from} needs the tensorboardX package: "
                                 "pip install 'raycf[tensorboard]'")
        from ray.tune.logger import TBXLoggerCallback

        callbacks.append(TBXLoggerCallback())
        print(f"tensorboard: tensorboard --logdir {storage.rstrip('/')}/{name}", flush=True)
    return callbacks


def parent_run_url(uri: str, experiment_id: str, run_id: str) -> str:
    """The parent run's page on an MLflow server; for a database, its id and the `mlflow ui` that shows it."""
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return f"{run_id} (mlflow ui --backend-store-uri {uri})"


@functools.cache
def _logger_class() -> type:
    """StudyMLflowLogger, built on first use: its base class imports mlflow (seconds), which a raycf without
    tracking never needs. Reachable as raycf.integrations.tune_loggers.StudyMLflowLogger, so a Tuner pickles it
    by name."""
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    class StudyMLflowLogger(MLflowLoggerCallback):
        """Ray Tune's MLflowLoggerCallback, one request per event: Ray's own logs each metric and parameter with
        a request of its own (about 0.15 s each on a local server: seconds per epoch on Tune's driver), at step
        `training_iteration`, Tune's bookkeeping (`pid`, `done`, `timestamp`, ...) among them, and fails the
        study on a name with `@`. This one logs what the trial reported (`trial_metrics`) with one `log_batch`
        at step = its epoch, the trial's TrainConfig fields (its own model's hyperparameters only) as
        parameters, continues a trial's run when the study is resumed, and stops tracking (with one warning)
        when the server fails, instead of failing the study."""

        def setup(self, *args: Any, **kwargs: Any) -> None:
            super().setup(*args, **kwargs)
            self._failed = False

        @property
        def client(self) -> Any:
            """An MlflowClient of the tracking URI (made on first use; not pickled with the Tuner)."""
            if getattr(self, "_mlflow_client", None) is None:
                self._mlflow_client = mlflow_client(str(self.tracking_uri))
            return self._mlflow_client

        def __getstate__(self) -> dict[str, Any]:
            return {**self.__dict__, "_mlflow_client": None}

        def _safely(self, action: str, call: Any) -> Any:
            if getattr(self, "_failed", False):
                return None
            try:
                return call()
            except Exception as error:  # noqa: BLE001 - tracking never fails the study
                self._failed = True
                warn(f"mlflow {self.tracking_uri}: {action} failed, trials are no longer tracked there: "
                      f"{first_line(error)}")
                return None

        def log_trial_start(self, trial: Any) -> None:
            self._safely(f"starting the run of trial {trial.trial_id}", lambda: self._start(trial))

        def _start(self, trial: Any) -> None:
            from mlflow.entities import Param

            config: dict[str, Any] = trial.config.get("trial", trial.config)
            run_id = mlflow_trial_runs(self).get(trial)
            if run_id is None:
                found = self.client.search_runs(
                    [mlflow_experiment_id(self)], max_results=1,
                    filter_string=f"tags.{TAG_TRIAL} = {quoted(trial.trial_id)} and "
                                  f"tags.`{PARENT_TAG}` = {quoted((self.tags or {})[PARENT_TAG])}")
                if found:  # a resumed study: the trial's run goes on
                    run_id = found[0].info.run_id
                    self.client.update_run(run_id, status="RUNNING")
                else:
                    tags = {**(self.tags or {}), "trial_name": str(trial), TAG_TRIAL: trial.trial_id,
                            TAG_MODEL: str(config.get("model", ""))}
                    run_id = self.client.create_run(mlflow_experiment_id(self), run_name=str(trial),
                                                     tags=tags).info.run_id
                    params = TrainConfig.from_dict(config, where="trial", stored=True).to_dict(flat=True)
                    self.client.log_batch(run_id, params=[Param(mlflow_name(key), str(value)[:PARAM_CHARS])
                                                           for key, value in params.items()])
                mlflow_trial_runs(self)[trial] = run_id
            elif self.client.get_run(run_id).info.status != "RUNNING":  # a retry after a failure
                self.client.update_run(run_id, status="RUNNING")

        def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
            if trial not in mlflow_trial_runs(self):
                return
            self._safely(f"logging a result of trial {trial.trial_id}", lambda: self._result(trial, result))

        def _result(self, trial: Any, result: dict) -> None:
            from mlflow.entities import Metric

            step = int(result.get("epoch") or result.get("training_iteration") or 0)
            now = int(time.time() * 1000)
            metrics = [Metric(mlflow_name(key), number, now, step) for key, number in trial_metrics(result).items()]
            for start in range(0, len(metrics), 1000):  # log_batch takes at most 1000 metrics
                self.client.log_batch(mlflow_trial_runs(self)[trial], metrics=metrics[start:start + 1000])

        def log_trial_end(self, trial: Any, failed: bool = False) -> None:
            if trial not in mlflow_trial_runs(self):
                return
            self._safely(f"ending the run of trial {trial.trial_id}", lambda: self.client.set_terminated(
                mlflow_trial_runs(self)[trial], status="FAILED" if failed else "FINISHED"))

    StudyMLflowLogger.__module__ = __name__
    StudyMLflowLogger.__qualname__ = "StudyMLflowLogger"
    globals()["StudyMLflowLogger"] = StudyMLflowLogger
    return StudyMLflowLogger


def __getattr__(name: str) -> Any:
    """`StudyMLflowLogger` (built on first use), so that a pickled Tuner finds it by name on `--resume`."""
    if name == "StudyMLflowLogger":
        return _logger_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


TRIAL_METRICS = ("epoch", "best_epoch", "train_seconds", "rss_mb")
"""What a trial reports (raycf/tune/driver.py `run_trial`) besides its validation figures (`valid_*`,
`best_valid_*`), by name: the result keys logged as metrics of its MLflow run."""


def trial_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The numeric values a trial reported in a Tune result (TRIAL_METRICS, `valid_*`, `best_valid_*`) as floats;
    what Tune adds (`pid`, `done`, `timestamp`, `training_iteration`, `config`, ...) left out."""
    numbers = {}
    for key, value in result.items():
        if not (key in TRIAL_METRICS or key.startswith(("valid_", "best_valid_"))) or isinstance(value, str):
            continue
        try:
            numbers[key] = float(value)
        except (TypeError, ValueError):
            continue
    return numbers
