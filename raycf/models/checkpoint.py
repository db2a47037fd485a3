"""Checkpoints: a state dict plus the config and facts about the data, loaded without unpickling code."""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from raycf.config import TrainConfig
from raycf.errors import CheckpointError, RaycfError
from raycf.models import Recommender, build_model

CHECKPOINT_FORMAT = 1


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
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(payload, temporary)
    os.replace(temporary, path)


def load_checkpoint(
    path: Path, *, expect_model: str | None = None, expect_items: int | None = None
) -> tuple[Recommender, dict[str, Any]]:
    """The model in eval mode and the checkpoint's meta; CheckpointError for anything unusable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found; pass a checkpoint file or a run directory holding one")
    return checkpoint_from_bytes(path.read_bytes(), str(path), expect_model=expect_model, expect_items=expect_items)


def checkpoint_from_bytes(
    data: bytes, where: str, *, expect_model: str | None = None, expect_items: int | None = None
) -> tuple[Recommender, dict[str, Any]]:
    """As `load_checkpoint`, from the file's bytes (read from any storage, or from Ray's object store)."""
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{where}: not a readable raycf checkpoint ({reason[:160]})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{where}: not a raycf checkpoint (format {CHECKPOINT_FORMAT} expected)")
    if expect_model is not None and payload["model"] != expect_model:
        raise CheckpointError(f"{where}: checkpoint holds a {payload['model']} model, not {expect_model}")
    if expect_items is not None and payload["n_items"] != expect_items:
        raise CheckpointError(
            f"{where}: checkpoint was trained on {payload['n_items']} items but this split has {expect_items}; "
            "score it with the split it was trained on"
        )
    try:
        config = TrainConfig.from_dict(payload["config"], where=where)
        model = build_model(config, payload["n_items"])
        model.load_state_dict(payload["state_dict"])
    except (RaycfError, RuntimeError, KeyError, TypeError) as error:
        raise CheckpointError(f"{where}: checkpoint does not fit its model ({str(error).splitlines()[0][:160]})") from None
    model.eval()
    return model, payload["meta"]
