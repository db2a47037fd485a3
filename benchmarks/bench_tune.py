"""A whole study on a local Ray: its wall time by phase, where the Tune and the selection phases' slot-seconds
went, the runs reused from trials, ASHA's savings, best models on test.

    python benchmarks/bench_tune.py studies/quickstart.yaml [--repeat-seeds 0,1]
    python benchmarks/bench_tune.py studies/ml1m-reference.yaml --ratings ../shared/data/ml-1m/ratings.dat.gz
    python benchmarks/bench_tune.py studies/ml1m-search.yaml --ratings ../shared/data/ml-1m/ratings.dat.gz

Slot-seconds: a phase's wall time x its slots (the trials, or tasks, the machine runs at once). The phases end
when their files are written (split: study.json; Tune: trials.parquet; selection and repeats: select.parquet,
repeats.parquet). A trial's start and Ray's time between its results come from Ray's public state API (the
local Ray's dashboard serves it); without it they are counted as idle.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import ray

from raycf.cluster.connection import connect
from raycf.data.source import load_split
from raycf.eval.evaluation import evaluate_model, summarize
from raycf.eval.metrics import METRICS
from raycf.models.checkpoint import checkpoint_from_bytes
from raycf.runs.layout import REPEATS_FILE, SELECT_FILE, STUDY_FILE
from raycf.storage.location import parse_results
from raycf.study.schema import apply_overrides, load_study
from raycf.tune.driver import SPLIT_DIR, TRIALS_FILE, TuneOptions, run_study

STATE_LIMIT = 10_000
"""The most entries Ray's state API lists at once."""
SEED_TASKS = ("repeat_run", "trial_row")
"""raycf.tune.seed_runs' tasks: a training, a trial's own run evaluated."""


@dataclass(frozen=True)
class ActorClock:
    """One trial actor's times in seconds: its creation task submitted, its first `train` call running (the
    trainable starts), its last task ended."""

    created: float
    first_train: float
    ended: float


def ray_state(dashboard: str | None) -> tuple[list[Any], dict[str, str]]:
    """Every task of the local Ray with its times, and each trial actor's trial id by actor id (its repr is
    `trial <id> ...`, raycf.tune.naming); nothing without a dashboard."""
    if dashboard is None:
        return [], {}
    from ray.util.state import list_actors, list_tasks

    tasks = list_tasks(address=dashboard, detail=True, limit=STATE_LIMIT, raise_on_missing_output=False)
    actors = list_actors(address=dashboard, detail=True, limit=STATE_LIMIT, raise_on_missing_output=False)
    if len(tasks) == STATE_LIMIT:
        print(f"note: Ray's state API listed only its first {STATE_LIMIT} tasks")
    return tasks, {actor.actor_id: actor.repr_name.split()[1] for actor in actors
                   if (actor.repr_name or "").startswith("trial ")}


def actor_clocks(tasks: list[Any], trial_of: dict[str, str]) -> dict[str, list[ActorClock]]:
    """Each trial's actors (more than one after a retry), oldest first, from their tasks' times."""
    by_actor: dict[str, list[Any]] = defaultdict(list)
    for task in tasks:
        if task.actor_id in trial_of:
            by_actor[task.actor_id].append(task)
    clocks: dict[str, list[ActorClock]] = defaultdict(list)
    for actor, own in by_actor.items():
        creation = [task for task in own if task.type == "ACTOR_CREATION_TASK"]
        trains = [task.start_time_ms for task in own if task.name.endswith(".train") and task.start_time_ms]
        if creation and trains:
            clocks[trial_of[actor]].append(ActorClock(creation[0].creation_time_ms / 1e3, min(trains) / 1e3,
                                                      max(task.end_time_ms or 0 for task in own) / 1e3))
    return {trial: sorted(actors, key=lambda clock: clock.created) for trial, actors in clocks.items()}


def trial_results(run_dir: Path, trial_id: str) -> list[dict]:
    (path,) = run_dir.glob(f"run_trial_{trial_id}_*/result.json")
    return parse_results(path.read_text())


def in_trainable(run_dir: Path, trial_id: str) -> float:
    """Seconds a trial spent in its trainable beyond its epochs (time_total_s less train and valid seconds)."""
    rows = trial_results(run_dir, trial_id)
    return rows[-1]["time_total_s"] - sum(row["train_seconds"] + row["valid_seconds"] for row in rows)


def tune_parts(run_dir: Path, trial_ids: list[str], clocks: dict[str, list[ActorClock]]) -> dict[str, float]:
    """Slot-seconds of the Tune phase by what they were spent on, over all trials.

    epochs, validation: the trials' reported train_seconds, valid_seconds. reports and checkpoints: each
    result's time_this_iter_s less those, but the first's. trial start: from the trial actor's creation task
    being submitted (Tune asks Ray for the actor once a slot is free) to the trainable's first epoch: the
    worker process, the actor, the split from the object store, the model built and its matmul precision
    measured, the first report. Ray between results: the rest of the actor's life (Tune handling each result
    while the trial waits, its end, the actor's stop)."""
    parts: dict[str, float] = defaultdict(float)
    for trial_id in trial_ids:
        rows = trial_results(run_dir, trial_id)
        rest = [row["time_this_iter_s"] - row["train_seconds"] - row["valid_seconds"] for row in rows]
        parts["epochs"] += sum(row["train_seconds"] for row in rows)
        parts["validation"] += sum(row["valid_seconds"] for row in rows)
        parts["reports and checkpoints"] += sum(rest[1:])
        actors = clocks.get(trial_id)
        if not actors:  # no state API: its first result's setup counts as a report
            parts["reports and checkpoints"] += rest[0]
            continue
        start = actors[0].first_train - actors[0].created + rest[0]
        parts["trial start"] += start
        parts["Ray between results"] += (sum(actor.ended - actor.created for actor in actors) - start
                                         - sum(row["time_this_iter_s"] for row in rows) + rest[0])
    return parts


def seed_run_parts(rows: pd.DataFrame, tasks: list[Any]) -> dict[str, float]:
    """Slot-seconds of the selection and repeats phase: the trained runs' epochs and validation, and the rest
    of their tasks' running time (task start, test scoring, the trials' own runs evaluated)."""
    trained = rows[~rows["from_trial"]]
    parts = {"epochs": float(trained["train_seconds"].sum()), "validation": float(trained["valid_seconds"].sum())}
    busy = sum(task.end_time_ms - task.start_time_ms for task in tasks
               if task.func_or_class_name in SEED_TASKS and task.start_time_ms and task.end_time_ms) / 1e3
    if busy >= parts["epochs"] + parts["validation"]:  # else Ray's state API lost some task events
        parts["task start, test, reused runs"] = busy - parts["epochs"] - parts["validation"]
    return parts


def breakdown(title: str, seconds: float, slots: int, parts: dict[str, float]) -> str:
    """`title`, its slot-seconds and each part's share; idle: the rest."""
    total = seconds * slots
    shares = {**parts, "idle": total - sum(parts.values())}
    return (f"{title}: {seconds:.1f} s x {slots} slots = {total:.0f} slot-s:\n  "
            + " | ".join(f"{name} {value:.0f} ({value / total:.0%})" for name, value in shares.items()))


def phase_ends(run_dir: Path) -> tuple[float, float, float]:
    """When the split was staged, the Tune phase ended and the selection and repeats ended (file times)."""
    def written(name: str) -> float:
        return (run_dir / name).stat().st_mtime

    tuned = written(TRIALS_FILE)
    seeds = [written(name) for name in (SELECT_FILE, REPEATS_FILE) if (run_dir / name).is_file()]
    return written(STUDY_FILE), tuned, max(seeds, default=tuned)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study")
    parser.add_argument("--ratings", default=None)
    parser.add_argument("--repeat-seeds", default=None, help="e.g. 0,1: seed repeats after the study")
    parser.add_argument("--storage", default=None, help="default: a temporary directory")
    args = parser.parse_args()
    repeat_seeds = None if args.repeat_seeds is None else [int(seed) for seed in args.repeat_seeds.split(",")]
    study = apply_overrides(load_study(args.study, check_ratings=args.ratings is None), ratings=args.ratings,
                            repeat_seeds=repeat_seeds)
    storage = args.storage or tempfile.mkdtemp(prefix="raycf-bench-")
    began = time.time()
    dashboard = connect(None).dashboard
    started = time.time()
    run_dir = Path(run_study(study, TuneOptions(storage=storage, name=study.name, verbose=0)).run_dir)
    ended = time.time()
    staged, tuned, seeded = phase_ends(run_dir)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    task_slots = max(1, int(cpus / study.cpus_per_trial))
    slots = min(study.max_concurrent or task_slots, task_slots)
    trials = pd.read_parquet(run_dir / TRIALS_FILE)
    tasks, trial_of = ray_state(dashboard)
    print(f"study {study.name}: {len(trials)} trials, {cpus} CPUs, {study.cpus_per_trial:g} per trial; wall "
          f"{ended - began:.1f} s: Ray start {started - began:.1f} | split {staged - started:.1f} | Tune "
          f"{tuned - staged:.1f} | selection and repeats {seeded - tuned:.1f} | the rest {ended - seeded:.1f}")
    clocks = actor_clocks(tasks, trial_of)
    print(breakdown("Tune phase", tuned - staged, slots, tune_parts(run_dir, list(trials["trial_id"]), clocks)))
    inside = [in_trainable(run_dir, trial_id) for trial_id in trials["trial_id"]]
    print(f"  per trial in the trainable beyond its epochs: mean {sum(inside) / len(inside):.2f} s, "
          f"max {max(inside):.2f} s")
    if not clocks:
        print("  (no Ray state API: the trials' start and Ray between results are in idle)")
    seed_rows = [pd.read_parquet(run_dir / name) for name in (SELECT_FILE, REPEATS_FILE) if (run_dir / name).is_file()]
    if seed_rows:
        rows = pd.concat(seed_rows, ignore_index=True)
        print(breakdown("selection and repeats", seeded - tuned, task_slots, seed_run_parts(rows, tasks)))
        reused = rows[rows["from_trial"]]
        print(f"  runs trained {int((~rows['from_trial']).sum())}, reused from trials {len(reused)} (whose "
              f"epochs and validation took {reused['train_seconds'].sum() + reused['valid_seconds'].sum():.0f} s)")
    print("trials ended by:", trials["stopped_by"].value_counts().to_dict())
    epochs = trials["epochs_run"]
    full = trials[trials["stopped_by"] != "asha"].groupby("model")["epochs_run"].mean()
    without_asha = [full.get(model, study.scheduler.max_t) if reason == "asha" else run
                    for model, reason, run in zip(trials["model"], trials["stopped_by"], epochs)]
    print(f"epochs run {int(epochs.sum())}; without ASHA about {sum(without_asha):.0f} (an ASHA-stopped trial "
          f"counted at the mean length of its model's unstopped trials): saved {sum(without_asha) - epochs.sum():.0f}")
    split = load_split(run_dir / SPLIT_DIR)
    leaderboard = trials.sort_values("valid_ndcg", ascending=False).groupby("model").head(1)
    for _, row in leaderboard.iterrows():
        path = run_dir / row["checkpoint"]
        model, _ = checkpoint_from_bytes(path.read_bytes(), str(path))
        test = summarize(evaluate_model(model, split, "test", mask="train"))
        print(f"best {row['model']:8s} (valid ndcg {row['valid_ndcg']:.4f}, {json.loads(row['config'])}): test "
              + " ".join(f"{name}@5 {test[name]:.4f}" for name in METRICS))
    print(f"run directory: {run_dir}")


if __name__ == "__main__":
    main()
