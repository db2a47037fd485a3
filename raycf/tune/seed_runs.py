"""Candidate configurations on several split seeds (robust selection, seed repeats): one row per configuration
and seed, each trained as a Ray task, or taken from the trial itself where training would repeat it.

A candidate trial whose configuration (seed included) and split are those a seed asks for, trained on CPU
(no GPU per trial) and ended on its own (patience, the epoch limit, a complete fit: not ASHA, not an error),
is the run a retraining would repeat exactly: same seed, same data, same threads (cpus_per_trial). Its row
comes from the trial: best epoch, epochs run and validation metrics from trials.parquet, seconds from its
results, test metrics from its best checkpoint evaluated as a retraining's would be. One difference:
`matmul_dtype: auto` is settled per process by measurement (raycf.train.precision); a reused row is the
trial's own run in the precision the trial measured and chose (trials.parquet `matmul_dtype`), where a
retraining would measure again.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import pandas as pd
import ray
import torch

from raycf.cluster.ray_private import RESULT_FILE
from raycf.data.source import load_filtered
from raycf.data.split import Split
from raycf.eval.evaluation import evaluate_metrics, summarize
from raycf.eval.metrics import Selection
from raycf.models import Recommender
from raycf.models.checkpoint import check_same_split, checkpoint_from_bytes
from raycf.models.config import TrainConfig
from raycf.runs.layout import SPLIT_DIR
from raycf.runs.record import StudyRecord
from raycf.storage.location import Location, parse_results
from raycf.train.trainer import train
from raycf.tune.console import seed_run_done, seed_runs_started

ENDED_ON_ITS_OWN = ("patience", "max_t", "complete")
"""trials.parquet `stopped_by` values (raycf.tune.endings.stop_reason) of a trial that no scheduler cut short."""


@dataclass(frozen=True)
class RunFigures:
    """What a seed's row records of a run besides its test metrics."""

    best_epoch: int
    epochs_run: int
    valid: dict[str, float]
    """`valid_*` at the best epoch."""
    train_seconds: float
    """Summed over the run's epochs (a trial's: over those it reported, every validated one); likewise
    `valid_seconds`."""
    valid_seconds: float


@dataclass(frozen=True)
class TrialRun:
    """A finished trial's best checkpoint (its bytes and URI) and figures."""

    where: str
    checkpoint: bytes
    figures: RunFigures


def scored_on_test(model: Recommender, split: Split, selection: Selection) -> dict[str, float]:
    """The test metrics of a seed's row (each user's inputs masked: Split.known)."""
    test = summarize(evaluate_metrics(model, split, "test", selection.metrics, mask="train"))
    return {name: test[name] for name in selection.reported}


def seed_row(config: dict[str, Any], figures: RunFigures, test: dict[str, float], from_trial: bool) -> dict[str, Any]:
    """One row of select.parquet / repeats.parquet."""
    return {"model": config["model"], "seed": config["seed"], "best_epoch": figures.best_epoch,
            "epochs_run": figures.epochs_run, **figures.valid, **test, "config": json.dumps(config, sort_keys=True),
            "from_trial": from_trial, "train_seconds": figures.train_seconds, "valid_seconds": figures.valid_seconds}


@ray.remote
def repeat_run(split: Split, config: dict[str, Any], threads: int, selection: Selection) -> dict[str, Any]:
    """Train one configuration on one split (best epoch by `selection`): its row."""
    torch.set_num_threads(threads)
    result = train(split, TrainConfig.from_dict(config, where="repeat", stored=True), selection=selection)
    figures = RunFigures(result.best_epoch, result.epochs_run,
                         {f"valid_{name}": result.best_valid[name] for name in selection.reported},
                         sum(report.train_seconds for report in result.history),
                         sum(report.valid_seconds for report in result.history))
    return seed_row(config, figures, scored_on_test(result.model, split, selection), from_trial=False)


@ray.remote
def trial_row(split: Split, run: TrialRun, config: dict[str, Any], threads: int,
              selection: Selection) -> dict[str, Any]:
    """The row of a trial's own run on `split`: its best checkpoint evaluated on test as `repeat_run` does."""
    torch.set_num_threads(threads)
    model, meta = checkpoint_from_bytes(run.checkpoint, run.where, expect_items=split.n_items)
    check_same_split(meta, split.manifest["split_sha256"], run.where)
    return seed_row(config, run.figures, scored_on_test(model, split, selection), from_trial=True)


def read_trial_run(location: Location, trial: pd.Series, selection: Selection) -> TrialRun:
    """A trial's run from its trials.parquet row, its checkpoint and its result.json (the last report of an
    epoch wins, as after a retry)."""
    trial_dir = trial["checkpoint"].rsplit("/", 2)[0]
    results = {row["epoch"]: row for row in parse_results(location.read_bytes(f"{trial_dir}/{RESULT_FILE}").decode())}
    figures = RunFigures(int(trial["best_epoch"]), int(trial["epochs_run"]),
                         {f"valid_{name}": float(trial[f"valid_{name}"]) for name in selection.reported},
                         sum(row["train_seconds"] for row in results.values()),
                         sum(row["valid_seconds"] for row in results.values()))
    return TrialRun(f"{location.uri}/{trial['checkpoint']}", location.read_bytes(trial["checkpoint"]), figures)


def own_run(trial: pd.Series, config: dict[str, Any], same_split: bool, record: StudyRecord) -> bool:
    """True when training `config` (the trial's configuration with a seed's seed) on that seed's split would
    repeat `trial` exactly (`same_split`: that split is the run's)."""
    return (same_split and config == json.loads(trial["config"]) and record.gpus_per_trial == 0
            and trial["stopped_by"] in ENDED_ON_ITS_OWN and isinstance(trial["checkpoint"], str))


def submission_order(epochs: list[int], reused: list[bool]) -> list[int]:
    """The jobs in the order to submit them: the trainings longest first (by their trial's `epochs`), so that
    none runs alone at the end, then the trials' own runs (an evaluation takes seconds)."""
    trained = sorted((number for number in range(len(epochs)) if not reused[number]), key=lambda n: -epochs[n])
    return [*trained, *(number for number in range(len(epochs)) if reused[number])]


def train_on_seeds(location: Location, record: StudyRecord, seeds: tuple[int, ...],
                   candidates: pd.DataFrame, phase: str) -> pd.DataFrame:
    """Every (candidate trial, split seed) pair as a Ray task: the trial's own run evaluated where it is one
    (`own_run`), else trained (`submission_order`). One row each, `trial_id` first, in `candidates` order
    then seed order. The console gets a line as the `phase` (selection, repeats) starts and as each run ends."""
    source = load_filtered(record.data_spec)
    splits = {seed: source.split(record.fractions, seed) for seed in seeds}
    run_split = json.loads(location.read_bytes(f"{SPLIT_DIR}/manifest.json"))["split_sha256"]
    shared = {seed: ray.put(split) for seed, split in splits.items()}
    threads, selection = max(1, int(record.cpus_per_trial)), record.selection
    jobs = [(candidates.iloc[index], {**json.loads(candidates.iloc[index]["config"]), "seed": seed})
            for index in range(len(candidates)) for seed in seeds]
    reused = [own_run(trial, config, splits[config["seed"]].manifest["split_sha256"] == run_split, record)
              for trial, config in jobs]
    futures: dict[int, ray.ObjectRef] = {}
    for number in submission_order([int(trial["epochs_run"]) for trial, _ in jobs], reused):
        trial, config = jobs[number]
        options, split = {"num_cpus": record.cpus_per_trial}, shared[config["seed"]]
        if reused[number]:
            run = read_trial_run(location, trial, selection)
            futures[number] = trial_row.options(**options).remote(split, run, config, threads, selection)
        else:
            futures[number] = repeat_run.options(**options).remote(split, config, threads, selection)
    print(seed_runs_started(phase, seeds, len(jobs) - sum(reused), sum(reused)), flush=True)
    started, pending, done = time.monotonic(), {future: number for number, future in futures.items()}, {}
    while pending:
        (ready,), _ = ray.wait(list(pending), num_returns=1)
        number = pending.pop(ready)
        done[number] = ray.get(ready)
        print(seed_run_done(phase, len(done), len(jobs), jobs[number][0]["trial_id"], done[number], selection,
                            time.monotonic() - started), flush=True)
    rows = pd.DataFrame([done[number] for number in range(len(jobs))])
    rows.insert(0, "trial_id", [trial["trial_id"] for trial, _ in jobs])
    return rows
