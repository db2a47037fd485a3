"""MLflow runs of a study (study key `tracking`, `raycf tune --mlflow URI`), without Ray: the checks before Ray
starts, the parent run of a run directory, and the files and figures logged on it. The trials' own runs are
logged by Ray Tune's logger callbacks (raycf.integrations.tune_loggers).

MLflow (a tracking server, http(s)://, or a local database, sqlite:///PATH). The experiment is named after
the study; each run directory gets a parent run named after it (tags `raycf_role` = `study`, `raycf_study`,
`raycf_run`), created before the first trial starts. Every trial is a child run (tags `mlflow.parentRunId`,
`raycf_study`, `raycf_run`, `raycf_trial_id`, `raycf_model`) whose parameters are its TrainConfig fields (the
run fields and its own model's hyperparameters) and whose metrics are what the trial reported (`valid_ndcg`,
`valid_recall@20`, `best_valid_ndcg`, `train_seconds`, `epoch`, ...; none of Tune's bookkeeping) at step = its
epoch. MLflow refuses `@` in a name: `valid_recall@20` is logged as `valid_recall_at_20`.
When the study ends (`finish` in raycf/tune/driver.py, after a `--resume` too) the parent run gets study.json,
leaderboard.parquet, best.json and trials.parquet (and the repeat and selection files the study made) as
artifacts, the best trial's validation metrics as `best_valid_*` metrics, each trial's run the tags
`stopped_by` and `best_epoch` (from trials.parquet), and ends. `raycf score` adds each output's summary under
an artifact directory named after the output, and its test metrics (`log_scoring`); `raycf report` adds
report.html (`log_artifacts`).

TensorBoard. Ray Tune's `TBXLoggerCallback` writes event files into each trial's directory (Ray Tune
adds it by itself whenever tensorboardX is installed; `tensorboard: true` makes sure of it).

Nothing here imports mlflow, tensorboardX or Ray at module level: raycf runs without the extras, and a
study without tracking never loads them. `check_tracking` runs before Ray starts; a tracking server that
stops answering later costs the rest of the study's tracking (one warning line), never the study.
"""

from __future__ import annotations

import base64
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
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from raycf.errors import RaycfError
from raycf.runs.layout import (
    BEST_FILE,
    LEADERBOARD_FILE,
    REPEATS_FILE,
    REPEATS_SUMMARY,
    SELECT_FILE,
    STUDY_FILE,
    TRIALS_FILE,
)
from raycf.runs.record import BestRecord, StudyRecord
from raycf.storage.location import Location

STUDY_ARTIFACTS = (STUDY_FILE, LEADERBOARD_FILE, BEST_FILE, TRIALS_FILE, REPEATS_FILE, REPEATS_SUMMARY, SELECT_FILE)
"""Run directory files logged on the parent run when a study ends (those that exist)."""
TAG_STUDY, TAG_RUN, TAG_ROLE = "raycf_study", "raycf_run", "raycf_role"
TAG_TRIAL, TAG_MODEL = "raycf_trial_id", "raycf_model"
TAG_STOPPED_BY, TAG_BEST_EPOCH = "stopped_by", "best_epoch"
"""Tags of a trial's run, set when the study ends: its trials.parquet columns of the same names."""
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
    """Before Ray starts: the packages the study's `tracking` (a raycf.study.schema.TrackingSpec) needs are installed,
    and an http(s) tracking server answers. A one-line RaycfError naming where the setting came from."""
    if spec.mlflow is not None:
        require_package("mlflow", f"{spec.mlflow_from} needs the mlflow package: pip install 'raycf[mlflow]'")
        problem = probe(spec.mlflow)
        if problem is None and urllib.parse.urlsplit(spec.mlflow).scheme not in ("http", "https"):
            try:  # a local store (sqlite:///PATH, a directory): opened here, a few seconds at most
                mlflow_client(spec.mlflow).search_experiments(max_results=1)
            except Exception as error:  # noqa: BLE001 - whatever MLflow says, in one line
                problem = first_line(error)
        if problem is not None:
            raise RaycfError(f"{spec.mlflow_from} {spec.mlflow}: {problem}")
    if spec.tensorboard:
        require_package("tensorboardX", f"{spec.tensorboard_from} needs the tensorboardX package: "
                                 "pip install 'raycf[tensorboard]'")


def require_package(module: str, message: str) -> None:
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


def mlflow_client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # 2 lines per run ended otherwise
    return MlflowClient(tracking_uri=uri)


def experiment_id_of(client: Any, name: str, uri: str) -> str:
    """The id of the active experiment `name`, created when missing."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(name)
    if experiment.lifecycle_stage != "active":
        raise RaycfError(f"{uri}: MLflow experiment {name!r} is deleted; restore it (mlflow experiments restore "
                         f"--experiment-id {experiment.experiment_id}) or delete it for good (mlflow gc)")
    return experiment.experiment_id


def quoted(value: str) -> str:
    """`value` as a string literal of an MLflow search filter."""
    return f'"{value}"' if "'" in value else f"'{value}'"


def _find_parent(client: Any, experiment_id: str, run: str) -> str | None:
    """The id of the latest parent run of run directory `run` (its name) in the experiment, if any."""
    found = client.search_runs(
        [experiment_id], filter_string=f"tags.{TAG_RUN} = {quoted(run)} and tags.{TAG_ROLE} = '{PARENT_ROLE}'",
        order_by=["attributes.start_time DESC"], max_results=1)
    return found[0].info.run_id if found else None


def create_parent(client: Any, experiment_id: str, record: StudyRecord, run: str, run_uri: str) -> str:
    """A new parent run for run directory `run_uri` (named `run`), the study's record as its parameters."""
    from mlflow.entities import Param

    tags = {TAG_STUDY: record.name, TAG_RUN: run, TAG_ROLE: PARENT_ROLE}
    parent = client.create_run(experiment_id, run_name=run, tags=tags).info.run_id
    facts = record.to_json()
    params = {**{key: facts.get(key) for key in ("study_file", "seed", "data", "metric", "mode", "scheduler", "max_t",
                                                 "num_samples", "searcher", "report_metrics", "cpus_per_trial",
                                                 "gpus_per_trial")},
              "models": ",".join(record.models), "run_dir": run_uri}
    client.log_batch(parent, params=[Param(mlflow_name(key), param_text(value)[:PARAM_CHARS])
                                     for key, value in params.items() if value is not None])
    return parent


def param_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def first_line(error: BaseException) -> str:
    text = str(getattr(error, "message", "") or error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__


def warn(message: str) -> None:
    print(f"raycf: warning: {message}", file=sys.stderr, flush=True)


class ParentRun(NamedTuple):
    """The MLflow parent run of a tracked `raycf tune` run directory, and how to reach it."""

    client: Any
    run_id: str
    experiment_id: str
    uri: str


def _parent_of(run: Location, what: str) -> ParentRun | None:
    """The MLflow parent run of a `raycf tune` run directory whose study.json asks for MLflow tracking (created
    if missing); None without tracking, or with one warning line when the parent run cannot be reached (no
    mlflow package, no server answering, an MLflow error)."""
    try:
        record = StudyRecord.read(run)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    uri = None if record is None else record.mlflow
    if record is None or not uri:
        return None
    try:
        importlib.import_module("mlflow")
    except ImportError:
        warn(f"{what} not logged to MLflow ({uri}), which tracks this run: that needs the mlflow package: "
              "pip install 'raycf[mlflow]'")
        return None
    problem = probe(uri)
    if problem is not None:
        warn(f"{what} not logged to MLflow: {uri}: {problem}")
        return None
    name = run.uri.rstrip("/").rsplit("/", 1)[-1]
    try:
        client = mlflow_client(uri)
        experiment_id = experiment_id_of(client, record.name, uri)
        parent = _find_parent(client, experiment_id, name) or create_parent(client, experiment_id, record, name,
                                                                             run.uri)
    except Exception as error:  # noqa: BLE001 - the outputs are written; tracking never fails a command
        warn(f"{what} not logged to MLflow ({uri}): {first_line(error)}")
        return None
    return ParentRun(client, parent, experiment_id, uri)


def log_artifacts(run_location: Location | str, files: Iterable[str]) -> str | None:
    """Log `files` (names of files in the run directory) as artifacts of the MLflow parent run of the
    `raycf tune` run directory `run_location`. A no-op (None) for a run directory without MLflow tracking in
    its study.json; else the parent run's id. Never raises: the outputs are written already, so a server
    that does not answer (or no mlflow package) is one warning line on stderr."""
    run = Location.of(run_location, "") if isinstance(run_location, str) else run_location
    names = list(files)
    what = ", ".join(names)
    found = _parent_of(run, what)
    if found is not None and _log_files(found, run, names, None, what):
        return found.run_id
    return None


def _log_files(parent: ParentRun, source: Location, names: list[str], artifact_path: str | None, what: str) -> bool:
    try:
        with tempfile.TemporaryDirectory() as local:
            for name in names:
                path = Path(local) / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(source.read_bytes(name))
                parent.client.log_artifact(parent.run_id, str(path), artifact_path=_artifact_dir(artifact_path, name))
    except Exception as error:  # noqa: BLE001 - the outputs are written; tracking never fails a command
        warn(f"{what} not logged to MLflow ({parent.uri}): {first_line(error)}")
        return False
    return True


def _artifact_dir(artifact_path: str | None, name: str) -> str | None:
    """The artifact directory of file `name` (which may have directories of its own) under `artifact_path`."""
    parts = [part for part in (artifact_path, str(Path(name).parent)) if part and part != "."]
    return "/".join(parts) or None


def log_study(location: Location, record: StudyRecord) -> None:
    """After a study (raycf/tune/driver.py `finish`): its result files on its MLflow parent run, the best trial's
    validation metrics as the parent's `best_valid_*` metrics, each trial's run tagged with how it ended and its
    best epoch (trials.parquet's `stopped_by` and `best_epoch`), the parent run ended, and one line saying where.
    Nothing for a study without MLflow tracking."""
    if not record.mlflow:
        return
    names = [name for name in STUDY_ARTIFACTS if location.has(name)]
    what = ", ".join(names)
    parent = _parent_of(location, what)
    if parent is None or not _log_files(parent, location, names, None, what):
        return
    try:
        best = BestRecord.read(location)
        valid = {f"best_valid_{key}": value for key, value in (best.valid if best else {}).items()}
        parent.client.log_batch(parent.run_id, metrics=_metrics(valid, step=0))
        if location.has(TRIALS_FILE):
            _tag_trial_runs(parent, location.read_bytes(TRIALS_FILE))
        parent.client.set_terminated(parent.run_id, status="FINISHED")
    except Exception as error:  # noqa: BLE001 - the study's outputs are written
        warn(f"the end of the study not logged to MLflow ({parent.uri}): {first_line(error)}")
        return
    print(f"mlflow: experiment {record.name!r}, parent run {parent.run_id} ({parent.uri})", flush=True)


def _tag_trial_runs(parent: ParentRun, trials_parquet: bytes) -> None:
    """Tag each trial's child run `stopped_by` and `best_epoch`, from the study's trials.parquet (its bytes)."""
    from mlflow.entities import RunTag

    columns = ["trial_id", TAG_STOPPED_BY, TAG_BEST_EPOCH]
    rows = pq.read_table(pa.BufferReader(trials_parquet), columns=columns).to_pylist()
    endings = {row["trial_id"]: row for row in rows}
    for run in _child_runs(parent):
        row = endings.get(run.data.tags.get(TAG_TRIAL))
        if row is not None:
            parent.client.log_batch(run.info.run_id, tags=[RunTag(TAG_STOPPED_BY, str(row[TAG_STOPPED_BY])),
                                                           RunTag(TAG_BEST_EPOCH, str(row[TAG_BEST_EPOCH]))])


def _child_runs(parent: ParentRun, trial_id: str | None = None) -> list[Any]:
    """The trial runs under `parent` (only trial `trial_id`'s, when given), every page of them."""
    query = f"tags.`{PARENT_TAG}` = {quoted(parent.run_id)}"
    if trial_id is not None:
        query += f" and tags.{TAG_TRIAL} = {quoted(trial_id)}"
    runs: list[Any] = []
    token = None
    while True:
        page = parent.client.search_runs([parent.experiment_id], filter_string=query, max_results=1000,
                                         page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _metrics(values: dict[str, Any], step: int) -> list[Any]:
    """MLflow metrics (names through `mlflow_name`) of the finite numbers among `values`, at `step`."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(mlflow_name(key), float(value), now, step) for key, value in values.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)]


def output_artifact_dir(run: Location, out: Location) -> str:
    """The artifact directory of output `out` of run directory `run`: its path relative to the run directory
    when it lies inside (`scores`, `scores-ease`), else its whole path without the leading `/`
    (`tmp/x/scores`; on an object store `bucket/x/scores`). Two outputs never share one."""
    base = run.path.rstrip("/") + "/"
    inside = type(out.filesystem) is type(run.filesystem) and out.path.startswith(base)
    return out.path[len(base):] if inside else out.path.strip("/")


def log_scoring(run: Location, out: Location, files: list[str], metrics: dict[str, float], model: str,
                trial_id: str | None, epoch: int | None) -> str | None:
    """After `raycf score` committed output `out` of the tracked run directory `run`: its summary `files` on the
    study's MLflow parent run, under the output's own artifact directory (`output_artifact_dir`), and its test
    `metrics` (by label: `ndcg@5`, `recall@20`) as metrics `test_<label>_<model>` of the parent run and
    `test_<label>` of the scored trial's run (`trial_id`), at step = the checkpoint's `epoch` (MLflow keeps every
    value logged, so a later scoring adds to a metric's history).

    The parent run's id; None for a run without MLflow tracking. Never raises: the output is written already,
    so a server that does not answer (or no mlflow package) is one warning line on stderr."""
    what = ", ".join(files)
    parent = _parent_of(run, what)
    if parent is None or not _log_files(parent, out.current(), files, output_artifact_dir(run, out), what):
        return None
    step = epoch or 0
    try:
        by_model = {f"test_{label}_{model}": value for label, value in metrics.items()}
        parent.client.log_batch(parent.run_id, metrics=_metrics(by_model, step))
        for trial_run in _child_runs(parent, trial_id) if trial_id else []:
            own = {f"test_{label}": value for label, value in metrics.items()}
            parent.client.log_batch(trial_run.info.run_id, metrics=_metrics(own, step))
    except Exception as error:  # noqa: BLE001 - the output is written; tracking never fails a command
        warn(f"the test metrics of {out.uri} not logged to MLflow ({parent.uri}): {first_line(error)}")
        return None
    return parent.run_id
