"""A study's trials as tables: trials ranked best first, and each candidate's mean over the robust selection's
seeds (pandas only: the report reads them without Ray)."""

from __future__ import annotations

import json

import pandas as pd

from raycf.eval.metrics import Selection


def seed_means(rows: pd.DataFrame, selection: Selection) -> pd.DataFrame:
    """Per candidate trial: `select_mean`, `select_std` (ddof 1; 0 for one seed) of the validation metric
    over the seeds, and `select_seeds` (JSON list)."""
    grouped = rows.groupby("trial_id")
    return pd.DataFrame({
        "select_mean": grouped[selection.key].mean(),
        "select_std": grouped[selection.key].std(ddof=1).fillna(0.0),
        "select_seeds": grouped["seed"].apply(lambda seeds: json.dumps(sorted(int(seed) for seed in seeds))),
    }).reset_index()



def rank_trials(trials: pd.DataFrame, selection: Selection, means: pd.DataFrame | None) -> pd.DataFrame:
    """Trials with a checkpoint, best first: by their mean over the selection seeds when there was a robust
    selection (only its candidates), else by their own validation metric."""
    usable = trials[trials["checkpoint"].notna()]
    key = selection.key
    if means is not None:
        usable = usable.merge(means, on="trial_id")
        key = "select_mean"
    return usable.sort_values([key, "trial_id"], ascending=[selection.mode == "min", True], ignore_index=True)
