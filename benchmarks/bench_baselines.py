"""All six models on ML-1M, each tuned on validation per seed, with wall time and peak memory (prints tables).

    python benchmarks/bench_baselines.py [--seeds 0,1,2] [--models pop,ease,itemknn,ials,autorec,multvae]
        [--lambdas 1e-4,1e-3,1e-2,1e-1] [--ease-l2 200,500,1000,2000,5000] [--knn-neighbors 100,200,400]
        [--knn-shrink 10,50,100] [--ials-factors 64] [--ials-l2 50,100,200] [--ials-alpha 5,10,20]
        [--ials-eval-every 5]

Every (model, split seed) job runs in a fresh Python process (this file with --worker), which reads and splits
ML-1M ($RAYCF_ML1M, default ../shared/data/ml-1m/ratings.dat.gz), trains each configuration of the model's grid
with early stopping on validation NDCG@5, keeps the best one by validation NDCG@5 and scores it on test with
train-only masking, as the write-up does. Mult-VAE runs with the reference settings; AutoRec's lambda and the
baselines' hyperparameters are chosen per seed from the grids (pop has none). iALS validates every
--ials-eval-every iterations (and at its last): validation (folding in all 6,040 users) costs several times an
ALS iteration. Wall time is the chosen configuration's fit + validation (TrainResult.seconds) and the whole grid's;
peak memory is the job process's peak RSS (data, the grid's runs and the test scoring).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from reproduce_table import DEFAULT_ML1M, numbers

from raycf.data.loaders import read_interactions
from raycf.data.schemes.records import split_interactions
from raycf.eval.evaluation import evaluate_model, summarize
from raycf.eval.metrics import METRICS
from raycf.models.config import TrainConfig
from raycf.models.registry import model_names
from raycf.runs.layout import REFERENCE
from raycf.train.trainer import TrainResult, train

ORDER = ("pop", "ease", "itemknn", "ials", "autorec", "multvae")
HEADERS = {"precision": "Precision@5", "recall": "Recall@5", "ndcg": "NDCG@5", "mrr": "MRR@5"}


def grids(args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    """Each model's configurations to choose from (hyperparameters on top of the model's reference settings)."""
    def product(**values: list) -> list[dict[str, Any]]:
        return [dict(zip(values, chosen)) for chosen in itertools.product(*values.values())]

    return {
        "pop": [{}],
        "ease": product(l2=numbers(args.ease_l2, float)),
        "itemknn": product(neighbors=numbers(args.knn_neighbors, int), shrink=numbers(args.knn_shrink, float)),
        "ials": [{**config, "eval_every": args.ials_eval_every} for config in product(
            factors=numbers(args.ials_factors, int), l2=numbers(args.ials_l2, float),
            alpha=numbers(args.ials_alpha, float))],
        "autorec": product(l2=numbers(args.lambdas, float)),
        "multvae": [{}],
    }


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_job(model: str, seed: int, grid: list[dict[str, Any]], path: Path) -> dict[str, Any]:
    """One (model, seed) job, in this process: the grid's best configuration on validation, scored on test."""
    split = split_interactions(read_interactions(path), seed=seed, source=str(path))
    data_rss = peak_rss_mib()
    best: TrainResult | None = None
    best_hp: dict[str, Any] = {}
    grid_seconds = 0.0
    for hp in grid:
        result = train(split, TrainConfig.for_model(model, seed=seed, **hp))
        grid_seconds += result.seconds
        if best is None or result.best_valid["ndcg"] > best.best_valid["ndcg"]:
            best, best_hp = result, hp
        del result  # a losing run's model is freed before the next one trains
    test = summarize(evaluate_model(best.model, split, "test", mask="train"))
    hp = {name: value for name, value in best_hp.items() if name != "eval_every"}
    return {"model": model, "seed": seed, "hp": hp,
            "valid_ndcg": best.best_valid["ndcg"], "test": test, "best_epoch": best.best_epoch,
            "epochs_run": best.epochs_run, "seconds": best.seconds, "grid_seconds": grid_seconds,
            "grid_size": len(grid), "data_rss_mib": data_rss, "peak_rss_mib": peak_rss_mib()}


def spawn_job(model: str, seed: int, grid: list[dict[str, Any]], path: Path) -> dict[str, Any]:
    """run_job in a fresh Python process (so that its peak RSS is its own); its JSON is the last stdout line."""
    spec = json.dumps({"model": model, "seed": seed, "grid": grid, "path": str(path)})
    started = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--worker", spec], stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        sys.exit(f"{model} seed {seed}: worker failed with exit status {done.returncode}")
    job = json.loads(done.stdout.strip().splitlines()[-1])
    job["process_seconds"] = time.perf_counter() - started
    return job


def hp_text(hp: dict[str, Any]) -> str:
    return " ".join(f"{name}={value:g}" for name, value in hp.items()) or "reference settings"


def spread(values: list[float], digits: int = 4) -> str:
    array = np.array(values)
    return f"{array.mean():.{digits}f} ± {array.std(ddof=1) if len(array) > 1 else 0:.{digits}f}"


def print_tables(jobs: dict[str, list[dict[str, Any]]], seeds: list[int]) -> None:
    label = f"seeds {','.join(map(str, seeds))}"
    print(f"\nML-1M test @5, train-only masking: split seed {seeds[0]}, and mean ± std (ddof 1) over {label}; "
          "write-up rows where it has the model:")
    print("| method | " + " | ".join(HEADERS[name] for name in METRICS) + " |")
    print("|---|" + "---|" * len(METRICS))
    for model, runs in jobs.items():
        first = runs[0]["test"]
        print(f"| {model} (raycf, seed {seeds[0]}) | " + " | ".join(f"{first[name]:.4f}" for name in METRICS) + " |")
        if len(runs) > 1:
            print(f"| {model} (raycf, {label}, mean ± std) | "
                  + " | ".join(spread([run["test"][name] for run in runs]) for name in METRICS) + " |")
        if model in REFERENCE:
            print(f"| {model} (write-up) | " + " | ".join(f"{REFERENCE[model][name]:.4f}" for name in METRICS) + " |")
    print(f"\nChosen on validation NDCG@5 per seed ({label}), time and memory (means over the seeds; peak RSS: the "
          "largest of the seeds' job processes; 'after data': its peak once ML-1M is read and split, every job's "
          "floor):")
    print("| method | chosen per seed | valid NDCG@5 | grid | fit + valid s (chosen) | grid s | process s "
          "| peak RSS MiB | after data MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for model, runs in jobs.items():
        chosen = "; ".join(f"{run['seed']}: {hp_text(run['hp'])}" for run in runs)
        mean = {key: np.mean([run[key] for run in runs]) for key in ("seconds", "grid_seconds", "process_seconds")}
        print(f"| {model} | {chosen} | {spread([run['valid_ndcg'] for run in runs])} | {runs[0]['grid_size']} "
              f"| {mean['seconds']:.1f} | {mean['grid_seconds']:.1f} | {mean['process_seconds']:.1f} "
              f"| {max(run['peak_rss_mib'] for run in runs):.0f} | {max(run['data_rss_mib'] for run in runs):.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--models", default=",".join(ORDER), help=f"a subset of {','.join(ORDER)}")
    parser.add_argument("--lambdas", default="1e-4,1e-3,1e-2,1e-1", help="AutoRec's l2 grid")
    parser.add_argument("--ease-l2", default="200,500,1000,2000,5000")
    parser.add_argument("--knn-neighbors", default="100,200,400")
    parser.add_argument("--knn-shrink", default="10,50,100")
    parser.add_argument("--ials-factors", default="64")
    parser.add_argument("--ials-l2", default="50,100,200")
    parser.add_argument("--ials-alpha", default="5,10,20")
    parser.add_argument("--ials-eval-every", type=int, default=5, help="iALS: validate every this many iterations")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        spec = json.loads(args.worker)
        print(json.dumps(run_job(spec["model"], spec["seed"], spec["grid"], Path(spec["path"]))), flush=True)
        return
    models = args.models.split(",")
    unknown = sorted(set(models) - set(model_names()))
    if unknown:
        parser.error(f"--models: unknown {', '.join(unknown)}; choose from {','.join(ORDER)}")
    path = Path(os.environ.get("RAYCF_ML1M", DEFAULT_ML1M))
    seeds = numbers(args.seeds, int)
    model_grids = grids(args)
    started = time.perf_counter()
    jobs: dict[str, list[dict[str, Any]]] = {model: [] for model in models}
    for seed in seeds:
        for model in models:
            job = spawn_job(model, seed, model_grids[model], path)
            jobs[model].append(job)
            test = " ".join(f"{name} {job['test'][name]:.4f}" for name in METRICS)
            print(f"seed {seed} {model:8s} {hp_text(job['hp']):28s} best epoch {job['best_epoch']:4d} "
                  f"valid ndcg {job['valid_ndcg']:.4f}  test {test}  {job['seconds']:.1f}s "
                  f"(grid of {job['grid_size']}: {job['grid_seconds']:.1f}s)  peak RSS {job['peak_rss_mib']:.0f} MiB",
                  flush=True)
    print_tables(jobs, seeds)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
