"""Experiment tracking (study key `tracking`, `raycf tune --mlflow URI`): a study's trials in MLflow and
TensorBoard through Ray Tune's own logger callbacks, and the study's results on an MLflow parent run.

MLflow (a tracking server, http(s)://, or a local database, sqlite:///PATH). The experiment is named after
the study; each run directory gets a parent run named after it (tags `raycf_role` = `study`, `raycf_study`,
`raycf_run`), created before the first trial starts. Every trial is a child run (Ray Tune's `MLflowLoggerCallback`, tags `mlflow.parentRunId`, `raycf_study`, `raycf_run`,
`raycf_trial_id`, `raycf_model`) whose parameters are the trial's TrainConfig fields and whose metrics are
every numeric value of every result it reported (`valid_ndcg`, `valid_recall@20`, `train_seconds`, ...)
at step = its epoch. MLflow refuses `@` in a name: `valid_recall@20` is logged as `valid_recall_at_20`.
When the study ends (`finish` in raycf/tune.py, after a `--resume` too) the parent run gets study.json,
leaderboard.parquet, best.json and trials.parquet (and the repeat and selection files the study made) as
artifacts, the best trial's validation metrics as `best_valid_*` metrics, and ends. `raycf score` and
`raycf report` add the scoring summary and report.html to it (`log_artifacts`).

TensorBoard. Ray Tune's `TBXLoggerCallback` writes event files into each trial's directory (Ray Tune
adds it by itself whenever tensorboardX is installed; `tensorboard: true` makes sure of it).

Nothing here imports mlflow, tensorboardX or Ray at module level: raycf runs without the extras, and a
study without tracking never loads them. `check_tracking` runs before Ray starts; a tracking server that
stops answering later costs the rest of the study's tracking (one warning line), never the study.
"""

from __future__ import annotations

import base64
import functools
import http.client
import importlib
import json
import math
import os
import re
import ssl
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from raycf.errors import RaycfError
from raycf.storage import Location

STUDY_FILE = "study.json"  # raycf/tune.py's STUDY_FILE (tune imports this module, not the other way round)
STUDY_ARTIFACTS = ("study.json", "leaderboard.parquet", "best.json", "trials.parquet", "repeats.parquet",
                   "repeats.json", "select.parquet")
"""Run directory files logged on the parent run when a study ends (those that exist)."""
TAG_STUDY, TAG_RUN, TAG_ROLE = "raycf_study", "raycf_run", "raycf_role"
TAG_TRIAL, TAG_MODEL = "raycf_trial_id", "raycf_model"
PARENT_ROLE = "study"
PARENT_TAG = "mlflow.parentRunId"
PROBE_TIMEOUT_S = 5.0
"""How long a tracking server has to answer the check before Ray starts (and before any later logging)."""
PARAM_CHARS = 500
"""Parameter values are cut to this length (older MLflow servers refuse longer ones)."""


def mlflow_name(key: str) -> str:
    """A result key as an MLflow metric or parameter name: `@` becomes `_at_` (`valid_recall_at_20`), any other
    character MLflow refuses `_`."""
    return re.sub(r"[^\w\-. :/]", "_", key.replace("@", "_at_"))


def check_tracking(spec: Any) -> None:
    """Before Ray starts: the packages the study's `tracking` (a raycf.study.TrackingSpec) needs are installed,
    and an http(s) tracking server answers. A one-line RaycfError naming where the setting came from."""
    if spec.mlflow is not None:
        _require("mlflow", f"{spec.mlflow_from} needs the mlflow package: pip install 'raycf[mlflow]'")
        problem = probe(spec.mlflow)
        if problem is None and urllib.parse.urlsplit(spec.mlflow).scheme not in ("http", "https"):
            try:  # a local store (sqlite:///PATH, a directory): opened here, a few seconds at most
                _client(spec.mlflow).search_experiments(max_results=1)
            except Exception as error:  # noqa: BLE001 - whatever MLflow says, in one line
                problem = _first_line(error)
        if problem is not None:
            raise RaycfError(f"{spec.mlflow_from} {spec.mlflow}: {problem}")
    if spec.tensorboard:
        _require("tensorboardX", f"{spec.tensorboard_from} needs the tensorboardX package: "
                                 "pip install 'raycf[tensorboard]'")


def _require(module: str, message: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError:
        raise RaycfError(message) from None


def probe(uri: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when the MLflow tracking server at `uri` answers its REST API within `timeout` (a URI that is not
    http(s), e.g. a directory, is not probed); else what is wrong and the way out, in words."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme not in ("http", "https"):
        return None
    url = f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/search?max_results=1"
    headers = {}
    if os.environ.get("MLFLOW_TRACKING_TOKEN"):
        headers["Authorization"] = f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"
    elif os.environ.get("MLFLOW_TRACKING_USERNAME"):
        user = f"{os.environ['MLFLOW_TRACKING_USERNAME']}:{os.environ.get('MLFLOW_TRACKING_PASSWORD', '')}"
        headers["Authorization"] = f"Basic {base64.b64encode(user.encode()).decode()}"
    context = None
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":  # MLflow's own switch
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout,
                                    context=context) as response:
            response.read(1)
        return None
    except urllib.error.HTTPError as error:
        if error.code in (401, 403):
            return (f"the tracking server refused the request (HTTP {error.code}); set MLFLOW_TRACKING_TOKEN, or "
                    "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")
        if error.code == 404:
            return "it answers, but not as an MLflow tracking server (no REST API there); check the URI"
        return f"the tracking server answers HTTP {error.code} {error.reason}; see its log, or give another URI"
    except (OSError, http.client.HTTPException, ValueError) as error:  # refused, unknown host, timeout, not HTTP
        reason = getattr(error, "reason", error)
        reason = getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
        try:
            where = f"--host {parts.hostname} --port {parts.port or (443 if parts.scheme == 'https' else 80)}"
        except ValueError:  # a port that is not a number
            where = "--host HOST --port PORT"
        return (f"no MLflow tracking server answers there ({reason.lower()}); start one (mlflow server {where}) "
                "or give a reachable tracking URI")


def _client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # 2 lines per run ended otherwise
    return MlflowClient(tracking_uri=uri)


def _experiment_id(client: Any, name: str, uri: str) -> str:
    """The id of the active experiment `name`, created when missing."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(name)
    if experiment.lifecycle_stage != "active":
        raise RaycfError(f"{uri}: MLflow experiment {name!r} is deleted; restore it (mlflow experiments restore "
                         f"--experiment-id {experiment.experiment_id}) or delete it for good (mlflow gc)")
    return experiment.experiment_id


def _quoted(value: str) -> str:
    """`value` as a string literal of an MLflow search filter."""
    return f'"{value}"' if "'" in value else f"'{value}'"


def _find_parent(client: Any, experiment_id: str, run: str) -> str | None:
    """The id of the latest parent run of run directory `run` (its name) in the experiment, if any."""
    found = client.search_runs(
        [experiment_id], filter_string=f"tags.{TAG_RUN} = {_quoted(run)} and tags.{TAG_ROLE} = '{PARENT_ROLE}'",
        order_by=["attributes.start_time DESC"], max_results=1)
    return found[0].info.run_id if found else None


def _create_parent(client: Any, experiment_id: str, facts: dict[str, Any], run: str, run_uri: str) -> str:
    """A new parent run for run directory `run_uri` (named `run`), the study's facts as its parameters."""
    from mlflow.entities import Param

    tags = {TAG_STUDY: facts["name"], TAG_RUN: run, TAG_ROLE: PARENT_ROLE}
    parent = client.create_run(experiment_id, run_name=run, tags=tags).info.run_id
    params = {**{key: facts.get(key) for key in ("study_file", "seed", "data", "metric", "mode", "scheduler", "max_t",
                                                 "num_samples", "searcher", "report_metrics", "cpus_per_trial",
                                                 "gpus_per_trial")},
              "models": ",".join(facts.get("models", [])), "run_dir": run_uri}
    client.log_batch(parent, params=[Param(mlflow_name(key), _param_text(value)[:PARAM_CHARS])
                                     for key, value in params.items() if value is not None])
    return parent


def _param_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def tracking_callbacks(spec: Any, facts: dict[str, Any], storage: str, name: str) -> list[Any]:
    """Ray Tune callbacks for the study's `tracking` (a raycf.study.TrackingSpec): MLflow (after creating the
    experiment and the run directory `storage`/`name`'s parent run) and TensorBoard. Empty without tracking."""
    callbacks: list[Any] = []
    if spec.mlflow is not None:
        _require("mlflow", f"{spec.mlflow_from} needs the mlflow package: pip install 'raycf[mlflow]'")
        from mlflow.exceptions import MlflowException

        client = _client(spec.mlflow)
        try:
            experiment_id = _experiment_id(client, facts["name"], spec.mlflow)
            parent = _create_parent(client, experiment_id, facts, name, f"{storage.rstrip('/')}/{name}")
        except MlflowException as error:
            raise RaycfError(f"{spec.mlflow_from} {spec.mlflow}: {_first_line(error)}") from None
        tags = {PARENT_TAG: parent, TAG_STUDY: facts["name"], TAG_RUN: name}
        callbacks.append(_logger_class()(tracking_uri=spec.mlflow, experiment_name=facts["name"], tags=tags))
    if spec.tensorboard:
        _require("tensorboardX", f"{spec.tensorboard_from} needs the tensorboardX package: "
                                 "pip install 'raycf[tensorboard]'")
        from ray.tune.logger import TBXLoggerCallback

        callbacks.append(TBXLoggerCallback())
    return callbacks


def _first_line(error: BaseException) -> str:
    text = str(getattr(error, "message", "") or error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__


def _warn(message: str) -> None:
    print(f"raycf: warning: {message}", file=sys.stderr, flush=True)


@functools.cache
def _logger_class() -> type:
    """StudyMLflowLogger, built on first use: its base class imports mlflow (seconds), which a raycf without
    tracking never needs. Reachable as raycf.tracking.StudyMLflowLogger, so a Tuner pickles it by name."""
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    class StudyMLflowLogger(MLflowLoggerCallback):
        """Ray Tune's MLflowLoggerCallback, one request per event: Ray's own logs each metric and parameter with
        a request of its own (about 0.15 s each on a local server: seconds per epoch on Tune's driver), at step
        `training_iteration`, and fails the study on a name with `@`. This one logs a result with one
        `log_batch` at step = its epoch, the trial's TrainConfig fields as parameters, continues a trial's run
        when the study is resumed, and stops tracking (with one warning) when the server fails, instead of
        failing the study."""

        def setup(self, *args: Any, **kwargs: Any) -> None:
            super().setup(*args, **kwargs)
            self._failed = False

        @property
        def client(self) -> Any:
            """An MlflowClient of the tracking URI (made on first use; not pickled with the Tuner)."""
            if getattr(self, "_mlflow_client", None) is None:
                self._mlflow_client = _client(self.tracking_uri)
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
                _warn(f"mlflow {self.tracking_uri}: {action} failed, trials are no longer tracked there: "
                      f"{_first_line(error)}")
                return None

        def log_trial_start(self, trial: Any) -> None:
            self._safely(f"starting the run of trial {trial.trial_id}", lambda: self._start(trial))

        def _start(self, trial: Any) -> None:
            from mlflow.entities import Param

            config = trial.config.get("trial", trial.config)
            run_id = self._trial_runs.get(trial)
            if run_id is None:
                found = self.client.search_runs(
                    [self.mlflow_util.experiment_id], max_results=1,
                    filter_string=f"tags.{TAG_TRIAL} = {_quoted(trial.trial_id)} and "
                                  f"tags.`{PARENT_TAG}` = {_quoted(self.tags[PARENT_TAG])}")
                if found:  # a resumed study: the trial's run goes on
                    run_id = found[0].info.run_id
                    self.client.update_run(run_id, status="RUNNING")
                else:
                    tags = {**self.tags, "trial_name": str(trial), TAG_TRIAL: trial.trial_id,
                            TAG_MODEL: str(config.get("model", ""))}
                    run_id = self.client.create_run(self.mlflow_util.experiment_id, run_name=str(trial),
                                                     tags=tags).info.run_id
                    params = _flat(config)
                    self.client.log_batch(run_id, params=[Param(mlflow_name(key), str(value)[:PARAM_CHARS])
                                                           for key, value in params.items()])
                self._trial_runs[trial] = run_id
            elif self.client.get_run(run_id).info.status != "RUNNING":  # a retry after a failure
                self.client.update_run(run_id, status="RUNNING")

        def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
            if trial not in self._trial_runs:
                return
            self._safely(f"logging a result of trial {trial.trial_id}", lambda: self._result(trial, result))

        def _result(self, trial: Any, result: dict) -> None:
            from mlflow.entities import Metric

            step = int(result.get("epoch") or result.get("training_iteration") or 0)
            now = int(time.time() * 1000)
            metrics = [Metric(mlflow_name(key), number, now, step) for key, number in _numbers(result).items()]
            for start in range(0, len(metrics), 1000):  # log_batch takes at most 1000 metrics
                self.client.log_batch(self._trial_runs[trial], metrics=metrics[start:start + 1000])

        def log_trial_end(self, trial: Any, failed: bool = False) -> None:
            if trial not in self._trial_runs:
                return
            self._safely(f"ending the run of trial {trial.trial_id}", lambda: self.client.set_terminated(
                self._trial_runs[trial], status="FAILED" if failed else "FINISHED"))

    StudyMLflowLogger.__module__ = __name__
    StudyMLflowLogger.__qualname__ = "StudyMLflowLogger"
    globals()["StudyMLflowLogger"] = StudyMLflowLogger
    return StudyMLflowLogger


def __getattr__(name: str) -> Any:
    """`StudyMLflowLogger` (built on first use), so that a pickled Tuner finds it by name on `--resume`."""
    if name == "StudyMLflowLogger":
        return _logger_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _flat(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts flattened with `/` between keys, as Ray Tune flattens results."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _numbers(result: dict[str, Any]) -> dict[str, float]:
    """Every numeric value of a Tune result (nested ones flattened; the trial's config, logged as parameters,
    left out) as a float."""
    numbers = {}
    for key, value in _flat({k: v for k, v in result.items() if k != "config"}).items():
        if isinstance(value, bool):
            value = float(value)
        if isinstance(value, (int, float)) or (hasattr(value, "dtype") and getattr(value, "ndim", 1) == 0):
            try:
                numbers[key] = float(value)
            except (TypeError, ValueError):
                continue
    return numbers


def _parent_of(run: Location, what: str) -> tuple[Any, str, dict[str, Any], str] | None:
    """(client, parent run id, facts, tracking URI) of a `raycf tune` run directory whose study.json asks for
    MLflow tracking (its parent run is created if missing); None without tracking, or with one warning line
    when the parent run cannot be reached (no mlflow package, no server answering, an MLflow error)."""
    try:
        facts = json.loads(run.read_bytes(STUDY_FILE)) if run.has(STUDY_FILE) else {}
    except (OSError, ValueError):
        return None
    uri = (facts.get("tracking") or {}).get("mlflow") if isinstance(facts, dict) else None
    if not uri:
        return None
    try:
        importlib.import_module("mlflow")
    except ImportError:
        _warn(f"{what} not logged to MLflow ({uri}), which tracks this run: that needs the mlflow package: "
              "pip install 'raycf[mlflow]'")
        return None
    problem = probe(uri)
    if problem is not None:
        _warn(f"{what} not logged to MLflow: {uri}: {problem}")
        return None
    name = run.uri.rstrip("/").rsplit("/", 1)[-1]
    try:
        client = _client(uri)
        experiment_id = _experiment_id(client, facts["name"], uri)
        parent = _find_parent(client, experiment_id, name) or _create_parent(client, experiment_id, facts, name,
                                                                             run.uri)
    except Exception as error:  # noqa: BLE001 - the outputs are written; tracking never fails a command
        _warn(f"{what} not logged to MLflow ({uri}): {_first_line(error)}")
        return None
    return client, parent, facts, uri


def log_artifacts(run_location: Location | str, files: Iterable[str], source: Location | None = None,
                  artifact_path: str | None = None) -> str | None:
    """Log `files` (names of files in `source`, default the run directory) as artifacts of the MLflow parent run
    of the `raycf tune` run directory `run_location`, under `artifact_path`. A no-op (None) for a run directory
    without MLflow tracking in its study.json; else the parent run's id. Never raises: the outputs are
    written already, so a server that does not answer (or no mlflow package) is one warning line on stderr."""
    run = Location.of(run_location, "") if isinstance(run_location, str) else run_location
    names = list(files)
    what = ", ".join(names)
    found = _parent_of(run, what)
    if found is None:
        return None
    client, parent, _, uri = found
    if _log_files(client, parent, source or run, names, artifact_path, what, uri):
        return parent
    return None


def _log_files(client: Any, parent: str, source: Location, names: list[str], artifact_path: str | None, what: str,
               uri: str) -> bool:
    try:
        with tempfile.TemporaryDirectory() as local:
            for name in names:
                path = Path(local) / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(source.read_bytes(name))
                client.log_artifact(parent, str(path), artifact_path=_artifact_dir(artifact_path, name))
    except Exception as error:  # noqa: BLE001 - the outputs are written; tracking never fails a command
        _warn(f"{what} not logged to MLflow ({uri}): {_first_line(error)}")
        return False
    return True


def _artifact_dir(artifact_path: str | None, name: str) -> str | None:
    """The artifact directory of file `name` (which may have directories of its own) under `artifact_path`."""
    parts = [part for part in (artifact_path, str(Path(name).parent)) if part and part != "."]
    return "/".join(parts) or None


def log_study(location: Location, facts: dict[str, Any]) -> None:
    """After a study (raycf/tune.py `finish`): its result files on its MLflow parent run, the best trial's
    validation metrics as the parent's `best_valid_*` metrics, the parent run ended, and one line saying where.
    Nothing for a study without MLflow tracking."""
    if not (facts.get("tracking") or {}).get("mlflow"):
        return
    names = [name for name in STUDY_ARTIFACTS if location.has(name)]
    what = ", ".join(names)
    found = _parent_of(location, what)
    if found is None:
        return
    client, parent, _, uri = found
    if not _log_files(client, parent, location, names, None, what, uri):
        return
    try:
        from mlflow.entities import Metric

        best = json.loads(location.read_bytes("best.json")) if "best.json" in names else {}
        now = int(time.time() * 1000)
        client.log_batch(parent, metrics=[Metric(mlflow_name(f"best_valid_{key}"), float(value), now, 0)
                                          for key, value in best.get("valid", {}).items()
                                          if isinstance(value, (int, float)) and math.isfinite(value)])
        client.set_terminated(parent, status="FINISHED")
    except Exception as error:  # noqa: BLE001 - the study's outputs are written
        _warn(f"the end of the study not logged to MLflow ({uri}): {_first_line(error)}")
        return
    print(f"mlflow: experiment {facts['name']!r}, parent run {parent} ({uri})", flush=True)
