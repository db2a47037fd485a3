"""Random search against Optuna's TPE at the same trial budget: the best validation metric after 5, 10,
20, ... trials (in the order the searcher proposed them) and the wall time of each study.

    python benchmarks/bench_search.py studies/ml1m-search.yaml --ratings ../shared/data/ml-1m/ratings.dat.gz \
        --model multvae --trials 20

Both studies are the study file's, restricted to one model, with `select` dropped; only the searcher
differs (random: the same dimensions drawn at random, seeded). Same seed, same split, same ASHA.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import pandas as pd

from raycf.cluster.connection import connect
from raycf.study.schema import SearcherSpec, apply_overrides, load_study
from raycf.tune.driver import TRIALS_FILE, TuneOptions, run_study


def proposal_order(run_dir: Path, trial_id: str) -> int:
    """Tune's running number of a trial (the order it was created in), from its directory name
    `run_trial_<trial id>_<number>_...`."""
    (directory,) = run_dir.glob(f"run_trial_{trial_id}_*")
    return int(directory.name[len(f"run_trial_{trial_id}_"):].split("_", 1)[0])


def best_so_far(trials: pd.DataFrame, run_dir: Path, key: str, mode: str, points: list[int]) -> dict[int, float]:
    """The best value of `key` among the first N trials the searcher proposed."""
    ordered = trials.assign(number=[proposal_order(run_dir, trial_id) for trial_id in trials["trial_id"]])
    ordered = ordered.sort_values("number")
    running = ordered[key].cummax() if mode == "max" else ordered[key].cummin()
    return {n: float(running.iloc[n - 1]) for n in points if n <= len(running)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study")
    parser.add_argument("--ratings", default=None)
    parser.add_argument("--model", default="multvae", help="the one model searched (default multvae)")
    parser.add_argument("--trials", type=int, default=20, help="trials per searcher (default 20)")
    parser.add_argument("--max-t", type=int, default=None, help="override ASHA's max_t (epochs)")
    args = parser.parse_args()
    study = apply_overrides(load_study(args.study, check_ratings=args.ratings is None), ratings=args.ratings)
    models = tuple(search for search in study.models if search.model == args.model)
    scheduler = study.scheduler if args.max_t is None else dataclasses.replace(study.scheduler, max_t=args.max_t)
    connect(None)
    points = [n for n in (5, 10, 20, 40, 80) if n < args.trials] + [args.trials]
    print(f"{args.model}: {args.trials} trials per searcher, ASHA max_t {scheduler.max_t}, metric "
          f"{study.selection.label}, seed {study.seed}")
    for searcher in (SearcherSpec(type="random"), dataclasses.replace(study.searcher, type="optuna")):
        variant = dataclasses.replace(study, models=models, num_samples=args.trials, searcher=searcher,
                                      scheduler=scheduler, select=None, repeat_seeds=())
        storage = tempfile.mkdtemp(prefix="raycf-bench-search-")
        started = time.perf_counter()
        run_dir = run_study(variant, TuneOptions(storage=storage, name=f"{searcher.type}", verbose=0)).run_dir
        wall = time.perf_counter() - started
        trials = pd.read_parquet(f"{run_dir}/{TRIALS_FILE}")
        best = best_so_far(trials, Path(run_dir), study.selection.key, study.mode, points)
        print(f"{searcher.type:7s} " + "  ".join(f"best after {n}: {value:.4f}" for n, value in best.items())
              + f"  wall {wall / 60:.1f} min  epochs {int(trials['epochs_run'].sum())}")


if __name__ == "__main__":
    main()
