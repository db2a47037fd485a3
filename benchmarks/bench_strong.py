"""README's strong-generalization table: each model's configuration selected by studies/ml1m-strong.yaml, trained
on one split seed of the study's data and tested with both recalls (prints a table).

    python benchmarks/bench_strong.py [--ratings ../shared/data/ml-1m/ratings.dat.gz] [--seed 0]
        [--models pop,ease,itemknn,ials,autorec,multvae] [--multvae-batch 500,100] [--threads 1]

Every configuration is the study's fixed fields plus the searched values the study selected (SELECTED, as
README's table names them), trained as the study's seed repeats train it: split seed and training seed both
--seed, at most scheduler.max_t epochs, best epoch by validation NDCG@100, test with train-only masking (a
held-out user's input is the fold-in). Recall@k is printed twice: `recall` (hits / held-out items, raycf's)
and `recall_capped` (hits / min(k, held-out items), Liang et al.'s and Steck's). Each --multvae-batch size
trains Mult-VAE once more with that batch size, to compare where validation peaks.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
from reproduce_table import DEFAULT_ML1M, numbers

from raycf.data.source import prepare_split
from raycf.eval.evaluation import evaluate_metrics, summarize
from raycf.models.config import TrainConfig
from raycf.study.schema import Study, apply_overrides, load_study
from raycf.train.trainer import train

STUDY = Path(__file__).resolve().parents[1] / "studies" / "ml1m-strong.yaml"
SELECTED: dict[str, dict[str, Any]] = {
    "pop": {},
    "ease": {"l2": 1000.0},
    "itemknn": {"neighbors": 200, "shrink": 0.0},
    "ials": {"factors": 64, "l2": 10.0, "alpha": 5.0},
    "autorec": {"l2": 1.0e-4},
    "multvae": {"beta": 0.4, "anneal_steps": 2000},
}
"""The searched values the study selected on seed 0 (README's table); the study file fixes the rest."""
COLUMNS = ("recall@20", "recall_capped@20", "recall@50", "recall_capped@50", "ndcg@100")


def config_of(study: Study, model: str, seed: int, **overrides: Any) -> TrainConfig:
    """The study's fixed fields for `model`, its selected searched values and `overrides`, as a trial runs it."""
    search = next(entry for entry in study.models if entry.model == model)
    return TrainConfig.for_model(model, **{**search.fixed, **SELECTED[model], **overrides},
                                 max_epochs=study.scheduler.max_t, seed=seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratings", default=str(DEFAULT_ML1M))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", default=",".join(SELECTED), help=f"a subset of {','.join(SELECTED)}")
    parser.add_argument("--multvae-batch", default="", help="more Mult-VAE runs with these batch sizes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a study trial has 1 CPU)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    study = apply_overrides(load_study(STUDY, check_ratings=False), ratings=args.ratings)
    selection = study.selection
    split = prepare_split(study.data, study.fractions, args.seed)
    runs = [(model, config_of(study, model, args.seed)) for model in args.models.split(",")]
    runs += [("multvae", config_of(study, "multvae", args.seed, batch_size=size))
             for size in numbers(args.multvae_batch, int) if args.multvae_batch]
    print(f"{STUDY.name}, split seed {args.seed}: {split.n_users:,} users, {split.n_items:,} items; selection "
          f"{selection.label}; test, train-only masking (held-out users ranked from their fold-in)", flush=True)
    rows = []
    for model, config in runs:
        started = time.perf_counter()
        result = train(split, config, selection=selection)
        test = summarize(evaluate_metrics(result.model, split, "test", selection.metrics, mask="train"))
        fields = {name: value for name, value in config.to_dict().items() if name != "model"}
        rows.append((model, fields, result.best_epoch, result.best_valid[selection.field], test))
        print(f"{model}: best epoch {result.best_epoch} of {result.epochs_run}, valid {selection.label} "
              f"{result.best_valid[selection.field]:.4f}, {time.perf_counter() - started:.0f} s; "
              + " ".join(f"{name} {test[name]:.4f}" for name in COLUMNS), flush=True)
    print(f"\n| model | configuration (every field) | best epoch | valid {selection.label} | "
          + " | ".join(COLUMNS) + " |")
    print("|---|---|---|---|" + "---|" * len(COLUMNS))
    for model, fields, best_epoch, valid, test in rows:
        described = ", ".join(f"{name} {value}" for name, value in fields.items())
        print(f"| {model} | {described} | {best_epoch} | {valid:.4f} | "
              + " | ".join(f"{test[name]:.4f}" for name in COLUMNS) + " |")


if __name__ == "__main__":
    main()
