"""Training and full-ranking validation speed of both models on ML-1M (prints figures; not a test).

    RAYCF_ML1M=../shared/data/ml-1m/ratings.dat.gz python benchmarks/bench_training.py [--epochs 5] [--device cuda]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
from pathlib import Path

import torch

from raycf.config import TrainConfig
from raycf.data.loaders import read_interactions
from raycf.data.split import Split, split_interactions
from raycf.train import Trainer

DEFAULT_ML1M = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-1m" / "ratings.dat.gz"


def dense_matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    """The machine's own float32 dense matmul rate (best of `repeats`)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    best = min(timed(lambda: a @ b) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def timed(action) -> float:
    """Seconds `action` takes, GPU work included."""
    started = time.perf_counter()
    action()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - started


def epoch_gflop(split: Split, config: TrainConfig) -> float:
    """Floating-point work of one training epoch: dense decoder forward+backward, sparse encoder."""
    encoder_width = 2 * config.hidden if config.model == "multvae" else config.hidden
    decoder = 3 * 2 * split.n_users * config.hidden * split.n_items
    encoder = 2 * 2 * split.train.nnz * encoder_width
    return (decoder + encoder) / 1e9


def validation_gflop(split: Split, config: TrainConfig) -> float:
    users = int((split.valid.getnnz(axis=1) > 0).sum())
    return 2 * users * config.hidden * split.n_items / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs per model (after one warm-up)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    path = Path(os.environ.get("RAYCF_ML1M", DEFAULT_ML1M))
    started = time.perf_counter()
    split = split_interactions(read_interactions(path), seed=0, source=str(path))
    print(f"data: {path} -> {split.n_users} users x {split.n_items} items, "
          f"train {split.train.nnz:,} records; load+split {time.perf_counter() - started:.2f}s")
    peak = dense_matmul_gflops()
    print(f"machine: {torch.get_num_threads()} torch threads, dense float32 matmul {peak:.1f} GFLOP/s (CPU); "
          f"training on {args.device}" + (f" ({torch.cuda.get_device_name()})" if args.device == "cuda" else ""))
    print(f"{'model':8s} {'epoch s':>9s} {'GFLOP/s':>8s} {'valid s':>8s} {'GFLOP/s':>8s}")
    for model in ("multvae", "autorec"):
        config = TrainConfig.for_model(model)
        trainer = Trainer(split, config, args.device)
        trainer.run_epoch()
        epochs = [timed(trainer.train_epoch) for _ in range(args.epochs)]
        validations = [timed(trainer.validate) for _ in range(args.epochs)]
        epoch, valid = statistics.median(epochs), statistics.median(validations)
        print(f"{model:8s} {epoch:9.3f} {epoch_gflop(split, config) / epoch:8.1f} "
              f"{valid:8.3f} {validation_gflop(split, config) / valid:8.1f}")
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS: {peak_rss_mb:.0f} MB")


if __name__ == "__main__":
    main()
