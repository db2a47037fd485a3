"""Experiment tracking: a study's trials in a real MLflow tracking server (`mlflow server`, started here on
127.0.0.1), read back through the MLflow client, and TensorBoard event files in each trial's directory."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pandas as pd
import pytest
import ray
from conftest import TINY_STUDY, free_ports, run_raycf, wait_for_port
from mlflow.tracking import MlflowClient

from raycf.errors import RaycfError
from raycf.integrations.mlflow_runs import (
    PARENT_TAG,
    TAG_BEST_EPOCH,
    TAG_ROLE,
    TAG_RUN,
    TAG_STOPPED_BY,
    TAG_TRIAL,
    check_tracking,
    log_artifacts,
    log_scoring,
    mlflow_name,
    output_artifact_dir,
    probe,
)
from raycf.integrations.tune_loggers import tracking_callbacks
from raycf.models.config import RUN_FIELDS
from raycf.models.registry import model_class
from raycf.runs.layout import BEST_FILE
from raycf.storage.location import Location, parse_results
from raycf.study.schema import TrackingSpec, apply_overrides, load_study
from raycf.tune.driver import LEADERBOARD_FILE, STUDY_FILE, TRIALS_FILE, study_record

REPORTED = ("valid_precision", "valid_recall", "valid_ndcg", "valid_mrr", "valid_recall@20")
"""The validation metrics every trial of the tracked study reports each epoch."""
TUNE_BOOKKEEPING = {"pid", "done", "should_checkpoint", "iterations_since_restore", "timestamp", "training_iteration",
                    "time_total_s", "time_this_iter_s", "time_since_restore"}
"""What Ray Tune adds to every result: never an MLflow metric of a trial."""
TRACKED_STUDY = TINY_STUDY + "report_metrics: [recall@20]\ntracking: {tensorboard: true}\n"


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mlflow server` on a free loopback port (SQLite backend, proxied artifacts in a temp dir), stopped with
    its whole process group at the end; its URI."""
    base = tmp_path_factory.mktemp("mlflow")
    (port,) = free_ports(1)
    uri = f"http://127.0.0.1:{port}"
    command = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1", "--backend-store-uri", f"sqlite:///{base / 'mlflow.db'}",
               "--artifacts-destination", str(base / "artifacts")]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true",
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job runner processes: a faster start
    with open(base / "server.log", "wb") as log:
        server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_port(port, 180)
        deadline = time.monotonic() + 60
        while probe(uri) is not None:  # the port opens a moment before the REST API answers
            assert time.monotonic() < deadline, (base / "server.log").read_text()[-2000:]
            time.sleep(0.5)
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


@dataclass
class TrackedRun:
    run_dir: Path
    uri: str
    out: str
    err: str


@pytest.fixture(scope="module")
def tracked(ray_cluster, mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> TrackedRun:
    """The tiny study (6 trials, also reporting recall@20), `tracking: {tensorboard: true}` in its file and
    `--mlflow URI` on the command line."""
    base = tmp_path_factory.mktemp("tracked")
    (base / "tiny.yaml").write_text(TRACKED_STUDY)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run_raycf("tune", str(base / "tiny.yaml"), "--storage", str(base / "runs"), "--name", "tracked",
                         "--mlflow", mlflow_server)
    assert code == 0, err.getvalue()[-3000:]
    return TrackedRun(base / "runs" / "tracked", mlflow_server, out.getvalue(), err.getvalue())


def reported_epochs(run_dir: Path, trial_id: str) -> list[dict]:
    """Every result the trial reported (its result.json), in order."""
    (trial_dir,) = [path for path in run_dir.iterdir() if path.is_dir() and trial_id in path.name]
    return parse_results((trial_dir / "result.json").read_text())


def study_runs(client: MlflowClient, run_name: str) -> tuple[object, list[object]]:
    """The parent run of run directory `run_name` and its child runs."""
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.{TAG_RUN} = '{run_name}'")
    (parent,) = [run for run in runs if run.data.tags.get(TAG_ROLE) == "study"]
    return parent, [run for run in runs if run is not parent]


def test_every_trials_parameters_and_validation_metrics_reach_mlflow(tracked: TrackedRun) -> None:
    client = MlflowClient(tracked.uri)
    parent, children = study_runs(client, "tracked")
    lines = tracked.out.splitlines()  # the console names the parent run's page before the first trial's table
    page = f"{tracked.uri.rstrip('/')}/#/experiments/{parent.info.experiment_id}/runs/{parent.info.run_id}"
    before = lines[:next(index for index, line in enumerate(lines) if line.startswith("== "))]
    assert f"mlflow: experiment 'tiny', parent run {page}" in before, before
    assert f"tensorboard: tensorboard --logdir {tracked.run_dir}" in before, before
    trials = pd.read_parquet(tracked.run_dir / TRIALS_FILE)
    assert len(trials) == 6
    assert sorted(run.data.tags[TAG_TRIAL] for run in children) == sorted(trials["trial_id"])
    for _, trial in trials.iterrows():
        (run,) = [run for run in children if run.data.tags[TAG_TRIAL] == trial["trial_id"]]
        assert run.data.tags[PARENT_TAG] == parent.info.run_id and run.info.status == "FINISHED"
        params = run.data.params
        assert params["model"] == trial["model"] and params["hidden"] == "16" and params["lr"] == "0.01"
        searched = "beta" if trial["model"] == "multvae" else "l2"
        assert float(params[searched]) == trial[f"hp_{searched}"]
        assert set(params) == {*RUN_FIELDS, *model_class(trial["model"]).Params.names()}  # its own model's only
        assert not set(run.data.metrics) & TUNE_BOOKKEEPING, set(run.data.metrics) & TUNE_BOOKKEEPING
        assert run.data.tags[TAG_STOPPED_BY] == trial["stopped_by"]
        assert run.data.tags[TAG_BEST_EPOCH] == str(trial["best_epoch"])
        results = reported_epochs(tracked.run_dir, trial["trial_id"])
        assert [result["epoch"] for result in results] == list(range(1, trial["epochs_run"] + 1))
        for key in (*REPORTED, "epoch", "train_seconds", "best_valid_ndcg"):
            history = sorted(client.get_metric_history(run.info.run_id, mlflow_name(key)), key=lambda m: m.step)
            assert [point.step for point in history] == [result["epoch"] for result in results], key
            assert [point.value for point in history] == pytest.approx([result[key] for result in results]), key
    assert "valid_recall_at_20" in children[0].data.metrics  # MLflow refuses '@' in a name
    assert "mlflow: experiment 'tiny', parent run " + parent.info.run_id in tracked.out


def test_the_parent_run_holds_the_studys_results(tracked: TrackedRun, tmp_path: Path) -> None:
    client = MlflowClient(tracked.uri)
    parent, _ = study_runs(client, "tracked")
    assert parent.info.status == "FINISHED" and parent.info.run_name == "tracked"
    assert parent.data.params["metric"] == "ndcg@5" and parent.data.params["models"] == "multvae,autorec"
    artifacts = {artifact.path for artifact in client.list_artifacts(parent.info.run_id)}
    assert {LEADERBOARD_FILE, BEST_FILE, TRIALS_FILE, STUDY_FILE} <= artifacts
    for name in (LEADERBOARD_FILE, BEST_FILE):
        local = client.download_artifacts(parent.info.run_id, name, str(tmp_path))
        assert Path(local).read_bytes() == (tracked.run_dir / name).read_bytes()
    best = json.loads((tracked.run_dir / BEST_FILE).read_text())
    assert parent.data.metrics["best_valid_ndcg"] == pytest.approx(best["valid"]["ndcg"])
    facts = json.loads((tracked.run_dir / STUDY_FILE).read_text())
    assert facts["tracking"] == {"mlflow": tracked.uri, "tensorboard": True}


def test_the_report_is_logged_on_the_parent_run(tracked: TrackedRun, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_raycf("report", str(tracked.run_dir)) == 0
    client = MlflowClient(tracked.uri)
    parent, _ = study_runs(client, "tracked")
    assert log_artifacts(str(tracked.run_dir), ["report.html"]) == parent.info.run_id
    assert "report.html" in {artifact.path for artifact in client.list_artifacts(parent.info.run_id)}
    assert capsys.readouterr().err.count("raycf: warning") == 0


def test_two_scorings_of_two_models_keep_both_summaries_and_test_metrics(tracked: TrackedRun,
                                                                         tmp_path: Path) -> None:
    """Each `raycf score` output under its own artifact directory, its test metrics on the parent run (named by
    model) and on the scored trial's run (at step = the checkpoint's epoch)."""
    client = MlflowClient(tracked.uri)
    parent, children = study_runs(client, "tracked")
    summaries = {}
    for model in ("multvae", "autorec"):
        out = tracked.run_dir / f"scores-{model}"
        assert run_raycf("score", str(tracked.run_dir), "--model", model, "--out", str(out), "--actors", "1") == 0
        summaries[model] = json.loads((out / "summary.json").read_text())
    parent = client.get_run(parent.info.run_id)
    for model, summary in summaries.items():
        assert summary["model"] == model
        listed = [artifact.path for artifact in client.list_artifacts(parent.info.run_id, f"scores-{model}")]
        assert sorted(listed) == [f"scores-{model}/summary.json", f"scores-{model}/summary.parquet"]
        local = client.download_artifacts(parent.info.run_id, f"scores-{model}/summary.json", str(tmp_path))
        assert json.loads(Path(local).read_text()) == summary
        labels = {"precision@5": "precision", "recall@5": "recall", "ndcg@5": "ndcg", "mrr@5": "mrr",
                  "recall@20": "recall@20"}
        for label, key in labels.items():
            name = mlflow_name(f"test_{label}_{model}")  # test_ndcg_at_5_multvae
            assert parent.data.metrics[name] == pytest.approx(summary[key]), name
        (scored,) = [run for run in children if run.data.tags[TAG_TRIAL] == summary["trial_id"]]
        for label, key in labels.items():
            (point,) = client.get_metric_history(scored.info.run_id, mlflow_name(f"test_{label}"))
            assert point.value == pytest.approx(summary[key]) and point.step == summary["checkpoint_epoch"]
    scored_ids = {summary["trial_id"] for summary in summaries.values()}
    for run in children:
        tested = {name for name in client.get_run(run.info.run_id).data.metrics if name.startswith("test_")}
        assert bool(tested) == (run.data.tags[TAG_TRIAL] in scored_ids), (run.data.tags[TAG_TRIAL], tested)


def test_each_output_has_an_artifact_directory_of_its_own(tmp_path: Path) -> None:
    run = Location.of(str(tmp_path / "runs" / "study"), "")
    assert output_artifact_dir(run, run.child("scores")) == "scores"
    assert output_artifact_dir(run, run.child("scores/ease")) == "scores/ease"
    elsewhere = tmp_path / "runs" / "study-scores"  # beside the run, its name starting as the run's
    assert output_artifact_dir(run, Location.of(str(elsewhere), "")) == str(elsewhere).lstrip("/")


def test_an_out_that_would_replace_the_run_or_its_files_is_refused(tracked: TrackedRun,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """A scoring replaces its --out whole (and logs it under an artifact directory named after it): the run
    directory itself, its split, the folder of runs or a file is refused in one line, and nothing changes."""
    def files() -> list[tuple[str, int]]:
        return sorted((str(path), path.stat().st_size) for path in tracked.run_dir.parent.rglob("*"))

    def artifacts() -> list[str]:
        return [artifact.path for artifact in client.list_artifacts(parent.info.run_id)]

    client = MlflowClient(tracked.uri)
    parent, _ = study_runs(client, "tracked")
    before, logged = files(), artifacts()
    capsys.readouterr()
    refusal = "which is no `raycf score` output, and a scoring replaces its --out whole; give a new directory"
    for out, fragment in ((tracked.run_dir, refusal), (tracked.run_dir / "split", refusal),
                          (tracked.run_dir.parent, f"holds tracked, {refusal}"),
                          (tracked.run_dir / STUDY_FILE, "a file, not a directory")):
        assert run_raycf("score", str(tracked.run_dir), "--out", str(out)) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and error.startswith(f"raycf: error: --out {out}: "), error
        assert fragment in error, error
    assert files() == before and artifacts() == logged


def test_tensorboard_event_files_in_every_trial_directory(tracked: TrackedRun) -> None:
    trial_dirs = [path for path in tracked.run_dir.iterdir() if path.is_dir() and path.name.startswith("run_trial")]
    assert len(trial_dirs) == 6
    for trial_dir in trial_dirs:
        (events,) = trial_dir.glob("events.out.tfevents.*")
        assert b"valid_ndcg" in events.read_bytes()


def test_resuming_a_tracked_study_keeps_its_runs(tracked: TrackedRun, capsys: pytest.CaptureFixture[str]) -> None:
    """`--resume` restores the MLflow callback from the saved Tuner (by name) and finds the parent run again."""
    client = MlflowClient(tracked.uri)
    parent, children = study_runs(client, "tracked")
    assert run_raycf("tune", "--resume", str(tracked.run_dir)) == 0
    assert f"parent run {parent.info.run_id}" in capsys.readouterr().out
    again, children_again = study_runs(client, "tracked")
    assert again.info.run_id == parent.info.run_id and again.info.status == "FINISHED"
    assert sorted(run.info.run_id for run in children_again) == sorted(run.info.run_id for run in children)


def test_tensorboard_true_adds_tunes_tbx_logger_callback(tmp_path: Path) -> None:
    from ray.tune.logger import TBXLoggerCallback

    (tmp_path / "s.yaml").write_text(TINY_STUDY + "tracking: {tensorboard: true}\n")
    study = load_study(tmp_path / "s.yaml")
    callbacks = tracking_callbacks(study.tracking, study_record(study), str(tmp_path), "run")
    assert [type(callback) for callback in callbacks] == [TBXLoggerCallback]
    assert tracking_callbacks(TrackingSpec(), study_record(study), str(tmp_path), "run") == []


def closed_port() -> int:
    (port,) = free_ports(1)  # nothing listens there once free_ports returns
    return port


def test_unreachable_tracking_uri_fails_before_ray_starts(tmp_path: Path) -> None:
    (tmp_path / "tiny.yaml").write_text(TINY_STUDY)
    uri = f"http://127.0.0.1:{closed_port()}"
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "raycf", "tune", str(tmp_path / "tiny.yaml"), "--mlflow", uri,
                           "--storage", str(tmp_path / "runs")], capture_output=True, text=True, check=False)
    assert done.returncode == 2 and time.monotonic() - started < 60
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"raycf: error: --mlflow {uri}: no MLflow tracking server"), lines
    assert "mlflow server" in lines[0] and "Traceback" not in done.stderr
    assert "Ray" not in done.stdout and "dashboard" not in done.stdout
    assert sorted(path.name for path in tmp_path.iterdir()) == ["tiny.yaml"]


@pytest.mark.parametrize(("tracking", "module", "expected"), [
    ("{mlflow: http://127.0.0.1:5000}", "mlflow",
     "s.yaml: tracking.mlflow needs the mlflow package: pip install 'raycf[mlflow]'"),
    ("{tensorboard: true}", "tensorboardX",
     "s.yaml: tracking.tensorboard needs the tensorboardX package: pip install 'raycf[tensorboard]'"),
])
def test_tracking_without_its_package_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str], tracking: str,
                                                           module: str, expected: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # `import module` fails as if it were not installed
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda *args, **kwargs: pytest.fail("Ray started before tracking was checked"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    (tmp_path / "s.yaml").write_text(f"{TINY_STUDY}tracking: {tracking}\n")
    assert run_raycf("tune", str(tmp_path / "s.yaml"), "--storage", str(tmp_path / "runs")) == 2
    error = capsys.readouterr().err
    assert error == f"raycf: error: {tmp_path / 's.yaml'}: {expected.removeprefix('s.yaml: ')}\n"
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("tracking", "fragment"), [
    ("{wandb: x}", "tracking.wandb: unknown key; allowed in tracking: mlflow, tensorboard"),
    ("{mlflow: 5}", "tracking.mlflow: must be an MLflow tracking URI such as http://127.0.0.1:5000"),
    ("{mlflow: ''}", "tracking.mlflow: must be an MLflow tracking URI"),
    ("{tensorboard: yes please}", "tracking.tensorboard: must be true or false, got 'yes please'"),
    ("[mlflow]", "tracking: must be a mapping of keys mlflow, tensorboard"),
])
def test_bad_tracking_key_is_one_line_naming_it(tmp_path: Path, tracking: str, fragment: str) -> None:
    (tmp_path / "s.yaml").write_text(f"{TINY_STUDY}tracking: {tracking}\n")
    with pytest.raises(RaycfError) as error:
        load_study(tmp_path / "s.yaml")
    assert str(error.value).startswith(f"{tmp_path / 's.yaml'}: {fragment}"), str(error.value)


def test_tracking_settings_paths_and_the_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "s.yaml").write_text(f"{TINY_STUDY}tracking: {{mlflow: mlruns}}\n")
    study = load_study(tmp_path / "s.yaml")
    assert study.tracking.mlflow == str(tmp_path / "mlruns")  # relative to the study file, as data.ratings
    assert study_record(study).to_json()["tracking"] == {"mlflow": str(tmp_path / "mlruns"), "tensorboard": False}
    monkeypatch.chdir(tmp_path / "..")
    assert apply_overrides(study, mlflow="http://h:5000").tracking == TrackingSpec("http://h:5000")
    assert apply_overrides(study, mlflow="here").tracking.mlflow == str(tmp_path.parent / "here")
    assert apply_overrides(study, mlflow="here").tracking.mlflow_from == "--mlflow"
    (tmp_path / "plain.yaml").write_text(TINY_STUDY)
    assert study_record(load_study(tmp_path / "plain.yaml")).to_json()["tracking"] is None
    with pytest.raises(RaycfError, match="^--mlflow: must be an MLflow tracking URI"):
        apply_overrides(study, mlflow="two words")
    (tmp_path / "db.yaml").write_text(f"{TINY_STUDY}tracking: {{mlflow: 'sqlite:///db/mlflow.db'}}\n")
    local = load_study(tmp_path / "db.yaml").tracking
    assert local.mlflow == f"sqlite:///{tmp_path / 'db' / 'mlflow.db'}"
    check_tracking(local)  # a local database is opened (made) before Ray starts
    assert (tmp_path / "db" / "mlflow.db").is_file()


def test_a_server_that_is_not_mlflow_and_a_closed_port_are_told_apart(tmp_path: Path) -> None:
    class NotFound(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_error(404)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert "not as an MLflow tracking server" in probe(f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()
    assert "no MLflow tracking server answers there (connection refused)" in probe(f"http://127.0.0.1:{closed_port()}")
    assert probe(str(tmp_path / "mlruns")) is None  # a directory: nothing to reach
    with pytest.raises(RaycfError, match="^--mlflow http://127.0.0.1:[0-9]+: no MLflow tracking server answers"):
        check_tracking(TrackingSpec(f"http://127.0.0.1:{closed_port()}", mlflow_from="--mlflow"))


class FakeTrial:
    """What the MLflow callback reads of a Tune trial."""

    def __init__(self, trial_id: str) -> None:
        self.trial_id, self.config = trial_id, {"trial": {"model": "pop"}}

    def __str__(self) -> str:
        return f"run_trial_{self.trial_id}"


def test_a_server_failing_mid_study_costs_one_warning_not_the_study(monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    import ray.cloudpickle

    import raycf.integrations.tune_loggers

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # MLflow's own retries take minutes
    uri = f"http://127.0.0.1:{closed_port()}"
    logger = raycf.integrations.tune_loggers.StudyMLflowLogger(tracking_uri=uri, experiment_name="x",
                                                               tags={PARENT_TAG: "p"})
    assert (type(ray.cloudpickle.loads(ray.cloudpickle.dumps(logger)))
            is raycf.integrations.tune_loggers.StudyMLflowLogger)
    logger.mlflow_util.experiment_id, logger._trial_runs = "0", {}  # as its setup leaves them
    for trial in (FakeTrial("a"), FakeTrial("b")):
        logger.log_trial_start(trial)
        logger.log_trial_result(1, trial, {"epoch": 1, "valid_ndcg": 0.3})
        logger.log_trial_end(trial)
    error = capsys.readouterr().err
    assert error.count("\n") == 1, error
    assert error.startswith(f"raycf: warning: mlflow {uri}: starting the run of trial a failed, trials are no longer")


def test_logging_to_a_run_without_tracking_or_an_unreachable_server(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """log_artifacts never fails the command that calls it: a run without tracking is left alone, and a
    server that does not answer is one warning line."""
    (tmp_path / "plain").mkdir()
    plain = Location.of(str(tmp_path / "plain"), "")
    record = study_record(load_study(Path(__file__).resolve().parents[1] / "studies" / "quickstart.yaml"))
    record.write(plain)
    (tmp_path / "plain" / "report.html").write_text("<html></html>")
    assert log_artifacts(str(tmp_path / "plain"), ["report.html"]) is None
    assert log_artifacts(str(tmp_path / "nowhere"), ["report.html"]) is None
    assert capsys.readouterr().err == ""
    uri = f"http://127.0.0.1:{closed_port()}"
    dataclasses.replace(record, tracking={"mlflow": uri, "tensorboard": False}).write(plain)
    assert log_artifacts(str(tmp_path / "plain"), ["report.html"]) is None
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith(f"raycf: warning: report.html not logged to MLflow: {uri}")
    scores = Location.of(str(tmp_path / "plain" / "scores"), "")
    assert log_scoring(plain, scores, ["summary.json"], {"ndcg@5": 0.3}, "pop", "t1", 1) is None
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith(f"raycf: warning: summary.json not logged to MLflow: {uri}")
