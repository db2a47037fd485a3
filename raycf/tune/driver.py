"""Ray Tune wiring: one function trainable per trial, ASHA on validation NDCG@5, resume, leaderboard."""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
import ray
import torch
from ray import tune

from raycf.cluster.connection import check_shared_storage
from raycf.cluster.ray_private import quiet_checkpoint_logs, trial_filesystem
from raycf.data.source import load_split, prepare_split
from raycf.data.split import Split, save_split
from raycf.errors import RaycfError
from raycf.eval.metrics import METRICS, Selection
from raycf.integrations.mlflow_runs import log_study
from raycf.integrations.tune_loggers import tracking_callbacks
from raycf.models.checkpoint import save_checkpoint
from raycf.models.config import TrainConfig
from raycf.runs.layout import (
    ENDED_FILE,
    LEADERBOARD_FILE,
    MODEL_FILE,
    RETRIES_FILE,
    SPLIT_DIR,
    STATE_FILE,
    STUDY_FILE,
    TRIALS_FILE,
)
from raycf.runs.record import BestRecord, SelectRecord, StudyRecord
from raycf.runs.trials import rank_trials, seed_means
from raycf.storage.location import Location, parquet_bytes
from raycf.study.memory import check_study_memory
from raycf.study.schema import Study
from raycf.train.memory import check_fit_memory
from raycf.train.precision import PRECISION_COLUMNS
from raycf.train.trainer import Trainer
from raycf.tune.asha import PerModelASHA
from raycf.tune.checkpoints import checkpoint_callbacks
from raycf.tune.console import StudyReporter
from raycf.tune.endings import stop_reason
from raycf.tune.monitoring import StudyMetrics
from raycf.tune.naming import named_trainable
from raycf.tune.repeats import run_repeats
from raycf.tune.search import planned_trials, search_setup
from raycf.tune.selection import run_selection

TIME_ATTR = "epoch"


def write_trial_checkpoint(trainer: Trainer, directory: Path) -> None:
    """model.pt (a raycf checkpoint of the best epoch's weights) + trainer.pt (the rest of the state).

    trainer.pt holds the current weights only when they are not the best ones (the final checkpoint of a
    trial whose last epochs did not improve).
    """
    state = trainer.state_dict()
    current_is_best = state.pop("best_state") is None
    if current_is_best:
        del state["model"]  # model.pt holds them
    best = trainer.model if current_is_best else trainer.best_model()
    meta = {
        "epoch": trainer.best_epoch,
        "valid": trainer.best_valid,
        "split_sha256": trainer.split.manifest["split_sha256"],
    }
    save_checkpoint(directory / MODEL_FILE, best, meta=meta)
    torch.save(state, directory / STATE_FILE)


def restore_trial_checkpoint(trainer: Trainer, directory: Path) -> None:
    best = torch.load(directory / MODEL_FILE, map_location="cpu", weights_only=True)["state_dict"]
    state = torch.load(directory / STATE_FILE, map_location="cpu", weights_only=True)
    trainer.load_state_dict({**state, "model": state.get("model", best), "best_state": best})


def rss_mb() -> float:
    """This process's resident memory in MiB: current (/proc/self/statm), else its peak (getrusage)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        return peak / (2**20 if sys.platform == "darwin" else 2**10)


def run_trial(
    config: dict[str, Any], split: Split, checkpoint_every: int | None = None, selection: Selection = Selection()
) -> None:
    """The function trainable: train one config, report every validated epoch, checkpoint improvements
    and every `checkpoint_every` epochs.

    The last epoch is always reported with a checkpoint, so a trial restored after its end (the driver
    died before Tune recorded it as ended) returns at once instead of training again; so does a trial
    whose last checkpoint Tune marked as ended (ENDED_FILE, e.g. an ASHA stop).
    """
    train_config = TrainConfig.from_dict(config["trial"], where="trial", stored=True)
    quiet_checkpoint_logs()  # no line per checkpoint
    context = ray.get_runtime_context()
    resources = context.get_assigned_resources()
    torch.set_num_threads(max(1, int(resources.get("CPU", 1.0))))
    device = "cuda" if resources.get("GPU", 0) > 0 and torch.cuda.is_available() else "cpu"
    node_id = context.get_node_id()
    # this node's memory, for this trial's own configuration, before the model is built
    check_fit_memory(train_config, split.n_users, split.n_items,
                     f"trial {tune.get_context().get_trial_name()} on node {node_id}")
    trainer = Trainer(split, train_config, device, selection)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            restore_trial_checkpoint(trainer, Path(directory))
            if (Path(directory) / ENDED_FILE).exists():
                return
    while not trainer.finished:
        report = trainer.run_epoch()
        valid = report.valid
        if valid is None:
            if not trainer.finished:
                continue
            valid = trainer.validate()  # patience ran out on an epoch without validation: report it anyway
        metrics = {
            TIME_ATTR: report.epoch,
            "model": train_config.model,
            "train_seconds": report.train_seconds,
            "valid_seconds": report.valid_seconds,
            "best_epoch": trainer.best_epoch,
            "rss_mb": round(rss_mb(), 1),
            "node_id": node_id,
            **{f"valid_{name}": valid[name] for name in selection.reported},
            **{f"best_valid_{name}": trainer.best_valid[name] for name in selection.reported},
            "best_valid_se": trainer.best_valid.get(f"{selection.field}_se", float("nan")),
            **({} if trainer.precision is None else trainer.precision.results()),
        }
        regular = checkpoint_every is not None and report.epoch % checkpoint_every == 0
        if not (report.improved or trainer.finished or regular):
            tune.report(metrics)
            continue
        with tempfile.TemporaryDirectory() as directory:
            write_trial_checkpoint(trainer, Path(directory))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))


class TrialLedger(tune.Callback):
    """Driver-side records that outlive the driver: which trials Tune ended, and how often each failed."""

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict, **info: Any) -> None:
        """A result Tune ends the trial on (done: an ASHA or stopper decision) marks the checkpoint a resume would
        restore, the one this result carries if any, before the loggers write the result: a driver killed once
        the ended trial's result.json says done never resumes it (on_trial_complete comes only after Tune has
        saved that checkpoint and stopped the actor)."""
        if result.get("done"):
            self.mark_ended(trial, result.get(TIME_ATTR), result.get("checkpoint_dir_name"))

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """Mark the ended trial's last checkpoint: a resumed study never trains it again."""
        self.mark_ended(trial, (trial.last_result or {}).get(TIME_ATTR))

    @staticmethod
    def mark_ended(trial: Any, epoch: int | None, checkpoint_dir_name: str | None = None) -> None:
        """Write ENDED_FILE into the trial's checkpoint `checkpoint_dir_name` (persisted already: a function
        trainable uploads it before reporting), else into its latest registered checkpoint, if any."""
        if checkpoint_dir_name is not None:
            filesystem, path = trial_filesystem(trial), f"{trial.path}/{checkpoint_dir_name}"
        elif trial.checkpoint is not None:
            filesystem, path = trial.checkpoint.filesystem, trial.checkpoint.path
        else:
            return
        if filesystem is None:  # a trial without storage has no checkpoint to mark
            return
        with filesystem.open_output_stream(f"{path}/{ENDED_FILE}") as stream:
            stream.write(json.dumps({"ended_at_epoch": epoch}).encode())

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        """RETRIES_FILE: every trial's `num_failures`, which Tune keeps across failures and restores."""
        if not trials:
            return
        filesystem, experiment = trial_filesystem(trials[0]), trials[0].remote_experiment_path
        if filesystem is None:  # no trial ever started
            return
        counts = {Path(trial.path).name: trial.num_failures for trial in trials}
        with filesystem.open_output_stream(f"{experiment}/{RETRIES_FILE}") as stream:
            stream.write((json.dumps(counts, indent=2, sort_keys=True) + "\n").encode())


@dataclass(frozen=True)
class TuneOptions:
    """How and where to run a study (the command line's choices)."""

    storage: str
    """A local directory or a URI pyarrow understands."""
    name: str
    verbose: int = 1
    """Tune's verbosity: 1, raycf's progress table (raycf.tune.console); 3, each trial's results too."""


def build_tuner(study: Study, split: Split, options: TuneOptions) -> tune.Tuner:
    """A Tuner for `study` whose trials share `split` through the object store."""
    from ray.tune.schedulers import FIFOScheduler

    metric = study.selection.key
    scheduler: FIFOScheduler
    if study.scheduler.type == "asha":
        scheduler = PerModelASHA(
            time_attr=TIME_ATTR,
            max_t=study.scheduler.max_t,
            grace_period=study.scheduler.grace_period,
            reduction_factor=study.scheduler.reduction_factor,
            per_model={search.model: search.scheduler_overrides() for search in study.models},
        )
    else:
        scheduler = FIFOScheduler()
    search = search_setup(study)
    return tune.Tuner(
        trainable_for(split, study_record(study)),
        param_space=search.param_space,
        tune_config=tune.TuneConfig(
            metric=metric,
            mode=study.mode,
            scheduler=scheduler,
            search_alg=search.search_alg,  # Tune wraps a Searcher in a ConcurrencyLimiter (max_concurrent_trials)
            num_samples=search.num_samples,
            max_concurrent_trials=search.max_concurrent_trials,
        ),
        run_config=tune.RunConfig(
            name=options.name,
            storage_path=str(options.storage),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),  # raycf.tune.checkpoints prunes them
            failure_config=tune.FailureConfig(max_failures=study.max_failures),
            callbacks=[TrialLedger(), StudyMetrics(options.name, study.selection),
                       *tracking_callbacks(study.tracking, study_record(study), str(options.storage), options.name),
                       *checkpoint_callbacks()],
            verbose=options.verbose,
            progress_reporter=StudyReporter(study.selection, Location.of(options.storage, options.name).uri,
                                            planned_trials(study), study_record(study).searched),
        ),
    )


def study_record(study: Study) -> StudyRecord:
    """What a resumed run, the report and the trackers need to know of the study (its study.json)."""
    return StudyRecord(
        name=study.name, study_file=str(study.path), seed=study.seed, data=study.data.describe(),
        data_spec=study.data, fractions=study.fractions, selection=study.selection, scheduler=study.scheduler.type,
        max_t=study.scheduler.max_t, cpus_per_trial=study.cpus_per_trial, gpus_per_trial=study.gpus_per_trial,
        num_samples=study.num_samples, models=tuple(search.model for search in study.models),
        repeat_seeds=study.repeat_seeds,
        select=None if study.select is None else SelectRecord(study.select.top, study.select.seeds),
        checkpoint_every=study.checkpoint_every, searcher=study.searcher.describe(),
        tracking=study.tracking.describe(),
        searched={search.model: tuple(search.search) for search in study.models},
    )


def trainable_for(split: Split, record: StudyRecord) -> Any:
    """run_trial with the split in the object store and the study's resources per trial, its actors named
    after their trials (raycf.tune.naming)."""
    return tune.with_resources(
        named_trainable(tune.with_parameters(run_trial, split=split, checkpoint_every=record.checkpoint_every,
                                             selection=record.selection), record.searched),
        {"cpu": record.cpus_per_trial, "gpu": record.gpus_per_trial},
    )


@dataclass(frozen=True)
class StudyResult:
    run_dir: str
    leaderboard: pd.DataFrame
    repeats: pd.DataFrame | None
    """Test metrics of the best configurations on every repeat seed (when the study asks for repeats)."""
    metric: str = "ndcg"
    """The study's metric, as repeats.parquet names its test column (`ndcg`, `ndcg@100`)."""


def finish(location: Location, record: StudyRecord, results: tune.ResultGrid, seconds: float) -> StudyResult:
    """Leaderboard and best.json, then the seed repeats the study asks for."""
    leaderboard = write_results(location, record, results, seconds)
    repeats = None
    if record.repeat_seeds:
        repeats = run_repeats(location, record, leaderboard)
    log_study(location, record)  # the results on the study's MLflow parent run, when it is tracked
    return StudyResult(location.uri, leaderboard, repeats, record.selection.field)


def new_run_location(storage: str, name: str) -> Location:
    """The run directory `storage`/`name` of a new study; RaycfError when a run of that name is there."""
    location = Location.of(storage, name)
    if location.is_used():
        raise RaycfError(f"{location.uri}: a run of that name exists; pick another --name, or --resume {location.uri}")
    return location


def run_study(study: Study, options: TuneOptions, split: Split | None = None) -> StudyResult:
    """Split once (unless given the study's `split`), run every trial, write the leaderboard (and the seed
    repeats)."""
    storage = Location.of(options.storage, "")
    storage.check_access("--storage")
    check_shared_storage(storage)
    location = new_run_location(options.storage, options.name)
    if split is None:
        split = prepare_split(study.data, study.fractions, study.seed)
        check_study_memory(study, split.n_users, split.n_items)
    record = study_record(study)
    with tempfile.TemporaryDirectory() as staging:
        save_split(split, Path(staging) / SPLIT_DIR)
        record.write(Location.of(staging, ""))
        location.put_directory(Path(staging))
    started = time.perf_counter()
    results = build_tuner(study, split, replace(options, storage=location.parent_uri)).fit()
    return finish(location, record, results, time.perf_counter() - started)


def resume_study(run_dir: str) -> StudyResult:
    """Continue an interrupted study: unfinished and errored trials go on from their last checkpoint."""
    location = Location.of(run_dir, "")
    location.check_access("--resume")
    if not location.has(STUDY_FILE) or not tune.Tuner.can_restore(location.uri):
        raise RaycfError(f"{run_dir}: no raycf study to resume there; give the run directory that `raycf tune` printed")
    check_shared_storage(location, option="--resume")
    record = StudyRecord.from_json(json.loads(location.read_bytes(STUDY_FILE)))
    with tempfile.TemporaryDirectory() as local:
        split = load_split(location.get_directory(SPLIT_DIR, Path(local)))
    started = time.perf_counter()
    tuner = tune.Tuner.restore(
        location.uri, trainable=trainable_for(split, record), resume_unfinished=True, resume_errored=True
    )
    results = tuner.fit()
    return finish(location, record, results, time.perf_counter() - started)


def epochs_run(result: tune.Result) -> int:
    """The last epoch a trial reported, from all its results: a trial restored after its end keeps the last
    result of its checkpoint, not of its last epoch."""
    frame = result.metrics_dataframe
    if frame is not None and TIME_ATTR in frame and frame[TIME_ATTR].notna().any():
        return int(frame[TIME_ATTR].max())
    return int((result.metrics or {}).get(TIME_ATTR, 0))


def relative_to(location: Location, path: str) -> str:
    """`path` (on the location's filesystem) relative to the run directory: a run stays valid when moved."""
    prefix = location.path.rstrip("/") + "/"
    if not path.startswith(prefix):
        raise RaycfError(f"{path}: a trial checkpoint outside the run directory {location.uri}; resume the run "
                         "where it was written")
    return path[len(prefix):]


def error_line(error: BaseException) -> str:
    """What went wrong in a trial, in one line: the exception raised in the trial (`RayTaskError.cause`) rather
    than the line Ray heads it with (`ray::ImplicitFunc.train() (pid=...)`)."""
    cause = getattr(error, "cause", None)
    shown = cause if isinstance(cause, BaseException) else error
    lines = str(shown).strip().splitlines() or [type(shown).__name__]
    return lines[0][:300]


def trial_table(location: Location, record: StudyRecord, results: tune.ResultGrid) -> pd.DataFrame:
    """One row per trial: its hyperparameters, best epoch, best validation metrics, checkpoint and retries."""
    retries = json.loads(location.read_bytes(RETRIES_FILE)) if location.has(RETRIES_FILE) else {}
    rows = []
    for index in range(len(results)):  # a ResultGrid indexes its results
        result = results[index]
        config = (result.config or {}).get("trial", {})  # empty for a trial that never started
        metrics = result.metrics or {}
        row = {
            "trial_id": metrics.get("trial_id", Path(result.path).name),
            "model": config.get("model", "unknown"),
            "epochs_run": epochs_run(result),
            "best_epoch": int(metrics.get("best_epoch", 0)),
            **{f"valid_{name}": float(metrics.get(f"best_valid_{name}", float("nan")))
               for name in record.selection.reported},
            "valid_se": float(metrics.get("best_valid_se", float("nan"))),
            "checkpoint": (relative_to(location, f"{result.checkpoint.path}/{MODEL_FILE}")
                           if result.checkpoint else None),
            "error": error_line(result.error) if result.error else None,
            "retries": int(retries.get(Path(result.path).name, 0)),
            "node_id": metrics.get("node_id"),
            **{name: metrics.get(name) for name in PRECISION_COLUMNS},
            "config": json.dumps(config, sort_keys=True),
            **{f"hp_{key}": value for key, value in config.items() if key != "model"},
        }
        row["stopped_by"] = stop_reason(row, config, config.get("max_epochs", record.max_t))
        rows.append(row)
    return pd.DataFrame(rows)


def write_results(location: Location, record: StudyRecord, results: tune.ResultGrid,
                  seconds: float) -> pd.DataFrame:
    """trials.parquet (all), leaderboard.parquet (best trial per model), best.json (best overall); with a
    robust selection (study key `select`), select.parquet and the winners by mean over its seeds."""
    trials = trial_table(location, record, results)
    location.write_bytes(TRIALS_FILE, parquet_bytes(trials))
    selection = record.selection
    key = selection.key
    if trials["checkpoint"].isna().all():
        raise RaycfError(f"{location.uri}: no trial finished an epoch with a checkpoint; "
                         f"see the errors in {TRIALS_FILE}")
    means = None
    if record.select is not None:
        means = seed_means(run_selection(location, record, trials, selection), selection)
    leaderboard = rank_trials(trials, selection, means).groupby("model", sort=False).head(1).reset_index(drop=True)
    location.write_bytes(LEADERBOARD_FILE, parquet_bytes(leaderboard))
    best = leaderboard.iloc[0]
    summary = {
        "model": best["model"],
        "trial_id": best["trial_id"],
        "checkpoint": best["checkpoint"],
        "best_epoch": int(best["best_epoch"]),
        "valid": {name: float(best[f"valid_{name}"]) for name in METRICS},
        "config": json.loads(best["config"]),
        "metric": selection.label,
        "metric_key": key,
        "mode": selection.mode,
        "split": SPLIT_DIR,
        "trials": len(trials),
        "stopped_by": trials["stopped_by"].value_counts().to_dict(),
        "retries": int(trials["retries"].sum()),
        "seconds": round(seconds, 2),
    }
    if means is not None and record.select is not None:
        summary["select"] = {"top": record.select.top, "seeds": json.loads(best["select_seeds"]),
                             "mean": float(best["select_mean"]), "std": float(best["select_std"])}
    BestRecord.from_json(summary).write(location)
    return leaderboard


def format_leaderboard(leaderboard: pd.DataFrame) -> str:
    """Best trial per model as a small table (with its mean and spread over the selection seeds, if any)."""
    columns = ["model", "trial_id", "best_epoch", *(f"valid_{name}" for name in METRICS)]
    columns += [column for column in ("select_mean", "select_std", "select_seeds") if column in leaderboard]
    return leaderboard[columns].to_string(index=False, float_format=lambda value: f"{value:.4f}")
