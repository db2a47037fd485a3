"""The reference table on ML-1M: both models over several split seeds, mean and spread (prints a table).

    python benchmarks/reproduce_table.py [--seeds 0,1,2] [--lambdas 1e-4,1e-3,1e-2,1e-1]

Mult-VAE runs with the reference settings (constant beta 0.2); AutoRec's lambda is chosen per seed on
validation NDCG@5 from the grid. Test metrics use train-only masking, as the write-up does.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from raycf.data.loaders import read_interactions
from raycf.data.schemes.records import split_interactions
from raycf.eval.evaluation import evaluate_model, summarize
from raycf.eval.metrics import METRICS
from raycf.models.config import TrainConfig
from raycf.runs.layout import REFERENCE
from raycf.train.trainer import TrainResult, train

DEFAULT_ML1M = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-1m" / "ratings.dat.gz"


def numbers(text: str, kind: type) -> list:
    return [kind(part) for part in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--lambdas", default="1e-4,1e-3,1e-2,1e-1")
    args = parser.parse_args()
    path = Path(os.environ.get("RAYCF_ML1M", DEFAULT_ML1M))
    interactions = read_interactions(path)
    results: dict[str, list[dict[str, float]]] = {"autorec": [], "multvae": []}
    for seed in numbers(args.seeds, int):
        split = split_interactions(interactions, seed=seed, source=str(path))
        candidates = [train(split, TrainConfig.for_model("autorec", l2=lam, seed=seed))
                      for lam in numbers(args.lambdas, float)]
        best_autorec: TrainResult = max(candidates, key=lambda result: result.best_valid["ndcg"])
        chosen = {"multvae": train(split, TrainConfig.for_model("multvae", seed=seed)), "autorec": best_autorec}
        for model, result in chosen.items():
            test = summarize(evaluate_model(result.model, split, "test", mask="train"))
            results[model].append(test)
            print(f"seed {seed} {model:8s} lambda={result.config.params.l2:g} best epoch {result.best_epoch:4d} "
                  + " ".join(f"{name} {test[name]:.4f}" for name in METRICS), flush=True)
    print(f"\nML-1M test @5, train-only masking, split seeds {args.seeds} (mean ± std) vs the write-up:")
    print("| method | " + " | ".join(f"{name.capitalize()}@5" for name in METRICS) + " |")
    print("|---|" + "---|" * len(METRICS))
    for model in ("autorec", "multvae"):
        values = {name: np.array([row[name] for row in results[model]]) for name in METRICS}
        print(f"| {model} (raycf) | " + " | ".join(
            f"{values[name].mean():.4f} ± {values[name].std(ddof=1) if len(values[name]) > 1 else 0:.4f}"
            for name in METRICS) + " |")
        print(f"| {model} (write-up) | " + " | ".join(f"{REFERENCE[model][name]:.4f}" for name in METRICS) + " |")


if __name__ == "__main__":
    main()
