"""Robust selection: after the search, the `top` best configurations of each model (by the study's
validation metric) are trained again on several split seeds as Ray tasks (on the study's own split, a trial
that ended on its own is that run already: raycf.tune.seed_runs), and each model's winner is the
configuration with the best MEAN validation metric over those seeds.

A validation mean over ~6,000 users moves by about 0.004 NDCG@5 with the luck of the split; one split
cannot tell configurations 0.001 apart, several can. Test metrics of these runs are recorded in
select.parquet (they give the selected configuration's test figures over the seeds) and never decide
anything.
"""

from __future__ import annotations

import pandas as pd

from raycf.eval.metrics import Selection
from raycf.runs.layout import SELECT_FILE
from raycf.runs.record import StudyRecord
from raycf.runs.trials import rank_trials
from raycf.storage.location import Location, parquet_bytes


def candidates(trials: pd.DataFrame, selection: Selection, top: int) -> pd.DataFrame:
    """The `top` best trials with a checkpoint of each model, by the validation metric of their search."""
    return rank_trials(trials, selection, None).groupby("model", sort=False).head(top).reset_index(drop=True)


def run_selection(location: Location, record: StudyRecord, trials: pd.DataFrame,
                  selection: Selection) -> pd.DataFrame:
    """The candidates on every selection seed, trained or the trial's own run (raycf.tune.seed_runs); write
    select.parquet (one row per trial and seed: `trial_id`, `model`, `seed`, `best_epoch`, `epochs_run`,
    `valid_*`, test `precision` ... `mrr`, `config`, `from_trial`, `train_seconds`, `valid_seconds`)."""
    from raycf.tune.seed_runs import (
        train_on_seeds,  # Ray: only when the selection runs, not for the report
    )

    spec = record.select
    if spec is None:
        raise ValueError(f"{record.name}: the study has no robust selection (study key select)")
    chosen = candidates(trials, selection, spec.top)
    rows = train_on_seeds(location, record, spec.seeds, chosen, "selection")
    location.write_bytes(SELECT_FILE, parquet_bytes(rows))
    return rows
