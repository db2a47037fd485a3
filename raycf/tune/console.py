"""What a person sees in the terminal: Tune's progress table and raycf's own lines. Ray's internal log lines
and Tune's per-trial tables (a configuration table as each trial starts, a result table as it ends) show only
with --verbose."""

from __future__ import annotations

import logging
import os
from typing import Any

from raycf.eval.metrics import Selection

REPORT_EVERY_S = 30
"""Seconds between two progress tables of a quiet study (Tune prints one at each trial's end too)."""
QUIET_LOGGERS = ("ray.data", "ray.tune")
"""Ray's Python loggers that speak at INFO or WARNING about their own workings (a dataset's plan, Tune's
timing warnings) while a study or scoring runs."""


def quiet(verbose: bool) -> str:
    """Before Ray starts: in the quiet default, Tune's classic progress reporter (its progress table only; the
    RAY_AIR_NEW_OUTPUT=0 switch Ray documents) and Ray's loggers at ERROR. Returns the logging level to give
    ray.init."""
    if verbose:
        return "WARNING"
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    return "ERROR"


def progress_reporter(selection: Selection) -> Any:
    """Tune's progress table with the columns a person watches: model, epoch, the study's metric, best epoch."""
    from ray import tune

    return tune.CLIReporter(
        metric_columns={"epoch": "epoch", selection.key: selection.label, "best_epoch": "best epoch"},
        parameter_columns={"trial/model": "model"},
        max_report_frequency=REPORT_EVERY_S,
        sort_by_metric=True,  # by the study's metric and mode, which Tune hands to the reporter
    )
