"""RecVAE on ML-1M on the two research protocols, one training run per split seed (prints a table).

    python benchmarks/bench_recvae.py [--seeds 0] [--protocols writeup,strong] [--max-epochs 200] [--patience 40]
        [--set gamma=0.005 --set dropout=0.5 ...] [--progress]

`writeup`: the write-up's protocol (a random 60/20/20 split of the records, best epoch by validation NDCG@5, test
P/R/NDCG/MRR@5 with train-only masking). `strong`: strong generalization as studies/ml1m-strong.yaml (ratings >= 3.5,
users with >= 5 of them, 600 + 600 held-out users, 80% folded in; best epoch by validation NDCG@100; test
Recall@20, Recall@50, NDCG@100). RecVAE at its defaults (the paper's settings) with `--set` overrides. Reads
$RAYCF_ML1M (default ../shared/data/ml-1m/ratings.dat.gz); each run's outputs go to a temporary directory.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from reproduce_table import DEFAULT_ML1M, numbers

from raycf.data.spec import DataSpec
from raycf.eval.metrics import Selection
from raycf.models.config import TrainConfig
from raycf.train.trainer import run_training

PROTOCOLS: dict[str, tuple[dict[str, Any], Selection, tuple[str, ...]]] = {
    "writeup": ({}, Selection.parse("ndcg@5"), ("precision", "recall", "ndcg", "mrr")),
    "strong": ({"min_rating": 3.5, "min_user_items": 5, "scheme": "users", "heldout_users": 600, "fold_in": 0.8},
               Selection.parse("ndcg@100", "max", "recall@20,recall@50"), ("recall@20", "recall@50", "ndcg@100")),
}
"""Each protocol's data settings, selection, and the test metrics printed."""


def overrides(pairs: list[str]) -> dict[str, Any]:
    """`--set name=value` pairs, values read as YAML (numbers, lists)."""
    return {name: yaml.safe_load(value) for name, value in (pair.split("=", 1) for pair in pairs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--protocols", default="writeup,strong")
    parser.add_argument("--max-epochs", type=int, default=200)
    parser.add_argument("--patience", type=int, default=40)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--progress", action="store_true", help="print every epoch's line")
    args = parser.parse_args()
    path = Path(os.environ.get("RAYCF_ML1M", DEFAULT_ML1M))
    given = overrides(args.set)
    print(f"RecVAE {given or '(defaults)'}, max_epochs {args.max_epochs}, patience {args.patience}", flush=True)
    for protocol in args.protocols.split(","):
        spec, selection, shown = PROTOCOLS[protocol]
        print(f"\n{protocol}: seed | best epoch / run | seconds | valid {selection.label} | "
              + " | ".join(f"test {name}" for name in shown), flush=True)
        for seed in numbers(args.seeds, int):
            config = TrainConfig.for_model("recvae", **given, seed=seed, max_epochs=args.max_epochs,
                                           patience=args.patience)
            started = time.perf_counter()
            with tempfile.TemporaryDirectory() as scratch:
                run = run_training(DataSpec(dataset=None, ratings=str(path), **spec), config,
                                   fractions=(0.6, 0.2, 0.2), mask="train", out=Path(scratch) / "run",
                                   selection=selection, progress=print if args.progress else None)
            metrics = run.metrics
            print(f"{seed} | {metrics['best_epoch']} / {metrics['epochs_run']} | {time.perf_counter() - started:.0f} | "
                  f"{metrics['valid'][selection.field]:.4f} | "
                  + " | ".join(f"{metrics['test'][name]:.4f}" for name in shown), flush=True)


if __name__ == "__main__":
    main()
