"""Checkpoints: a state dict plus the config and facts about the data, loaded without unpickling code."""

from __future__ import annotations

import io
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from raycf.errors import CheckpointError, RaycfError
from raycf.models import Recommender, build_model
from raycf.models.config import TrainConfig
from raycf.storage.atomic import staged_file

CHECKPOINT_FORMAT = 1
_KEYS = ("model", "n_items", "config", "state_dict", "meta")
_GLOBAL = re.compile(r"GLOBAL (\S+)")
"""The global that torch's weights-only unpickler refused, as its message names it."""
_WAY_OUT = "use a checkpoint written by raycf train or raycf tune (or train again)"


def save_checkpoint(path: Path, model: Recommender, meta: dict[str, Any] | None = None) -> None:
    """Write atomically: a crash mid-write leaves the previous file (if any) intact."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model": model.name,
        "n_items": model.n_items,
        "config": model.config.to_dict(),
        "state_dict": {name: tensor.detach().cpu().clone() for name, tensor in model.state_dict().items()},
        "meta": meta or {},
    }
    with staged_file(Path(path)) as staging:
        torch.save(payload, staging)


def checkpoint_from_bytes(
    data: bytes, where: str, *, expect_model: str | None = None, expect_items: int | None = None
) -> tuple[Recommender, dict[str, Any]]:
    """As `load_checkpoint`, from the file's bytes (read from any storage, or from Ray's object store)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. a pickle protocol note: the refusal below says it all
            payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = _GLOBAL.search(str(error))
        what = f"refers to {found.group(1)} (Python code)" if found else "holds objects other than tensors"
        raise CheckpointError(
            f"{where}: not a readable raycf checkpoint: it {what}, which raycf never unpickles; {_WAY_OUT}"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as error:
        reason = str(error).strip().split(". ")[0].splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"{where}: not a readable raycf checkpoint ({reason[:160]}): damaged or truncated; {_WAY_OUT}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT or set(_KEYS) - set(payload):
        raise CheckpointError(f"{where}: not a raycf checkpoint (format {CHECKPOINT_FORMAT} expected); {_WAY_OUT}")
    if expect_model is not None and payload["model"] != expect_model:
        raise CheckpointError(
            f"{where}: checkpoint holds a {payload['model']} model, not {expect_model}; "
            f"pass a {expect_model} checkpoint"
        )
    if expect_items is not None and payload["n_items"] != expect_items:
        raise CheckpointError(
            f"{where}: checkpoint was trained on {payload['n_items']} items but this split has {expect_items}; "
            "score it with the split it was trained on"
        )
    try:
        config = TrainConfig.from_dict(payload["config"], where=where, stored=True)
        model = build_model(config, payload["n_items"])
        model.load_state_dict(payload["state_dict"])
    except (RaycfError, RuntimeError, KeyError, TypeError) as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
        reason = lines[1] if len(lines) > 1 and lines[0].endswith(":") else lines[0]  # torch: "Error(s) in ...:"
        raise CheckpointError(f"{where}: checkpoint does not fit its model ({reason[:200]}); {_WAY_OUT}") from None
    model.eval()
    return model, payload["meta"]


def check_same_split(meta: dict[str, Any], split_sha256: str, where: str) -> None:
    """CheckpointError when the checkpoint's meta names another split than `split_sha256`.

    A checkpoint without `split_sha256` in its meta (written before raycf recorded it) passes.
    """
    trained_on = meta.get("split_sha256")
    if trained_on is not None and trained_on != split_sha256:
        raise CheckpointError(
            f"{where}: checkpoint was trained on split {str(trained_on)[:12]} but this run's split is "
            f"{split_sha256[:12]}; score the run the checkpoint was trained on"
        )
