"""A whole study on a local Ray: wall time, Ray overhead per trial, ASHA's savings, best models on test.

    python benchmarks/bench_tune.py studies/quickstart.yaml
    python benchmarks/bench_tune.py studies/ml1m-reference.yaml --ratings ../shared/data/ml-1m/ratings.dat.gz
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pandas as pd

from raycf.cluster.connection import connect
from raycf.data.source import load_split
from raycf.eval.evaluation import evaluate_model, summarize
from raycf.eval.metrics import METRICS
from raycf.models.checkpoint import checkpoint_from_bytes
from raycf.study.schema import apply_overrides, load_study
from raycf.tune.driver import SPLIT_DIR, TRIALS_FILE, TuneOptions, run_study


def trial_timings(trial_dir: Path) -> tuple[float, float, int]:
    """(seconds inside the trainable, seconds its epochs took, epochs) from the trial's result.json."""
    rows = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]
    work = sum(row["train_seconds"] + row["valid_seconds"] for row in rows)
    return rows[-1]["time_total_s"], work, rows[-1]["epoch"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study")
    parser.add_argument("--ratings", default=None)
    parser.add_argument("--storage", default=None, help="default: a temporary directory")
    args = parser.parse_args()
    study = apply_overrides(load_study(args.study, check_ratings=args.ratings is None), ratings=args.ratings)
    storage = args.storage or tempfile.mkdtemp(prefix="raycf-bench-")
    connect(None)
    started = time.perf_counter()
    run_uri = run_study(study, TuneOptions(storage=storage, name=study.name, verbose=0)).run_dir
    run_dir = Path(run_uri)
    wall = time.perf_counter() - started
    trials = pd.read_parquet(run_dir / TRIALS_FILE)
    timings = [trial_timings(next(run_dir.glob(f"*{trial_id}*"))) for trial_id in trials["trial_id"]]
    inside = [total - work for total, work, _ in timings]
    work_total = sum(work for _, work, _ in timings)
    slots = min(study.max_concurrent or 10**9, int(2 / study.cpus_per_trial))
    print(f"study {study.name}: {len(trials)} trials, wall {wall:.1f}s (split, Ray Tune, leaderboard)")
    print(f"Ray overhead per trial inside the trainable (time - epochs): mean {sum(inside) / len(inside):.2f}s, "
          f"max {max(inside):.2f}s")
    print(f"whole-study overhead per trial ((wall x {slots} slots - epoch seconds) / trials): "
          f"{(wall * slots - work_total) / len(trials):.2f}s")
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
