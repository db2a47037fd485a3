"""Seed repeats: the best configuration of each model on several split seeds (raycf.tune.seed_runs: trained again
as Ray tasks, or the trial's own run), with mean and spread of every test metric and a paired comparison of the
models."""

from __future__ import annotations

from typing import Any

import pandas as pd
from scipy import stats

from raycf.eval.metrics import METRICS
from raycf.runs.layout import REPEATS_FILE, REPEATS_SUMMARY
from raycf.runs.record import StudyRecord
from raycf.storage.json_text import json_text
from raycf.storage.location import Location, parquet_bytes
from raycf.tune.seed_runs import train_on_seeds


def paired_comparison(repeats: pd.DataFrame, first: str, second: str) -> dict[str, Any]:
    """Per test metric (`test_fields`): mean and std of first - second over the shared seeds, wins, paired
    t-test."""
    names = test_fields(repeats)
    table = repeats.pivot(index="seed", columns="model", values=names).dropna()
    comparison: dict[str, Any] = {"models": [first, second], "seeds": [int(seed) for seed in table.index]}
    for name in names:
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


def run_repeats(location: Location, record: StudyRecord, leaderboard: pd.DataFrame) -> pd.DataFrame:
    """Every (best configuration, repeat seed) pair, trained as a Ray task or the trial's own run
    (raycf.tune.seed_runs); write repeats.parquet and repeats.json."""
    rows = train_on_seeds(location, record, record.repeat_seeds, leaderboard, "repeats")
    repeats = rows[["model", "seed", "best_epoch", "epochs_run", *record.selection.reported, "config", "from_trial",
                    "train_seconds", "valid_seconds"]]
    repeats = repeats.sort_values(["model", "seed"], ignore_index=True)
    location.write_bytes(REPEATS_FILE, parquet_bytes(repeats))
    summary = summarize_repeats(repeats)
    location.write_bytes(REPEATS_SUMMARY, json_text(summary).encode())
    return repeats


def format_repeats(repeats: pd.DataFrame, metric: str = "ndcg") -> str:
    """Mean ± std of each test metric per model over the seeds; with two models, their paired difference in the
    study's `metric` (a repeats.parquet column: `ndcg`, `ndcg@100`)."""
    summary = summarize_repeats(repeats)
    lines = [f"test metrics over split seeds {sorted(repeats['seed'].unique().tolist())} (@5 unless named; each "
             "user's inputs masked: train items, or a held-out user's fold-in items):"]
    for model, metrics in summary["per_model"].items():
        lines.append(f"  {model:8s} " + "  ".join(
            f"{name} {values['mean']:.4f}±{values['std']:.4f}" for name, values in metrics.items()))
    if "paired" in summary:
        first, second = summary["paired"]["models"]
        paired = summary["paired"][metric]
        lines.append(f"  {first} - {second}: {metric} {paired['mean_difference']:+.4f}, wins {paired['wins']} of "
                     f"{len(summary['paired']['seeds'])}" + (f", paired t p={paired['p_value']:.3g}"
                                                              if "p_value" in paired else ""))
    return "\n".join(lines)
