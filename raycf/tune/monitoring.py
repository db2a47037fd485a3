"""A study's metrics, exported through `ray.util.metrics` beside Ray's (dashboard, Prometheus).

Prometheus names get Ray's `ray_` prefix, and counters a `_total` suffix: `ray_raycf_trials_running`,
`ray_raycf_best_valid_metric{model=...}`, `ray_raycf_users_scored_total`, ...
"""

from __future__ import annotations

import time
from typing import Any

from ray import tune
from ray.util.metrics import Counter, Gauge

from raycf.eval.metrics import Selection
from raycf.tune.endings import SCHEDULER_STOPS, trial_ending

STUDY_TAGS = ("study",)
MODEL_TAGS = ("study", "model")
class StudyMetrics(tune.Callback):
    """A Tune callback (it runs in the driver) that keeps the study's gauges and counters current."""

    def __init__(self, study: str, selection: Selection = Selection()) -> None:
        self.tags = {"study": study}
        self.selection = selection
        self.running = Gauge("raycf_trials_running", "Trials of the study running now.", STUDY_TAGS)
        self.finished = Counter("raycf_trials_finished",
                                "Trials that ended by themselves (patience, or a complete fit).", MODEL_TAGS)
        self.stopped = Counter("raycf_trials_stopped_early",
                               "Trials stopped by the scheduler (ASHA, or its epoch limit max_t).", MODEL_TAGS)
        self.errored = Counter("raycf_trials_errored", "Trial failures (each retry counts).", MODEL_TAGS)
        self.best = Gauge("raycf_best_valid_metric", f"Best validation {selection.label} (the study's metric) so far, "
                          "per model.", MODEL_TAGS)
        self.epochs = Counter("raycf_epochs", "Training epochs completed.", MODEL_TAGS)
        self.speed = Gauge("raycf_epochs_per_second", "Epochs completed per second of study time, all trials.",
                           STUDY_TAGS)
        self.started = time.monotonic()
        self.total_epochs = 0
        self.best_by_model: dict[str, float] = {}
        self.last_epoch: dict[str, int] = {}
        self.running.set(0, tags=self.tags)

    def _model_tags(self, trial: Any) -> dict[str, str]:
        return {**self.tags, "model": trial.config["trial"]["model"]}

    def _count_running(self, trials: list[Any]) -> None:
        self.running.set(sum(trial.status == "RUNNING" for trial in trials), tags=self.tags)

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._count_running(trials)

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any],
                        **info: Any) -> None:
        tags = self._model_tags(trial)
        new_epochs = int(result["epoch"]) - self.last_epoch.get(trial.trial_id, 0)
        self.last_epoch[trial.trial_id] = int(result["epoch"])
        if new_epochs > 0:
            self.epochs.inc(new_epochs, tags=tags)
            self.total_epochs += new_epochs
            self.speed.set(self.total_epochs / max(time.monotonic() - self.started, 1e-9), tags=self.tags)
        value = float(result[self.selection.key])
        if self.selection.improves(value, self.best_by_model.get(tags["model"])):
            self.best_by_model[tags["model"]] = value
            self.best.set(value, tags=tags)
        self._count_running(trials)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """Count the ended trial as trials.parquet will: stopped early (ASHA, max_t) or finished (patience,
        complete)."""
        ending = trial_ending(trial.config, trial.last_result or {})
        counter = self.stopped if ending in SCHEDULER_STOPS else self.finished
        counter.inc(tags=self._model_tags(trial))
        self._count_running(trials)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.errored.inc(tags=self._model_tags(trial))
        self._count_running(trials)

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.on_trial_error(iteration, trials, trial)
