"""A study's metrics, exported through `ray.util.metrics` beside Ray's (dashboard, Prometheus).

Prometheus names get Ray's `ray_` prefix, and counters a `_total` suffix: `ray_raycf_trials_running`,
`ray_raycf_best_valid_metric{model=...}`, `ray_raycf_users_scored_total`, ...
"""

from __future__ import annotations

import os
import time
from typing import Any

from ray import tune
from ray.util.metrics import Counter, Gauge

from raycf.errors import RaycfError
from raycf.eval.metrics import Selection
from raycf.integrations.prometheus import BEST_METRIC, PROMETHEUS_ENV, wait_for_values
from raycf.tune.endings import trial_ending

FINAL_WAIT_S = 60.0
"""How long a study waits at its end for Prometheus to scrape its final values (Ray exports a driver's metrics
every 10 s by default, and Prometheus scrapes at its own interval: 5 s in monitoring/prometheus.yml)."""
REFRESH_S = 2.0
"""Seconds between two settings of the same gauges: Ray exports a gauge only for a while (two export
intervals) after it was last set, so the study's gauges are set again at least this often."""
STUDY_TAGS = ("study",)
MODEL_TAGS = ("study", "model")
ENDED_TAGS = ("study", "model", "reason")


class StudyMetrics(tune.Callback):
    """A Tune callback (it runs in the driver) that keeps the study's gauges and counters current. Their `study`
    tag is the run's name."""

    def __init__(self, study: str, selection: Selection = Selection()) -> None:
        self.tags = {"study": study}
        self.selection = selection
        self.running = Gauge("raycf_trials_running", "Trials of the study running now.", STUDY_TAGS)
        self.pending = Gauge("raycf_trials_pending", "Trials of the study waiting for resources now.", STUDY_TAGS)
        self.ended = Counter("raycf_trials_ended", "Trials that ended, by reason: trials.parquet's stopped_by (asha, "
                             "max_t, patience, complete) or error (after its last retry).", ENDED_TAGS)
        self.errored = Counter("raycf_trials_errored", "Trial failures (each retry counts).", MODEL_TAGS)
        self.best = Gauge("raycf_best_valid_metric", f"Best validation {selection.label} (the study's metric) so far, "
                          "per model.", MODEL_TAGS)
        self.epochs = Counter("raycf_epochs", "Training epochs completed.", MODEL_TAGS)
        self.speed = Gauge("raycf_epochs_per_second", "Epochs completed per second of study time, all trials.",
                           STUDY_TAGS)
        self.started = self.refreshed = time.monotonic()
        self.total_epochs = 0
        self.best_by_model: dict[str, float] = {}
        self.last_epoch: dict[str, int] = {}
        self.running.set(0, tags=self.tags)
        self.pending.set(0, tags=self.tags)

    def _model_tags(self, trial: Any) -> dict[str, str]:
        return {**self.tags, "model": trial.config["trial"]["model"]}

    def _count_running(self, trials: list[Any]) -> None:
        self.running.set(sum(trial.status == "RUNNING" for trial in trials), tags=self.tags)
        self.pending.set(sum(trial.status == "PENDING" for trial in trials), tags=self.tags)

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        """Set the gauges again (REFRESH_S), so that they stay exported while nothing changes."""
        if time.monotonic() - self.refreshed < REFRESH_S:
            return
        self.refreshed = time.monotonic()
        self._count_running(trials)
        self._set_speed()
        self._hold_best()

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        """With RAY_PROMETHEUS_HOST set, keep the final gauges set (and this Ray up) until that Prometheus holds
        them; each line says what happens."""
        prometheus = os.environ.get(PROMETHEUS_ENV)
        if not prometheus or not self.best_by_model:
            return
        study, query = self.tags["study"], f'{BEST_METRIC}{{study="{self.tags["study"]}"}}'
        print(f"metrics: waiting for Prometheus at {prometheus} to scrape the study's final values", flush=True)
        self._count_running(trials)
        try:
            held = wait_for_values(prometheus, study, self.best_by_model, FINAL_WAIT_S,
                                   each_poll=self._hold_best)
        except RaycfError as error:
            print(f"metrics: {error}", flush=True)
            return
        print(f"metrics: Prometheus at {prometheus} holds them ({query}); the Grafana dashboard "
              "monitoring/grafana-dashboard.json shows the study" if held else
              f"metrics: Prometheus at {prometheus} did not show them ({query}) within {FINAL_WAIT_S:.0f} s; "
              "does it scrape this Ray (monitoring/prometheus.yml)?", flush=True)

    def _hold_best(self) -> None:
        """Set each model's best value again."""
        for model, value in self.best_by_model.items():
            self.best.set(value, tags={**self.tags, "model": model})

    def _set_speed(self) -> None:
        self.speed.set(self.total_epochs / max(time.monotonic() - self.started, 1e-9), tags=self.tags)

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
            self._set_speed()
        value = float(result[self.selection.key])
        if self.selection.improves(value, self.best_by_model.get(tags["model"])):
            self.best_by_model[tags["model"]] = value
            self.best.set(value, tags=tags)
        self._count_running(trials)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """Count the ended trial by the reason trials.parquet will give (`stopped_by`)."""
        reason = trial_ending(trial.config, trial.last_result or {})
        self.ended.inc(tags={**self._model_tags(trial), "reason": reason})
        self._count_running(trials)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """A trial that failed for the last time: a failure, and a trial ended by an error."""
        self.ended.inc(tags={**self._model_tags(trial), "reason": "error"})
        self.on_trial_recover(iteration, trials, trial)

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """A failure that Tune retries."""
        self.errored.inc(tags=self._model_tags(trial))
        self._count_running(trials)

