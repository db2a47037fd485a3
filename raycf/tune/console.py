"""What a person sees in the terminal while a study runs: raycf's own progress table (each trial's best and
latest value of the study's metric, ranked as the leaderboard will rank them) and raycf's own lines. Ray's
internal log lines and Tune's per-trial results show only with --verbose."""

from __future__ import annotations

import logging
import math
import os
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

import pandas as pd
from ray import tune

from raycf.eval.metrics import Selection
from raycf.runs.trials import rank_trials
from raycf.tune.endings import trial_ending
from raycf.tune.naming import searched_values

REPORT_EVERY_S = 30
"""Seconds between two progress tables while nothing starts or ends."""
CHANGE_GAP_S = 10
"""At most one table this often when trials start or end."""
SHOWN_ROWS = 20
"""Trials in one table (the best ones first); the others are counted below it."""
QUIET_LOGGERS = ("ray.data", "ray.tune")
"""Ray's Python loggers that speak at INFO or WARNING about their own workings (a dataset's plan, Tune's
timing warnings) while a study or scoring runs."""


def quiet(verbose: bool) -> str:
    """Before Ray starts: Tune's classic output (the RAY_AIR_NEW_OUTPUT=0 switch Ray documents), which prints
    raycf's progress table (StudyReporter) and, with --verbose, Tune's per-trial results; in the quiet default
    Ray's loggers at ERROR. Returns the logging level to give ray.init."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if verbose:
        return "WARNING"
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    return "ERROR"


def tune_verbosity(verbose: bool) -> int:
    """Tune's classic verbosity: 1, the progress table only; 3, each trial's results too (--verbose)."""
    return 3 if verbose else 1


def duration(seconds: float) -> str:
    """`42 s`, `3 min 05 s`, `1 h 02 min`."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def seed_runs_started(phase: str, seeds: tuple[int, ...], trained: int, reused: int) -> str:
    """`selection: 12 runs on split seeds 0, 1, 2: 8 to train, 4 are their trials' own runs`."""
    return (f"{phase}: {trained + reused} runs on split seeds {', '.join(map(str, seeds))}: {trained} to train, "
            f"{reused} {'is its trial' if reused == 1 else 'are their trials'}' own run{'s' if reused != 1 else ''}")


def seed_run_done(phase: str, done: int, total: int, trial_id: str, row: dict[str, Any], selection: Selection,
                  seconds: float) -> str:
    """`selection: 3 of 12 done (1 min 05 s): trial 5a1f2 autorec, split seed 1, valid ndcg@5 0.2987 at epoch 53`."""
    return (f"{phase}: {done} of {total} done ({duration(seconds)}): trial {trial_id} {row['model']}, split seed "
            f"{row['seed']}, valid {selection.label} {row[selection.key]:.4f} at epoch {row['best_epoch']}"
            + (" (the trial's own run)" if row["from_trial"] else ""))


class StudyReporter(tune.ProgressReporter):
    """Tune's progress reporter for a raycf study (Tune calls it in the driver after each step).

    A table of every trial started so far: id, model, searched hyperparameters, state (how it ended), epoch,
    the best value of the study's metric, its epoch and the latest value; ranked by the best value as
    trials.parquet and the leaderboard rank them (raycf.runs.trials.rank_trials), so its first row is the
    leaderboard's best trial (before a robust selection). Above it, raycf's trial counts and the run directory.
    """

    def __init__(self, selection: Selection, run_dir: str, planned: int,
                 searched: Mapping[str, tuple[str, ...]]) -> None:
        self.selection = selection
        self.run_dir = run_dir
        self.planned = planned
        self.searched = dict(searched)
        self.started = time.monotonic()
        self.last_report = -math.inf
        self.last_states: tuple[tuple[str, str], ...] = ()

    def setup(self, start_time: float | None = None, total_samples: int | None = None, metric: str | None = None,
              mode: str | None = None, **kwargs: Any) -> None:
        """Tune's own total (its samples per grid point) is not raycf's count of trials: ignored."""
        self.started = time.monotonic()

    def should_report(self, trials: list[Any], done: bool = False) -> bool:
        states = tuple((trial.trial_id, trial.status) for trial in trials)
        since = time.monotonic() - self.last_report
        return done or since >= REPORT_EVERY_S or (states != self.last_states and since >= CHANGE_GAP_S)

    def report(self, trials: list[Any], done: bool, *sys_info: str) -> None:
        self.last_report = time.monotonic()
        self.last_states = tuple((trial.trial_id, trial.status) for trial in trials)
        print(self.render(trials), flush=True)

    def state(self, trial: Any) -> str:
        """`pending`, `running`, `error`, or how an ended trial ended (`asha`, `patience`, `max_t`, `complete`)."""
        if trial.status == "TERMINATED":
            return trial_ending(trial.config, trial.last_result or {})
        return str(trial.status).lower()

    def table(self, trials: list[Any]) -> pd.DataFrame:
        """One row per trial, best first (trials without a result last, in id order)."""
        label, key = self.selection.label, self.selection.key
        rows = []
        for trial in trials:
            config = trial.config.get("trial", {})
            result = trial.last_result or {}
            best = result.get(f"best_{key}")
            rows.append({
                "trial_id": trial.trial_id, "model": config.get("model", ""),
                "hyperparameters": searched_values(config, self.searched.get(config.get("model", ""), ())),
                "state": self.state(trial), "epoch": result.get("epoch"),
                key: best, "checkpoint": None if best is None else "reported",
                "best epoch": result.get("best_epoch"), f"{label} latest": result.get(key),
            })
        frame = pd.DataFrame(rows).astype({"epoch": "Int64", "best epoch": "Int64"})
        ranked = rank_trials(frame, self.selection, None)
        unranked = frame[frame["checkpoint"].isna()].sort_values("trial_id")
        return pd.concat([ranked, unranked], ignore_index=True).drop(columns="checkpoint").rename(
            columns={key: f"{label} best", "trial_id": "trial"})

    def counts(self, trials: list[Any]) -> str:
        """`10 trials: 2 running, 4 pending, 4 ended (asha 3, patience 1), 0 errored`."""
        states = Counter(self.state(trial) for trial in trials)
        running, errored = states.pop("running", 0), states.pop("error", 0)
        states.pop("pending", None)
        ended = sum(count for state, count in states.items() if state != "paused")
        reasons = ", ".join(f"{state} {count}" for state, count in sorted(states.items()) if state != "paused")
        pending = max(self.planned - running - errored - ended, 0)
        return (f"{self.planned} trials: {running} running, {pending} pending, {ended} ended"
                + (f" ({reasons})" if reasons else "") + f", {errored} errored")

    def render(self, trials: list[Any]) -> str:
        """The status block: elapsed time and counts, the run directory, the current best and the table."""
        lines = [f"== {duration(time.monotonic() - self.started)}: {self.counts(trials)} ==",
                 f"run directory: {self.run_dir}"]
        if trials:
            table = self.table(trials)
            best = table.iloc[0]
            if pd.notna(best[f"{self.selection.label} best"]):
                lines.append(f"current best: trial {best['trial']} ({best['model']}), {self.selection.label} "
                             f"{best[f'{self.selection.label} best']:.4f} at epoch {int(best['best epoch'])}")
            lines.append(cells(table.head(SHOWN_ROWS)).to_string(index=False))
            if len(table) > SHOWN_ROWS:
                lines.append(f"... and {len(table) - SHOWN_ROWS} more trials")
        return "\n".join(lines) + "\n"


def cells(table: pd.DataFrame) -> pd.DataFrame:
    """The table as text: values to 4 decimals, nothing where a trial has no value yet."""
    return table.map(lambda value: "" if value is None or value is pd.NA or value != value
                     else f"{value:.4f}" if isinstance(value, float) else str(value))
