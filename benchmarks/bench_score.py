"""Scoring speed: ML-1M end to end, and a synthetic 200,000 x 20,000 set with 1 and 2 actors against a
single-process loop over the same model and batches (prints figures; not a test).

    python benchmarks/bench_score.py [--users 200000 --items 20000]
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import ray

from raycf.data.loaders import read_interactions
from raycf.data.schemes.records import split_interactions
from raycf.data.split import Split, save_split
from raycf.data.synthetic import generate_synthetic
from raycf.models import build_model
from raycf.models.checkpoint import save_checkpoint
from raycf.models.config import TrainConfig
from raycf.score.job import ScoreOptions, Scorer, run_scoring, user_table
from raycf.train.trainer import CHECKPOINT_NAME

DEFAULT_ML1M = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-1m" / "ratings.dat.gz"


def make_run(split: Split, directory: Path) -> Path:
    """A `raycf train`-shaped directory (split/ + checkpoint.pt) holding an untrained Mult-VAE:
    scoring costs the same whatever the weights."""
    save_split(split, directory / "split")
    save_checkpoint(directory / CHECKPOINT_NAME, build_model(TrainConfig.for_model("multvae"), split.n_items))
    return directory


def timed_scoring(run: Path, options: ScoreOptions) -> float:
    started = time.perf_counter()
    run_scoring(str(run), options)
    return time.perf_counter() - started


def single_process_rate(run: Path, split: Split, batch_size: int) -> float:
    """Users per second of the same Scorer in this process on one thread, batch after batch."""
    scorer = Scorer([ray.put((run / CHECKPOINT_NAME).read_bytes())], split.item_ids, 5, "train", 1, "cpu")
    table = user_table(split, np.arange(split.n_users))
    started = time.perf_counter()
    for start in range(0, table.num_rows, batch_size):
        scorer(table.slice(start, batch_size))
    return split.n_users / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=1024)
    args = parser.parse_args()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR")
    root = Path(tempfile.mkdtemp(prefix="raycf-bench-score-"))
    ml1m = Path(os.environ.get("RAYCF_ML1M", DEFAULT_ML1M))
    split = split_interactions(read_interactions(ml1m), seed=0, source=str(ml1m))
    run = make_run(split, root / "ml1m")
    seconds = timed_scoring(run, ScoreOptions(out=str(root / "ml1m-scores"), actors=2, batch_size=args.batch_size))
    print(f"ML-1M: {split.n_users} users scored end to end (Ray already up) in {seconds:.2f}s "
          f"({split.n_users / seconds:.0f} users/s, 2 actors)")
    started = time.perf_counter()
    frame = generate_synthetic(n_users=args.users, n_items=args.items, seed=0)
    split = split_interactions(frame, seed=0, source="synthetic")
    del frame
    run = make_run(split, root / "synthetic")
    print(f"synthetic: {split.n_users} users x {split.n_items} items, {split.train.nnz:,} train records "
          f"(made in {time.perf_counter() - started:.0f}s)")
    single = single_process_rate(run, split, args.batch_size)
    print(f"single process, 1 thread: {single:.0f} users/s")
    for actors in (1, 2):
        seconds = timed_scoring(run, ScoreOptions(out=str(root / f"s{actors}"), actors=actors,
                                                  batch_size=args.batch_size))
        rate = split.n_users / seconds
        print(f"Ray Data, {actors} actor(s) x 1 CPU: {rate:.0f} users/s end to end, "
              f"{rate / actors / single:.0%} of the single-process rate per core")
    print(f"driver peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
