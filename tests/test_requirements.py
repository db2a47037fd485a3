"""pyproject.toml's dependency floors admit only versions that run raycf's code as written."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from raycf.data.split import Split
from raycf.models.config import TrainConfig
from raycf.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
CPU_FUSED_ADAM = (2, 4)
"""The first torch with `Adam(fused=True)` on the CPU (pytorch/pytorch#123074; CUDA only up to 2.3)."""


def floor(requirement: str) -> tuple[int, ...]:
    """The `>=` version of `requirement` (e.g. "torch") among pyproject.toml's dependencies."""
    text = (ROOT / "pyproject.toml").read_text()
    found = re.search(rf'^\s*"{re.escape(requirement)}(?:\[[^\]]*\])?>=([0-9.]+)[",]', text, re.MULTILINE)
    assert found, f"no {requirement}>=... in pyproject.toml's dependencies"
    return tuple(int(part) for part in found.group(1).split("."))


def test_training_uses_fused_adam_on_the_cpu(small_split: Split) -> None:
    trainer = Trainer(small_split, TrainConfig.for_model("autorec", hidden=8, max_epochs=1), "cpu")
    assert trainer.optimizer.defaults["fused"] is True
    trainer.run_epoch()  # the fused CPU kernel runs


def test_the_torch_floor_has_fused_adam_on_the_cpu() -> None:
    assert floor("torch") >= CPU_FUSED_ADAM, (
        f"pyproject.toml allows torch {'.'.join(map(str, floor('torch')))}, whose Adam(fused=True) is CUDA only; "
        f"raycf/train/trainer.py needs torch >= {'.'.join(map(str, CPU_FUSED_ADAM))}")
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert f"any torch >= {'.'.join(map(str, floor('torch')))} works" in readme
    assert tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:2]) >= CPU_FUSED_ADAM
