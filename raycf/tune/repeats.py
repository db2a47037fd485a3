"""Seed repeats: the best configuration of each model trained again on several split seeds, in parallel
as Ray tasks, with mean and spread of every test metric and a paired comparison of the models."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
import ray
import torch
from scipy import stats

from raycf.data.source import load_filtered
from raycf.data.spec import DataSpec
from raycf.data.split import Split
from raycf.eval.evaluation import evaluate_metrics, summarize
from raycf.eval.metrics import METRICS, Selection
from raycf.models.config import TrainConfig
from raycf.runs.layout import REPEATS_FILE, REPEATS_SUMMARY
from raycf.storage.json_text import json_text
from raycf.storage.location import Location, parquet_bytes
from raycf.train.trainer import train


@ray.remote
def repeat_run(split: Split, config: dict[str, Any], threads: int, selection: Selection) -> dict[str, Any]:
    """Train one configuration on one split (best epoch by `selection`); its validation metrics at that epoch
    (`valid_*`) and its test metrics there (each user's inputs masked: Split.known)."""
    torch.set_num_threads(threads)
    result = train(split, TrainConfig.from_dict(config, where="repeat", stored=True), selection=selection)
    test = summarize(evaluate_metrics(result.model, split, "test", selection.metrics, mask="train"))
    valid = {f"valid_{name}": result.best_valid[name] for name in selection.reported}
    return {"model": config["model"], "seed": config["seed"], "best_epoch": result.best_epoch,
            "epochs_run": result.epochs_run, **valid, **{name: test[name] for name in selection.reported},
            "config": json.dumps(config, sort_keys=True)}


def train_on_seeds(data: DataSpec, fractions: tuple[float, float, float], seeds: tuple[int, ...],
                   configs: list[str], cpus_per_task: float, selection: Selection) -> pd.DataFrame:
    """Every (configuration JSON, split seed) pair trained as a Ray task; one row each, in `configs` order
    (`config_index` says which) then seed order."""
    source = load_filtered(data)
    splits = {seed: ray.put(source.split(fractions, seed)) for seed in seeds}
    threads = max(1, int(cpus_per_task))
    futures = [repeat_run.options(num_cpus=cpus_per_task).remote(splits[seed], {**json.loads(config), "seed": seed},
                                                                 threads, selection)
               for config in configs for seed in seeds]
    rows = pd.DataFrame(ray.get(futures))
    rows.insert(0, "config_index", [index for index in range(len(configs)) for _ in seeds])
    return rows


def paired_comparison(repeats: pd.DataFrame, first: str, second: str) -> dict[str, Any]:
    """Per metric: mean and std of first - second over the shared seeds, wins, paired t-test."""
    table = repeats.pivot(index="seed", columns="model", values=list(METRICS)).dropna()
    comparison: dict[str, Any] = {"models": [first, second], "seeds": [int(seed) for seed in table.index]}
    for name in METRICS:
        difference = (table[(name, first)] - table[(name, second)]).to_numpy()
        entry = {"mean_difference": float(difference.mean()), "wins": int((difference > 0).sum())}
        if len(difference) > 1:
            entry["std_difference"] = float(difference.std(ddof=1))
            test = stats.ttest_rel(table[(name, first)], table[(name, second)])
            entry |= {"t": float(test.statistic), "p_value": float(test.pvalue)}
        comparison[name] = entry
    return comparison


def test_fields(repeats: pd.DataFrame) -> list[str]:
    """The test metric columns of repeats.parquet: precision ... mrr, then the report metrics (recall@20)."""
    return [*METRICS, *(column for column in repeats.columns if "@" in column and not column.startswith("valid_"))]


def summarize_repeats(repeats: pd.DataFrame) -> dict[str, Any]:
    """Mean and standard deviation of each test metric per model, and the paired comparison."""
    per_model = {
        model: {name: {"mean": float(rows[name].mean()),
                       "std": float(rows[name].std(ddof=1)) if len(rows) > 1 else 0.0} for name in test_fields(repeats)}
        for model, rows in repeats.groupby("model")
    }
    summary: dict[str, Any] = {"mask": "train", "k": 5, "per_model": per_model}
    models = sorted(per_model)
    if len(models) == 2:
        summary["paired"] = paired_comparison(repeats, models[1], models[0])
    return summary


def run_repeats(location: Location, data: DataSpec, fractions: tuple[float, float, float],
                seeds: tuple[int, ...], leaderboard: pd.DataFrame, cpus_per_task: float,
                selection: Selection) -> pd.DataFrame:
    """Train every (best configuration, seed) pair as a Ray task; write repeats.parquet and repeats.json."""
    rows = train_on_seeds(data, fractions, seeds, list(leaderboard["config"]), cpus_per_task, selection)
    repeats = rows[["model", "seed", "best_epoch", "epochs_run", *selection.reported, "config"]]
    repeats = repeats.sort_values(["model", "seed"], ignore_index=True)
    location.write_bytes(REPEATS_FILE, parquet_bytes(repeats))
    summary = summarize_repeats(repeats)
    location.write_bytes(REPEATS_SUMMARY, json_text(summary).encode())
    return repeats


def format_repeats(repeats: pd.DataFrame) -> str:
    """Mean ± std of each test metric per model over the seeds."""
    summary = summarize_repeats(repeats)
    lines = [f"test @5 over split seeds {sorted(repeats['seed'].unique().tolist())} (each user's inputs masked: "
             "train items, or a held-out user's fold-in items):"]
    for model, metrics in summary["per_model"].items():
        lines.append(f"  {model:8s} " + "  ".join(
            f"{name} {values['mean']:.4f}±{values['std']:.4f}" for name, values in metrics.items()))
    if "paired" in summary:
        first, second = summary["paired"]["models"]
        ndcg = summary["paired"]["ndcg"]
        lines.append(f"  {first} - {second}: ndcg {ndcg['mean_difference']:+.4f}, wins {ndcg['wins']} of "
                     f"{len(summary['paired']['seeds'])}" + (f", paired t p={ndcg['p_value']:.3g}" if "p_value" in ndcg
                                                              else ""))
    return "\n".join(lines)
