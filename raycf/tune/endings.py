"""Why a trial ended (`stopped_by` in trials.parquet): one rule for the trial table and the study's metrics."""

from __future__ import annotations

from typing import Any

from raycf.models import planned_epochs
from raycf.models.config import TrainConfig


def stop_reason(row: dict[str, Any], config: dict[str, Any], max_t: int) -> str:
    """Why a trial ended: its own early stopping, a complete fit (a fitted model's iterations), the epoch
    limit, ASHA, or an error."""
    if row["error"]:
        return "error"
    if row["epochs_run"] - row["best_epoch"] >= config.get("patience", 0):
        return "patience"
    fit = planned_epochs(TrainConfig.from_dict(config, stored=True)) if "model" in config else max_t
    if fit < max_t and row["epochs_run"] >= fit:  # a fitted model ran all its iterations
        return "complete"
    if row["epochs_run"] >= max_t:
        return "max_t"
    return "asha"


def trial_ending(config: dict[str, Any], last_result: dict[str, Any]) -> str:
    """Why a trial that Tune completed without an error ended: `patience`, `complete`, `max_t` or `asha`, as its
    `stopped_by` in trials.parquet says (`stop_reason` on its last result).

    A trial's `max_epochs` is the study's `scheduler.max_t`.
    """
    trial = config["trial"]
    row = {"error": None, "epochs_run": int(last_result.get("epoch", 0)),
           "best_epoch": int(last_result.get("best_epoch", 0))}
    return stop_reason(row, trial, trial["max_epochs"])
