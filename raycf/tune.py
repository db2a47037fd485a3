"""Ray Tune wiring: one function trainable per trial, ASHA on validation NDCG@5, resume, leaderboard."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
import ray
import torch
from ray import tune

from raycf.asha import PerModelASHA
from raycf.config import TrainConfig
from raycf.data.source import DataSpec, prepare_split
from raycf.data.split import Split, load_split, save_split
from raycf.errors import RaycfError
from raycf.metrics import METRICS
from raycf.models.checkpoint import save_checkpoint
from raycf.repeats import run_repeats
from raycf.storage import Location, parquet_bytes
from raycf.study import Study
from raycf.train import Trainer

SPLIT_DIR = "split"
STUDY_FILE = "study.json"
LEADERBOARD_FILE = "leaderboard.parquet"
TRIALS_FILE = "trials.parquet"
BEST_FILE = "best.json"
MODEL_FILE = "model.pt"
STATE_FILE = "trainer.pt"
TIME_ATTR = "epoch"


def metric_name(study_metric: str) -> str:
    """The reported key that ASHA and model selection watch, e.g. valid_ndcg."""
    return f"valid_{study_metric}"


def write_trial_checkpoint(trainer: Trainer, directory: Path) -> None:
    """model.pt (a raycf checkpoint of the current, best weights) + trainer.pt (the rest of the state)."""
    state = trainer.state_dict()
    del state["model"]  # model.pt holds the weights
    save_checkpoint(directory / MODEL_FILE, trainer.model, meta={"epoch": trainer.epoch, "valid": trainer.best_valid})
    torch.save(state, directory / STATE_FILE)


def restore_trial_checkpoint(trainer: Trainer, directory: Path) -> None:
    payload = torch.load(directory / MODEL_FILE, map_location="cpu", weights_only=True)
    state = torch.load(directory / STATE_FILE, map_location="cpu", weights_only=True)
    trainer.load_state_dict({**state, "model": payload["state_dict"]})


def run_trial(config: dict[str, Any], split: Split) -> None:
    """The function trainable: train one config, report every validated epoch, checkpoint improvements."""
    train_config = TrainConfig.from_dict(config["trial"], where="trial")
    resources = ray.get_runtime_context().get_assigned_resources()
    torch.set_num_threads(max(1, int(resources.get("CPU", 1.0))))
    device = "cuda" if resources.get("GPU", 0) > 0 and torch.cuda.is_available() else "cpu"
    trainer = Trainer(split, train_config, device)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            restore_trial_checkpoint(trainer, Path(directory))
    while not trainer.finished:
        report = trainer.run_epoch()
        if report.valid is None:
            continue
        metrics = {
            TIME_ATTR: report.epoch,
            "model": train_config.model,
            "train_seconds": report.train_seconds,
            "valid_seconds": report.valid_seconds,
            "best_epoch": trainer.best_epoch,
            **{f"valid_{name}": report.valid[name] for name in METRICS},
            **{f"best_valid_{name}": trainer.best_valid[name] for name in METRICS},
        }
        if not report.improved:
            tune.report(metrics)
            continue
        with tempfile.TemporaryDirectory() as directory:
            write_trial_checkpoint(trainer, Path(directory))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))


@dataclass(frozen=True)
class TuneOptions:
    """How and where to run a study (the command line's choices)."""

    storage: str
    """A local directory or a URI pyarrow understands."""
    name: str
    verbose: int = 1


def check_reachable(address: str, timeout: float = 3.0) -> None:
    """Fail fast on a HOST:PORT no one answers at (ray.init would wait for minutes)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise RaycfError(f"--address {address}: expected HOST:PORT (e.g. 10.0.0.1:6379), 'auto' or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as error:
        raise RaycfError(f"cannot reach a Ray cluster at {address} ({error.strerror or error}); check --address / "
                         "RAY_ADDRESS and that the head node runs `ray start --head`, or unset both to start a "
                         "local Ray") from None


def connect(address: str | None) -> str | None:
    """Join the cluster at `address` (or $RAY_ADDRESS), else start a local Ray sized to this machine.

    Returns the dashboard's URL when this call started or joined Ray and a dashboard runs.
    """
    if ray.is_initialized():
        return None
    # "local" starts a Ray of our own even when another Ray runs on this machine: without it, ray.init()
    # joins the latest local cluster it finds, however unrelated.
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    if address not in ("local", "auto"):
        check_reachable(address)
    try:
        context = ray.init(address=address, logging_level="WARNING")
    except ConnectionError as error:
        raise RaycfError(
            f"cannot reach a Ray cluster at {address}: "
            f"{str(error).splitlines()[0]}; check --address / RAY_ADDRESS, or unset both to start a local Ray"
        ) from None
    url = context.dashboard_url
    return f"http://{url}" if url else None


# A trial checkpoints at every improving epoch and keeps one checkpoint, which makes Tune snapshot its
# experiment state each time (so that --resume never points at a deleted checkpoint): that is intended.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


def build_tuner(study: Study, split: Split, options: TuneOptions) -> tune.Tuner:
    """A Tuner for `study` whose trials share `split` through the object store."""
    from ray.tune.schedulers import FIFOScheduler
    from ray.tune.search import BasicVariantGenerator

    metric = metric_name(study.metric)
    if study.scheduler.type == "asha":
        scheduler = PerModelASHA(
            time_attr=TIME_ATTR,
            max_t=study.scheduler.max_t,
            grace_period=study.scheduler.grace_period,
            reduction_factor=study.scheduler.reduction_factor,
        )
    else:
        scheduler = FIFOScheduler()
    return tune.Tuner(
        trainable_for(split, study_facts(study)),
        param_space=study.param_space(),
        tune_config=tune.TuneConfig(
            metric=metric,
            mode=study.mode,
            scheduler=scheduler,
            search_alg=BasicVariantGenerator(random_state=study.seed),
            num_samples=study.num_samples,
            max_concurrent_trials=study.max_concurrent,
        ),
        run_config=tune.RunConfig(
            name=options.name,
            storage_path=str(options.storage),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=study.max_failures),
            verbose=options.verbose,
        ),
    )


def study_facts(study: Study) -> dict[str, Any]:
    """What a resumed run and the leaderboard need to know of the study (written to study.json)."""
    return {
        "study_file": str(study.path),
        "name": study.name,
        "seed": study.seed,
        "data": study.data.describe(),
        "fractions": list(study.fractions),
        "metric": study.metric,
        "mode": study.mode,
        "scheduler": study.scheduler.type,
        "max_t": study.scheduler.max_t,
        "cpus_per_trial": study.cpus_per_trial,
        "gpus_per_trial": study.gpus_per_trial,
        "num_samples": study.num_samples,
        "models": [search.model for search in study.models],
        "data_spec": dataclasses.asdict(study.data),
        "repeat_seeds": list(study.repeat_seeds),
    }


def trainable_for(split: Split, facts: dict[str, Any]) -> Any:
    """run_trial with the split in the object store and the study's resources per trial."""
    return tune.with_resources(
        tune.with_parameters(run_trial, split=split),
        {"cpu": facts["cpus_per_trial"], "gpu": facts["gpus_per_trial"]},
    )


@dataclass(frozen=True)
class StudyResult:
    run_dir: str
    leaderboard: pd.DataFrame
    repeats: pd.DataFrame | None
    """Test metrics of the best configurations on every repeat seed (when the study asks for repeats)."""


def finish(location: Location, facts: dict[str, Any], results: tune.ResultGrid, seconds: float) -> StudyResult:
    """Leaderboard and best.json, then the seed repeats the study asks for."""
    leaderboard = write_results(location, facts, results, seconds)
    repeats = None
    if facts["repeat_seeds"]:
        repeats = run_repeats(location, DataSpec(**facts["data_spec"]), tuple(facts["fractions"]),
                              tuple(facts["repeat_seeds"]), leaderboard, facts["cpus_per_trial"])
    return StudyResult(location.uri, leaderboard, repeats)


def run_study(study: Study, options: TuneOptions) -> StudyResult:
    """Split once, run every trial, write the leaderboard (and the seed repeats)."""
    location = Location.of(options.storage, options.name)
    if location.is_used():
        raise RaycfError(f"{location.uri}: a run of that name exists; pick another --name, or --resume {location.uri}")
    split = prepare_split(study.data, study.fractions, study.seed)
    facts = study_facts(study)
    with tempfile.TemporaryDirectory() as staging:
        save_split(split, Path(staging) / SPLIT_DIR)
        (Path(staging) / STUDY_FILE).write_text(json.dumps(facts, indent=2, sort_keys=True) + "\n")
        location.put_directory(Path(staging))
    started = time.perf_counter()
    results = build_tuner(study, split, replace(options, storage=location.parent_uri)).fit()
    return finish(location, facts, results, time.perf_counter() - started)


def resume_study(run_dir: str) -> StudyResult:
    """Continue an interrupted study: unfinished and errored trials go on from their last checkpoint."""
    location = Location.of(run_dir, "")
    if not location.has(STUDY_FILE) or not tune.Tuner.can_restore(location.uri):
        raise RaycfError(f"{run_dir}: no raycf study to resume there; give the run directory that `raycf tune` printed")
    facts = json.loads(location.read_bytes(STUDY_FILE))
    with tempfile.TemporaryDirectory() as local:
        split = load_split(location.get_directory(SPLIT_DIR, Path(local)))
    started = time.perf_counter()
    tuner = tune.Tuner.restore(
        location.uri, trainable=trainable_for(split, facts), resume_unfinished=True, resume_errored=True
    )
    results = tuner.fit()
    return finish(location, facts, results, time.perf_counter() - started)


def stop_reason(row: dict[str, Any], patience: int, max_t: int) -> str:
    """Why a trial ended: its own early stopping, the epoch limit, ASHA, or an error."""
    if row["error"]:
        return "error"
    if row["epochs_run"] - row["best_epoch"] >= patience:
        return "patience"
    if row["epochs_run"] >= max_t:
        return "max_t"
    return "asha"


def trial_table(location: Location, facts: dict[str, Any], results: tune.ResultGrid) -> pd.DataFrame:
    """One row per trial: its hyperparameters, best epoch, best validation metrics and checkpoint."""
    rows = []
    for result in results:
        config = result.config["trial"]
        metrics = result.metrics or {}
        row = {
            "trial_id": metrics.get("trial_id", Path(result.path).name),
            "model": config["model"],
            "epochs_run": int(metrics.get(TIME_ATTR, 0)),
            "best_epoch": int(metrics.get("best_epoch", 0)),
            **{f"valid_{name}": float(metrics.get(f"best_valid_{name}", float("nan"))) for name in METRICS},
            "checkpoint": location.uri_of(f"{result.checkpoint.path}/{MODEL_FILE}") if result.checkpoint else None,
            "error": str(result.error).splitlines()[0][:300] if result.error else None,
            "config": json.dumps(config, sort_keys=True),
            **{f"hp_{key}": value for key, value in config.items() if key != "model"},
        }
        row["stopped_by"] = stop_reason(row, config["patience"], facts["max_t"])
        rows.append(row)
    return pd.DataFrame(rows)


def write_results(location: Location, facts: dict[str, Any], results: tune.ResultGrid, seconds: float) -> pd.DataFrame:
    """trials.parquet (all), leaderboard.parquet (best trial per model), best.json (best overall)."""
    trials = trial_table(location, facts, results)
    location.write_bytes(TRIALS_FILE, parquet_bytes(trials))
    key = metric_name(facts["metric"])
    usable = trials[trials["checkpoint"].notna()]
    if usable.empty:
        raise RaycfError(f"{location.uri}: no trial finished an epoch with a checkpoint; see the errors in {TRIALS_FILE}")
    ascending = facts["mode"] == "min"
    ranked = usable.sort_values([key, "trial_id"], ascending=[ascending, True])
    leaderboard = ranked.groupby("model", sort=False).head(1).reset_index(drop=True)
    location.write_bytes(LEADERBOARD_FILE, parquet_bytes(leaderboard))
    best = leaderboard.iloc[0]
    summary = {
        "model": best["model"],
        "trial_id": best["trial_id"],
        "checkpoint": best["checkpoint"],
        "best_epoch": int(best["best_epoch"]),
        "valid": {name: float(best[f"valid_{name}"]) for name in METRICS},
        "config": json.loads(best["config"]),
        "metric": key,
        "mode": facts["mode"],
        "split": f"{location.uri}/{SPLIT_DIR}",
        "trials": int(len(trials)),
        "stopped_by": trials["stopped_by"].value_counts().to_dict(),
        "seconds": round(seconds, 2),
    }
    location.write_bytes(BEST_FILE, (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode())
    return leaderboard


def format_leaderboard(leaderboard: pd.DataFrame) -> str:
    """Best trial per model as a small table."""
    columns = ["model", "trial_id", "best_epoch", *(f"valid_{name}" for name in METRICS)]
    return leaderboard[columns].to_string(index=False, float_format=lambda value: f"{value:.4f}")
