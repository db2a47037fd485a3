"""What a run directory names: a `raycf tune` run (its best trial, a model's best, a trial), a `raycf train`
output or a trial checkpoint, resolved to the checkpoint file to load. Shared by scoring and the Python API."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs

from raycf.errors import RaycfError
from raycf.eval.metrics import MetricAt, parse_metric_list
from raycf.runs.layout import (
    BEST_FILE,
    CHECKPOINT_NAME,
    LEADERBOARD_FILE,
    METRICS_FILE,
    MODEL_FILE,
    SPLIT_DIR,
    STUDY_FILE,
    TRIALS_FILE,
)
from raycf.runs.record import BestRecord, StudyRecord
from raycf.storage.location import Location


@dataclass(frozen=True)
class RunTarget:
    """A checkpoint to load or score and the run it belongs to (its split, its reported metrics)."""

    checkpoint: str
    """Path or URI of a raycf checkpoint file."""
    run: Location
    """The run directory holding `split/`."""
    trial_id: str | None = None

    def report_metrics(self) -> tuple[MetricAt, ...]:
        """The metrics the run reports beside P/R/NDCG/MRR@k: its study's or its training's `report_metrics`."""
        study = StudyRecord.read(self.run)
        if study is not None:
            return study.selection.report
        if self.run.has(METRICS_FILE):
            selection = json.loads(self.run.read_bytes(METRICS_FILE)).get("selection", {})
            return parse_metric_list(",".join(selection.get("report_metrics", [])))
        return ()



def trial_row(run: Location, file: str, column: str, value: str) -> pd.Series:
    if not run.has(file):
        raise RaycfError(f"{run.uri}: no {file}; the study has no finished trial yet (finish it with --resume)")
    table = pd.read_parquet(pa.BufferReader(run.read_bytes(file)))
    rows = table[(table[column] == value) & table["checkpoint"].notna()]
    if rows.empty:
        known = ", ".join(sorted(table[column].astype(str).unique()))
        raise RaycfError(f"{run.uri}/{file}: no scored {column} {value!r}; known: {known}")
    return rows.iloc[0]



def within(run: Location, recorded: str) -> str:
    """A path recorded in a run (relative to it) as a URI or path that can be opened."""
    return recorded if "://" in recorded or recorded.startswith("/") else f"{run.uri}/{recorded}"



def resolve_target(run_dir: str, model: str | None = None, trial: str | None = None) -> RunTarget:
    """A tune run (best.json, or --model / --trial), a `raycf train` directory, or a trial checkpoint dir.

    Checkpoint paths recorded in a run are relative to its directory (older runs: absolute ones)."""
    run = Location.of(run_dir, "")
    run.check_access("RUN_DIR")
    run = run.current()
    if run.has(BEST_FILE) or run.has(STUDY_FILE):
        if trial is not None:
            row = trial_row(run, TRIALS_FILE, "trial_id", trial)
        elif model is not None:
            row = trial_row(run, LEADERBOARD_FILE, "model", model)
        elif (best := BestRecord.read(run)) is not None:
            return RunTarget(within(run, best.checkpoint), run, best.trial_id)
        else:
            raise RaycfError(f"{run_dir}: no {BEST_FILE}: the study has no finished trial; finish it with "
                             f"`raycf tune --resume {run_dir}`")
        return RunTarget(within(run, row["checkpoint"]), run, row["trial_id"])
    if model is not None or trial is not None:
        raise RaycfError(f"{run_dir}: --model and --trial choose among the trials of a `raycf tune` run")
    if run.has(CHECKPOINT_NAME) and run.has(SPLIT_DIR):
        return RunTarget(f"{run.uri}/{CHECKPOINT_NAME}", run)
    if run.has(MODEL_FILE):
        parent = Location.of(run.parent_uri, "")
        return RunTarget(f"{run.uri}/{MODEL_FILE}", Location.of(parent.parent_uri, ""), Path(parent.uri).name)
    raise RaycfError(f"{run_dir}: not a run directory: expected {BEST_FILE} (raycf tune), {CHECKPOINT_NAME} and "
                     f"{SPLIT_DIR}/ (raycf train), or {MODEL_FILE} (a trial checkpoint)")



def read_checkpoint_bytes(uri: str) -> bytes:
    """A whole file from a local path or a URI; RaycfError naming it when it cannot be read."""
    try:
        filesystem, path = pafs.FileSystem.from_uri(uri if "://" in uri else Path(uri).resolve().as_uri())
        with filesystem.open_input_stream(path) as stream:
            return stream.read()
    except (OSError, pa.ArrowInvalid) as error:
        raise RaycfError(f"{uri}: cannot read the checkpoint ({str(error).splitlines()[0]})") from None
