"""A run's model ready to rank: run/model/trial resolved (raycf.runs.targets), its split read, its checkpoint
loaded and checked against that split. Shared by the Python API and `raycf serve`."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raycf.data.source import load_split
from raycf.data.split import Split
from raycf.errors import RaycfError
from raycf.models import Recommender
from raycf.models.checkpoint import check_same_split, checkpoint_from_bytes
from raycf.runs.layout import SPLIT_DIR
from raycf.runs.targets import RunTarget, read_checkpoint_bytes, resolve_target


@dataclass(frozen=True)
class RunModel:
    """The checkpoint a run names, its model (in eval mode) and meta, and the split it was trained on."""

    target: RunTarget
    model: Recommender
    meta: dict[str, Any]
    split: Split


def load_run_model(path: str, model: str | None = None, trial: str | None = None, verb: str = "load") -> RunModel:
    """The model of a run directory (its best trial, `model`'s best or `trial`; a `raycf train` output) or of a
    trial checkpoint directory, with its split; RaycfError in one line for a path that is none of these or a
    checkpoint of another split. `verb` says what the caller does in messages (`load`, `serve`)."""
    target = resolve_target(str(path), model, trial)
    with tempfile.TemporaryDirectory() as local:
        if not target.run.has(f"{SPLIT_DIR}/manifest.json"):
            raise RaycfError(f"{path}: no {SPLIT_DIR}/ beside the checkpoint; {verb} a run directory")
        split = load_split(target.run.get_directory(SPLIT_DIR, Path(local)))
    loaded, meta = checkpoint_from_bytes(read_checkpoint_bytes(target.checkpoint), target.checkpoint,
                                         expect_items=split.n_items)
    check_same_split(meta, split.manifest["split_sha256"], target.checkpoint)
    loaded.eval()
    return RunModel(target, loaded, meta, split)
