"""Robust selection: after the search, the `top` best configurations of each model (by the study's
validation metric) are trained again on several split seeds as Ray tasks, and each model's winner is the
configuration with the best MEAN validation metric over those seeds.

A validation mean over ~6,000 users moves by about 0.004 NDCG@5 with the luck of the split; one split
cannot tell configurations 0.001 apart, several can. Test metrics of these runs are recorded in
select.parquet (they give the selected configuration's test figures over the seeds) and never decide
anything.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from raycf.data.source import DataSpec
from raycf.layout import SELECT_FILE
from raycf.metrics import Selection
from raycf.storage import Location, parquet_bytes


def candidates(trials: pd.DataFrame, selection: Selection, top: int) -> pd.DataFrame:
    """The `top` best trials with a checkpoint of each model, by the validation metric of their search."""
    return rank(trials, selection, None).groupby("model", sort=False).head(top).reset_index(drop=True)


def run_selection(location: Location, facts: dict[str, Any], trials: pd.DataFrame,
                  selection: Selection) -> pd.DataFrame:
    """Train the candidates on every selection seed; write select.parquet (one row per trial and seed:
    `trial_id`, `model`, `seed`, `best_epoch`, `epochs_run`, `valid_*`, test `precision` ... `mrr`, `config`)."""
    from raycf.repeats import (
        train_on_seeds,  # Ray: only when the selection runs, not for the report
    )

    spec = facts["select"]
    chosen = candidates(trials, selection, spec["top"])
    rows = train_on_seeds(DataSpec(**facts["data_spec"]), tuple(facts["fractions"]), tuple(spec["seeds"]),
                          list(chosen["config"]), facts["cpus_per_trial"], selection)
    rows.insert(0, "trial_id", chosen["trial_id"].to_numpy()[rows.pop("config_index").to_numpy()])
    location.write_bytes(SELECT_FILE, parquet_bytes(rows))
    return rows


def seed_means(rows: pd.DataFrame, selection: Selection) -> pd.DataFrame:
    """Per candidate trial: `select_mean`, `select_std` (ddof 1; 0 for one seed) of the validation metric
    over the seeds, and `select_seeds` (JSON list)."""
    grouped = rows.groupby("trial_id")
    return pd.DataFrame({
        "select_mean": grouped[selection.key].mean(),
        "select_std": grouped[selection.key].std(ddof=1).fillna(0.0),
        "select_seeds": grouped["seed"].apply(lambda seeds: json.dumps(sorted(int(seed) for seed in seeds))),
    }).reset_index()


def rank(trials: pd.DataFrame, selection: Selection, means: pd.DataFrame | None) -> pd.DataFrame:
    """Trials with a checkpoint, best first: by their mean over the selection seeds when there was a robust
    selection (only its candidates), else by their own validation metric."""
    usable = trials[trials["checkpoint"].notna()]
    key = selection.key
    if means is not None:
        usable = usable.merge(means, on="trial_id")
        key = "select_mean"
    return usable.sort_values([key, "trial_id"], ascending=[selection.mode == "min", True], ignore_index=True)
