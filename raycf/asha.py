"""ASHA per model: a trial only competes with trials of its own model.

Mult-VAE reaches a good validation NDCG@5 within a few epochs while AutoRec starts slowly; one shared
ASHA would stop every AutoRec trial at the first rung. This scheduler keeps one Ray `ASHAScheduler`
per model and hands each trial's events to its model's scheduler.
"""

from __future__ import annotations

from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler


def trial_model(trial: Trial) -> str:
    return trial.config["trial"]["model"]


class PerModelASHA(FIFOScheduler):
    """One ASHAScheduler per model (created on the model's first trial), all with the same settings."""

    def __init__(self, *, time_attr: str, max_t: int, grace_period: int, reduction_factor: float) -> None:
        super().__init__()
        self._settings = {
            "time_attr": time_attr,
            "max_t": max_t,
            "grace_period": grace_period,
            "reduction_factor": reduction_factor,
        }
        self._mode: str | None = None
        self.by_model: dict[str, ASHAScheduler] = {}

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        self._metric, self._mode = metric, mode
        return True

    def _scheduler(self, trial: Trial) -> ASHAScheduler:
        model = trial_model(trial)
        if model not in self.by_model:
            self.by_model[model] = ASHAScheduler(metric=self._metric, mode=self._mode, **self._settings)
        return self.by_model[model]

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        self._scheduler(trial).on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        return self._scheduler(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict) -> None:
        self._scheduler(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Trial) -> None:
        self._scheduler(trial).on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return "\n".join(f"{model}: {scheduler.debug_string()}" for model, scheduler in self.by_model.items())
