"""Mult-DAE's l2 on ML-1M: one run per l2 on a split seed, chosen by validation NDCG@5 (prints one line per value).

    python benchmarks/bench_multdae.py [--l2 0,4e-5,2e-4,1e-3,5e-3,2.5e-2] [--seed 0]

Reads and splits ML-1M ($RAYCF_ML1M, default ../shared/data/ml-1m/ratings.dat.gz) 60/20/20 by records, trains
Mult-DAE with its other defaults (dropout 0.5, hidden 200, batch 100, Adam 1e-3) once per l2 with early stopping
on validation NDCG@5 (patience 50), and prints each run's best epoch, epochs run, validation NDCG@5 and test
P/R/NDCG/MRR@5 (train-only masking, as the write-up; for the record only), then the l2 that validation picks:
the one raycf.models.multdae takes as its default.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from reproduce_table import DEFAULT_ML1M, numbers

from raycf.data.source import prepare_split
from raycf.data.spec import DataSpec
from raycf.eval.evaluation import evaluate_model, summarize
from raycf.eval.metrics import METRICS
from raycf.models.config import TrainConfig
from raycf.train.trainer import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--l2", default="0,4e-5,2e-4,1e-3,5e-3,2.5e-2", help="the l2 values to try")
    parser.add_argument("--seed", type=int, default=0, help="split and training seed")
    args = parser.parse_args()
    path = Path(os.environ.get("RAYCF_ML1M", DEFAULT_ML1M))
    split = prepare_split(DataSpec(ratings=str(path)), (0.6, 0.2, 0.2), seed=args.seed)
    print(f"Mult-DAE on ML-1M, split seed {args.seed}: {split.n_users} users, {split.n_items} items; test @5 with "
          "train-only masking (for the record: the choice is made on validation)")
    print("| l2 | best epoch | epochs run | valid NDCG@5 | test P@5 | test R@5 | test NDCG@5 | test MRR@5 | s |")
    print("|---|---|---|---|---|---|---|---|---|")
    valid = {}
    for l2 in numbers(args.l2, float):
        result = train(split, TrainConfig.for_model("multdae", seed=args.seed, l2=l2))
        test = summarize(evaluate_model(result.model, split, "test", mask="train"))
        valid[l2] = result.best_valid["ndcg"]
        print(f"| {l2:g} | {result.best_epoch} | {result.epochs_run} | {valid[l2]:.4f} | "
              + " | ".join(f"{test[name]:.4f}" for name in METRICS) + f" | {result.seconds:.0f} |", flush=True)
        del result  # freed before the next run trains
    chosen = max(valid, key=valid.get)
    at_edge = len(valid) > 1 and (chosen == max(valid) or 0 < chosen == min(valid))  # l2 = 0 is the lowest there is
    edge = " (at the edge of the grid: extend it)" if at_edge else ""
    print(f"\nvalidation NDCG@5 picks l2 = {chosen:g} ({valid[chosen]:.4f}){edge}")


if __name__ == "__main__":
    main()
