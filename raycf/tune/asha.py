"""ASHA per model: a trial only competes with trials of its own model.

Mult-VAE reaches a good validation NDCG@5 within a few epochs while AutoRec starts slowly; one shared
ASHA would stop every AutoRec trial at the first rung. This scheduler keeps one Ray `ASHAScheduler`
per model and hands each trial's events to its model's scheduler; a model may set its own `max_t` and
`grace_period` (a slow learner judged once it has learned).

Ray does not save a scheduler's state with the experiment, so a resumed study would start with empty
rungs and let every trial through them. Instead, each trial added with results already on storage (a
resumed trial) has them replayed into its model's rungs first, in the order they were reported.
"""

from __future__ import annotations

from typing import Any

import pyarrow.fs as pafs
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from raycf.cluster.ray_private import RESULT_FILE, trial_filesystem, trial_has_directory
from raycf.storage.location import parse_results


def trial_model(trial: Trial) -> str:
    return trial.config["trial"]["model"]


def reported_results(trial: Trial) -> list[dict[str, Any]]:
    """The results the trial reported before (its result file on storage); none for a new trial."""
    if not trial_has_directory(trial):  # new: Tune names its directory later
        return []
    filesystem, path = trial_filesystem(trial), f"{trial.path}/{RESULT_FILE}"
    if filesystem is None or filesystem.get_file_info(path).type != pafs.FileType.File:
        return []
    with filesystem.open_input_stream(path) as stream:
        return parse_results(stream.readall().decode())


class PerModelASHA(FIFOScheduler):
    """One ASHAScheduler per model (created on the model's first trial), all with the same settings but those
    `per_model` overrides (`{model: {"max_t": ..., "grace_period": ...}}`)."""

    def __init__(self, *, time_attr: str, max_t: int, grace_period: int, reduction_factor: float,
                 per_model: dict[str, dict[str, int]] | None = None) -> None:
        super().__init__()
        self._settings: dict[str, Any] = {
            "time_attr": time_attr,
            "max_t": max_t,
            "grace_period": grace_period,
            "reduction_factor": reduction_factor,
        }
        self._per_model = per_model or {}
        self._mode: str | None = None
        self.by_model: dict[str, ASHAScheduler] = {}
        self._replayed: set[str] = set()

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        self._metric, self._mode = metric, mode
        return True

    def _scheduler(self, trial: Trial) -> ASHAScheduler:
        model = trial_model(trial)
        if model not in self.by_model:
            settings = {**self._settings, **self._per_model.get(model, {})}
            self.by_model[model] = ASHAScheduler(metric=self._metric, mode=self._mode, **settings)
        return self.by_model[model]

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        scheduler = self._scheduler(trial)
        scheduler.on_trial_add(tune_controller, trial)
        if trial.trial_id not in self._replayed:  # a retried trial is added again: its results are in already
            self._replayed.add(trial.trial_id)
            for result in reported_results(trial):  # the decisions were taken then; only the rungs are filled
                scheduler.on_trial_result(tune_controller, trial, result)

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        return self._scheduler(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict) -> None:
        self._scheduler(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Trial) -> None:
        self._scheduler(trial).on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return "\n".join(f"{model}: {scheduler.debug_string()}" for model, scheduler in self.by_model.items())
