"""raycf's own metrics, exported through `ray.util.metrics` beside Ray's (dashboard, Prometheus).

Prometheus names get Ray's `ray_` prefix, and counters a `_total` suffix: `ray_raycf_trials_running`,
`ray_raycf_best_valid_ndcg{model=...}`, `ray_raycf_users_scored_total`, ...
"""

from __future__ import annotations

import time
from typing import Any

from ray import tune
from ray.util.metrics import Counter, Gauge

STUDY_TAGS = ("study",)
MODEL_TAGS = ("study", "model")


class StudyMetrics(tune.Callback):
    """A Tune callback (it runs in the driver) that keeps the study's gauges and counters current."""

    def __init__(self, study: str) -> None:
        self.tags = {"study": study}
        self.running = Gauge("raycf_trials_running", "Trials of the study running now.", STUDY_TAGS)
        self.finished = Counter("raycf_trials_finished", "Trials that ended by themselves (patience, epoch limit).",
                                MODEL_TAGS)
        self.stopped = Counter("raycf_trials_stopped_early", "Trials stopped by the scheduler (ASHA).", MODEL_TAGS)
        self.errored = Counter("raycf_trials_errored", "Trial failures (each retry counts).", MODEL_TAGS)
        self.best = Gauge("raycf_best_valid_ndcg", "Best validation NDCG@5 so far, per model.", MODEL_TAGS)
        self.epochs = Counter("raycf_epochs", "Training epochs completed.", MODEL_TAGS)
        self.speed = Gauge("raycf_epochs_per_second", "Epochs completed per second of study time, all trials.",
                           STUDY_TAGS)
        self.started = time.monotonic()
        self.total_epochs = 0
        self.best_by_model: dict[str, float] = {}
        self.last_epoch: dict[str, int] = {}
        self.stopped_ids: set[str] = set()
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
        value = float(result["valid_ndcg"])
        if value > self.best_by_model.get(tags["model"], float("-inf")):
            self.best_by_model[tags["model"]] = value
            self.best.set(value, tags=tags)
        if result.get("done"):  # only a scheduler decision marks a reported result done
            self.stopped_ids.add(trial.trial_id)
            self.stopped.inc(tags=tags)
        self._count_running(trials)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        if trial.trial_id not in self.stopped_ids:
            self.finished.inc(tags=self._model_tags(trial))
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
