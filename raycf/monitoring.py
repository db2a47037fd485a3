"""raycf's own metrics, exported through `ray.util.metrics` beside Ray's (dashboard, Prometheus).

Prometheus names get Ray's `ray_` prefix, and counters a `_total` suffix: `ray_raycf_trials_running`,
`ray_raycf_best_valid_metric{model=...}`, `ray_raycf_users_scored_total`, ...
"""

from __future__ import annotations

import time
from typing import Any

from ray import tune
from ray.util.metrics import Counter, Gauge

from raycf.metrics import Selection

STUDY_TAGS = ("study",)
MODEL_TAGS = ("study", "model")
SCHEDULER_STOPS = frozenset({"asha", "max_t"})
"""The `stopped_by` values (trials.parquet) that count as stopped by the scheduler: ASHA, or its epoch limit."""


def trial_ending(config: dict[str, Any], last_result: dict[str, Any]) -> str:
    """Why a trial that Tune completed without an error ended: `patience`, `complete`, `max_t` or `asha`, as its
    `stopped_by` in trials.parquet says (the same rule, `raycf.tune.stop_reason`, on its last result).

    A trial's `max_epochs` is the study's `scheduler.max_t`.
    """
    from raycf.tune import stop_reason  # raycf.tune imports this module

    trial = config["trial"]
    row = {"error": None, "epochs_run": int(last_result.get("epoch", 0)),
           "best_epoch": int(last_result.get("best_epoch", 0))}
    return stop_reason(row, trial, trial["max_epochs"])


class StudyMetrics(tune.Callback):
    """A Tune callback (it runs in the driver) that keeps the study's gauges and counters current."""

    def __init__(self, study: str, selection: Selection = Selection()) -> None:
        self.tags = {"study": study}
        self.selection = selection
        self.running = Gauge("raycf_trials_running", "Trials of the study running now.", STUDY_TAGS)
        self.finished = Counter("raycf_trials_finished", "Trials that ended by themselves (patience, or a complete fit).", MODEL_TAGS)
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
        """Count the ended trial as trials.parquet will: stopped early (ASHA, max_t) or finished (patience, complete)."""
        ending = trial_ending(trial.config, trial.last_result or {})
        counter = self.stopped if ending in SCHEDULER_STOPS else self.finished
        counter.inc(tags=self._model_tags(trial))
        self._count_running(trials)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.errored.inc(tags=self._model_tags(trial))
        self._count_running(trials)

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.on_trial_error(iteration, trials, trial)


class ScoringMetrics:
    """Users scored so far and the rate, for one `raycf score` output."""

    def __init__(self, output: str) -> None:
        self.tags = {"output": output}
        self.users = Counter("raycf_users_scored", "Users scored.", ("output",))
        self.rate = Gauge("raycf_users_per_second", "Users scored per second since scoring started.", ("output",))
        self.started = time.monotonic()
        self.total = 0

    def add(self, users: int) -> None:
        self.total += users
        self.users.inc(users, tags=self.tags)
        self.rate.set(self.total / max(time.monotonic() - self.started, 1e-9), tags=self.tags)
