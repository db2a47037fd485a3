"""Training and full-ranking validation speed of the neural models against the machine's matmul bound (prints
figures; not a test).

    RAYCF_ML1M=../shared/data/ml-1m/ratings.dat.gz python benchmarks/bench_training.py        # ML-1M
    python benchmarks/bench_training.py --shape ml20m --split-cache /tmp/raycf-ml20m-split      # ML-20M-shaped
    options: --epochs N (timed epochs and validations per model), --warmup N, --threads N, --device cuda,
             --models multvae autorec recvae (default: the first two), --matmul-dtype bfloat16 (mixed-precision
             output layer; the bound stays float32's), --batch-size N (default: each model's own)

`--shape ml20m` is synthetic data of ML-20M's shape (136,677 users x 20,108 items, ~9.3 M interactions,
raycf.data.synthetic), split 60/20/20 with seed 0; `--split-cache DIR` keeps that split (Parquet) for the next
run. Each model trains with its reference settings (TrainConfig.for_model, seed 0).

FLOP model (a multiply-add counts 2; the models' default architecture: Mult-VAE and AutoRec without hidden layers):
  epoch       3 * 2 * users * hidden * items   the decoder's three products: forward, input gradient, weight
                                                gradient (users: those with a train row)
            + 2 * 2 * nnz * width             the sparse encoder's forward and weight gradient (nnz: train
                                                entries; width: 2 * hidden for Mult-VAE's mean and log-variance,
                                                hidden for AutoRec)
  validation  2 * users_with_heldout * hidden * items   the scoring product (the encoder, ~1 %, not counted)
RecVAE (its paper's settings: a 600-wide encoder of 5 layers, batch 500) alternates encoder and decoder epochs, each
with its own work; with O = 2 * users * hidden * items (one output-layer product), S = 2 * nnz * width (one pass of
the sparse input layer) and D = 2 * users * ((depth - 1) * width^2 + width * 2 * hidden) (the dense encoder layers'
forward):
  encoder epoch   2 O (forward, input gradient: the decoder is frozen) + 2 S + 3 D (the encoder trained)
                  + S + D (the frozen copy of the encoder that gives the composite prior its posterior)
  decoder epoch   2 O (forward, weight gradient) + S + D (the encoder's forward, no gradient)
  validation      (S + D) / users * users_with_heldout + O / users * users_with_heldout: its encoder is larger than
                  its scoring product, so both count
and each kind of epoch gets its own row (`recvae enc`, `recvae dec`; the validation figures repeat in both).
Bound = FLOPs / the dense float32 matmul rate (2048 x 2048 products) measured in the training process before and
after the model's timings; the higher rate is used, so a machine busy with other work gives a conservative ratio.
Ratio = median seconds / bound. The `cpu` columns repeat the ratio by the process's CPU clock (its CPU seconds
against the matmul's GFLOP per CPU second): steadier than the wall clock while other work shares the machine.

Each model trains in a fresh process of its own, as a Tune trial does, handed the split; its peak RSS is that
process's high-water mark from then on (reset after receiving the split where Linux allows, else lifelong), so
it counts the split, the model, its optimizer and the transient memory of training and validation.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import torch

from raycf.data.split import Split
from raycf.models.config import TrainConfig
from raycf.models.params import MATMUL_DTYPES
from raycf.train.precision import precision_words

DEFAULT_ML1M = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-1m" / "ratings.dat.gz"
ML20M_SHAPE = {"n_users": 136_677, "n_items": 20_108, "mean_interactions": 68}
"""ML-20M's users and items (users with 20 or more ratings) and its mean ratings per user (9.3 M in all)."""
CLEAR_REFS = Path("/proc/self/clear_refs")
STATUS = Path("/proc/self/status")


def build_split(shape: str, cache: str | None) -> Split:
    """The benchmark's split: ML-1M read from its ratings, or the ML-20M-shaped synthetic data; loaded from or
    saved to `cache` when given."""
    from raycf.data.schemes.records import split_interactions
    from raycf.data.source import load_split
    from raycf.data.split import save_split

    if cache is not None and Path(cache, "manifest.json").is_file():
        return load_split(Path(cache))
    if shape == "ml1m":
        from raycf.data.loaders import read_interactions

        path = Path(os.environ.get("RAYCF_ML1M", DEFAULT_ML1M))
        split = split_interactions(read_interactions(path), seed=0, source=str(path))
    else:
        from raycf.data.synthetic import generate_synthetic

        split = split_interactions(generate_synthetic(**ML20M_SHAPE, seed=0), seed=0, source="synthetic-ml20m")
    if cache is not None:
        save_split(split, Path(cache))
    return split


class Clocks(NamedTuple):
    """A figure by the wall clock and by this process's CPU clock (all its threads): seconds, or a rate."""

    wall: float
    cpu: float


def timed(action: Callable[[], object]) -> Clocks:
    """Seconds `action` takes, GPU work included."""
    wall, cpu = time.perf_counter(), time.process_time()
    action()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return Clocks(time.perf_counter() - wall, time.process_time() - cpu)


def median(timings: list[Clocks]) -> Clocks:
    return Clocks(statistics.median(t.wall for t in timings), statistics.median(t.cpu for t in timings))


def dense_matmul_gflops(device: str, size: int = 2048, repeats: int = 5, dtype: torch.dtype = torch.float32) -> Clocks:
    """The machine's own dense matmul rate in `dtype` on `device` (best of `repeats`, per clock)."""
    a, b = (torch.randn(size, size, device=device).to(dtype) for _ in range(2))
    seconds = [timed(lambda: a @ b) for _ in range(repeats)]
    return Clocks(*(2 * size**3 / min(clock) / 1e9 for clock in zip(*seconds)))


def encoder_width(config: TrainConfig) -> int:
    """Width of the sparse input layer's output."""
    params: Any = config.params  # a neural model's (NeuralParams and its subclasses)
    if config.model == "recvae":
        return int(params.width)
    return 2 * params.hidden if config.model == "multvae" else int(params.hidden)


def dense_encoder_macs(config: TrainConfig) -> int:
    """Multiply-adds per user of the encoder's dense layers: RecVAE's (the others' defaults have none)."""
    params: Any = config.params
    if config.model != "recvae":
        return 0
    return (params.depth - 1) * params.width**2 + params.width * 2 * params.hidden


def epoch_phase(config: TrainConfig, epoch: int) -> str:
    """"enc" or "dec" for RecVAE's epoch `epoch` (0-based), "" for a model trained the same way every epoch."""
    if config.model != "recvae":
        return ""
    params: Any = config.params
    return "enc" if epoch % (params.encoder_epochs + params.decoder_epochs) < params.encoder_epochs else "dec"


def pass_flop(split: Split, config: TrainConfig) -> tuple[int, int, int]:
    """O, S and D of the FLOP model above: one output-layer product, one pass of the sparse input layer and one
    forward of the dense encoder layers, over every user with a train row."""
    params: Any = config.params
    users = len(split.train_users)
    return (2 * users * params.hidden * split.n_items, 2 * split.train.nnz * encoder_width(config),
            2 * users * dense_encoder_macs(config))


def epoch_gflop(split: Split, config: TrainConfig, phase: str = "") -> float:
    """Floating-point work of one training epoch of `phase` (epoch_phase; the FLOP model above)."""
    output, sparse, dense = pass_flop(split, config)
    work = {"": 3 * output + 2 * sparse, "enc": 2 * output + 3 * sparse + 4 * dense, "dec": 2 * output + sparse + dense}
    return work[phase] / 1e9


def validation_gflop(split: Split, config: TrainConfig) -> float:
    """Floating-point work of one full-ranking validation (the FLOP model above): the scoring product, and RecVAE's
    encoder, for the users with a held-out item."""
    output, sparse, dense = pass_flop(split, config)
    share = int((split.valid.getnnz(axis=1) > 0).sum()) / len(split.train_users)
    return share * (output + (sparse + dense if config.model == "recvae" else 0)) / 1e9


def reset_peak_rss() -> bool:
    """Reset this process's RSS high-water mark; False where the OS offers no way (the peak is then lifelong)."""
    try:
        CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def peak_rss_mb() -> float:
    """This process's RSS high-water mark (VmHWM, since the last reset), else its lifelong peak."""
    try:
        lines = STATUS.read_text().splitlines()
    except OSError:
        lines = []
    peak = next((int(line.split()[1]) / 1024 for line in lines if line.startswith("VmHWM:")), None)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 if peak is None else peak


class ModelRun(NamedTuple):
    """One model's figures, from its own process."""

    epochs: dict[str, Clocks]
    """Median seconds of the timed epochs of each phase (epoch_phase)."""
    valid: Clocks
    rate: Clocks
    """The best dense float32 matmul rate of that process (GFLOP/s by each clock)."""
    bfloat16_rate: float
    """Its dense bfloat16 matmul rate (GFLOP/s, wall clock), for a bfloat16 model's context."""
    peak_rss_mb: float
    threads: int
    precision: str
    """The output layer's precision, how it was chosen and the rates measured (raycf.train.precision)."""


def run_model(split: Split, model: str, args: argparse.Namespace) -> ModelRun:
    """In a fresh process: time `epochs` epochs and validations of `model` (after `warmup` epochs) and measure the
    matmul rate before and after them."""
    from raycf.train.trainer import Trainer

    reset_peak_rss()
    if args.threads:
        torch.set_num_threads(args.threads)
    before = dense_matmul_gflops(args.device)
    config = TrainConfig.for_model(model, seed=0, matmul_dtype=args.matmul_dtype, batch_size=args.batch_size)
    trainer = Trainer(split, config, args.device)
    for _ in range(args.warmup):
        trainer.train_epoch()
    phases: dict[str, list[Clocks]] = {}
    for _ in range(args.epochs):
        phase = epoch_phase(trainer.config, trainer.epoch)
        phases.setdefault(phase, []).append(timed(trainer.train_epoch))
    epochs = {phase: median(timings) for phase, timings in phases.items()}
    valid = median([timed(trainer.validate) for _ in range(args.epochs)])
    peak = peak_rss_mb()
    after = dense_matmul_gflops(args.device)
    rate = Clocks(max(before.wall, after.wall), max(before.cpu, after.cpu))
    bfloat16_rate = dense_matmul_gflops(args.device, dtype=torch.bfloat16).wall
    assert trainer.precision is not None
    return ModelRun(epochs, valid, rate, bfloat16_rate, peak, torch.get_num_threads(),
                    precision_words(trainer.precision.to_dict()))


def in_own_process(split: Split, model: str, args: argparse.Namespace) -> ModelRun:
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(run_model, split, model, args).result()


def table_rows(split: Split, model: str, run: ModelRun) -> list[str]:
    """Per phase of its epochs: model, then per epoch and validation: seconds, bound, ratio, CPU-clock ratio; then
    peak RSS."""
    config = TrainConfig.for_model(model, seed=0)
    rows = []
    for phase, epoch in sorted(run.epochs.items(), reverse=True):
        row = f"{(model + ' ' + phase).strip():11s}"
        work = ((epoch, epoch_gflop(split, config, phase)), (run.valid, validation_gflop(split, config)))
        for seconds, gflop in work:
            bound = gflop / run.rate.wall
            row += (f" {seconds.wall:9.3f} {bound:8.3f} {seconds.wall / bound:6.2f}x "
                    f"{seconds.cpu / (gflop / run.rate.cpu):6.2f}x")
        rows.append(row + f" {run.peak_rss_mb:8.0f} {run.rate.wall:8.1f}")
    return rows


def machine_header(threads: int) -> str:
    """The CPU the figures come from (its model and the flags that decide bfloat16 speed), the torch threads
    and version: figures from two machines never belong in one table."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    lines = info.splitlines()
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown CPU")
    flags = set(next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), []))
    marks = ", ".join(f"{flag} {'yes' if flag in flags else 'no'}" for flag in ("avx512f", "avx512_bf16", "amx_bf16"))
    return f"machine: {model} ({marks}); {threads} torch threads; torch {torch.__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=["ml1m", "ml20m"], default="ml1m", help="ML-1M, or synthetic ML-20M shape")
    parser.add_argument("--epochs", type=int, help="timed epochs and validations per model (default 5; ml20m 1)")
    parser.add_argument("--warmup", type=int, help="untimed epochs first (default 1; ml20m 0)")
    parser.add_argument("--models", nargs="+", choices=["multvae", "autorec", "recvae"], default=["multvae", "autorec"])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's, one per core); 1 gives "
                        "steadier figures on a machine busy with other work")
    parser.add_argument("--matmul-dtype", choices=MATMUL_DTYPES, default="float32",
                        help="the models' matmul_dtype (bfloat16: mixed-precision output layer; the bound stays "
                             "float32's)")
    parser.add_argument("--batch-size", type=int, help="users per batch (default: each model's own: 100, RecVAE 500)")
    parser.add_argument("--split-cache", help="directory keeping the split between runs (created if missing)")
    args = parser.parse_args()
    small = args.shape == "ml1m"
    args.epochs = args.epochs or (5 if small else 1)
    args.warmup = (1 if small else 0) if args.warmup is None else args.warmup
    print(machine_header(args.threads or torch.get_num_threads()))
    started = time.perf_counter()
    split = build_split(args.shape, args.split_cache)
    print(f"data: {split.manifest['source']} -> {split.n_users:,} users x {split.n_items:,} items, train "
          f"{split.train.nnz:,} entries ({time.perf_counter() - started:.1f}s); {args.warmup} warm-up + "
          f"{args.epochs} timed epochs and validations per model, medians; load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs")
    print(f"{'model':11s} {'epoch s':>9s} {'bound s':>8s} {'ratio':>7s} {'cpu':>7s} {'valid s':>9s} {'bound s':>8s} "
          f"{'ratio':>7s} {'cpu':>7s} {'peak MB':>8s} {'GFLOP/s':>8s}")
    for model in args.models:
        run = in_own_process(split, model, args)
        for row in table_rows(split, model, run):
            print(row, flush=True)
        print(f"{'':11s} output layer in {run.precision}", flush=True)
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {run.threads} torch threads"
    print(f"--matmul-dtype {args.matmul_dtype}; dense bfloat16 matmul {run.bfloat16_rate:.0f} GFLOP/s (the bound stays "
          f"float32's)")
    print(f"{device}; GFLOP/s: the dense float32 matmul rate the bound uses; load average now "
          f"{os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
