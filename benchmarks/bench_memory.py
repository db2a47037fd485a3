"""Memory of one Tune trial over a long run: RSS of the trial's process every 50 epochs, and its growth.

    python benchmarks/bench_memory.py                      # synthetic 8,000 users x 2,000 items, Mult-VAE
    python benchmarks/bench_memory.py --model autorec --epochs 300
    python benchmarks/bench_memory.py --ratings ../shared/data/ml-1m/ratings.dat.gz   # or $RAYCF_ML1M

The trial reports `rss_mb` (its resident memory) with every epoch; patience is set above the epoch count
so that it trains all of them.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from raycf.cluster.connection import connect
from raycf.study.schema import load_study
from raycf.tune.driver import TuneOptions, run_study

ML1M = Path(os.environ.get("RAYCF_ML1M", Path(__file__).resolve().parents[2] / "shared/data/ml-1m/ratings.dat.gz"))

STUDY = """
name: memory
seed: 0
data: {data}
scheduler: {{type: fifo, max_t: {epochs}}}
resources: {{cpus_per_trial: {cpus}}}
num_samples: 1
max_failures: 0
models:
  {model}:
    fixed: {{patience: {patience}}}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["multvae", "autorec"], default="multvae")
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--every", type=int, default=50, help="print the RSS every this many epochs")
    parser.add_argument("--users", type=int, default=8000, help="synthetic users")
    parser.add_argument("--items", type=int, default=2000, help="synthetic items")
    parser.add_argument("--ratings", nargs="?", const=str(ML1M), default=None,
                        help=f"train on this ratings file instead (no value: {ML1M})")
    parser.add_argument("--cpus", type=float, default=1.0, help="CPUs of the trial")
    args = parser.parse_args()
    if args.ratings is None:
        data = f"{{dataset: synthetic, synthetic: {{n_users: {args.users}, n_items: {args.items}}}}}"
    else:
        data = json.dumps({"ratings": str(Path(args.ratings).resolve())})
    storage = Path(tempfile.mkdtemp(prefix="raycf-bench-memory-"))
    study_file = storage / "memory.yaml"
    study_file.write_text(STUDY.format(data=data, epochs=args.epochs, cpus=args.cpus, model=args.model,
                                       patience=args.epochs + 1))
    connect(None)
    started = time.perf_counter()
    run_dir = Path(run_study(load_study(study_file),
                             TuneOptions(storage=str(storage), name="memory", verbose=0)).run_dir)
    wall = time.perf_counter() - started
    (trial_dir,) = run_dir.glob("run_trial_*")
    rows = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]
    rss = {row["epoch"]: row["rss_mb"] for row in rows}
    epochs = sorted(rss)
    print(f"{args.model} on {json.loads((run_dir / 'split' / 'manifest.json').read_text())['source']}: "
          f"{epochs[-1]} epochs in {wall:.0f} s (one trial, {args.cpus:g} CPU, pid {rows[-1]['pid']})")
    print(f"{'epoch':>6} {'RSS MiB':>9}")
    for epoch in [epochs[0], *range(args.every, epochs[-1] + 1, args.every)]:
        print(f"{epoch:6d} {rss[epoch]:9.1f}")
    warm = args.every if args.every in rss else epochs[0]
    print(f"growth: {rss[epochs[-1]] - rss[epochs[0]]:+.1f} MiB from epoch {epochs[0]}, "
          f"{rss[epochs[-1]] - rss[warm]:+.1f} MiB from epoch {warm} to {epochs[-1]}; "
          f"max {max(rss.values()):.1f} MiB")
    print(f"run directory: {run_dir}")


if __name__ == "__main__":
    main()
