"""Typed configuration of one training run (a trial): model, hyperparameters, stopping rule, seed."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from raycf.errors import RaycfError

MODEL_NAMES = ("multvae", "autorec")
NORMALIZATIONS = ("l2", "none")

# Each model's reference settings (reference-experiment.md); anything not named takes the field default.
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "multvae": {"dropout": 0.5, "normalize": "l2", "beta": 0.2, "l2": 0.0},
    "autorec": {"dropout": 0.0, "normalize": "none", "beta": 0.0, "l2": 1e-3},
}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that fixes one training run; flat, so that Ray Tune can search any field."""

    model: str = "multvae"
    hidden: int = 200
    dropout: float = 0.5
    beta: float = 0.2
    """Mult-VAE KL weight; with `anneal_steps` > 0 the cap of the linear anneal."""
    anneal_steps: int = 0
    """0: constant beta; otherwise beta_t = min(beta, step / anneal_steps)."""
    l2: float = 0.0
    """lambda: weight decay lambda/2 * (||W||^2 + ||V||^2) on the two weight matrices."""
    normalize: str = "l2"
    lr: float = 1e-3
    batch_size: int = 100
    max_epochs: int = 1000
    patience: int = 50
    eval_every: int = 1
    seed: int = 0

    @classmethod
    def for_model(cls, model: str, **overrides: Any) -> TrainConfig:
        """The model's reference settings, with `overrides` (None values ignored) on top."""
        if model not in MODEL_DEFAULTS:
            raise RaycfError(f"unknown model {model!r}: choose one of {', '.join(MODEL_NAMES)}")
        given = {name: value for name, value in overrides.items() if value is not None}
        return cls.from_dict({**MODEL_DEFAULTS[model], **given, "model": model})

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "config") -> TrainConfig:
        """Build and validate from plain values (a checkpoint, a Tune config), naming bad fields."""
        fields = {field.name: field for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise RaycfError(f"{where}: unknown field(s) {', '.join(unknown)}; known: {', '.join(fields)}")
        converted = {}
        for name, value in values.items():
            kind = type(fields[name].default)
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise RaycfError(f"{where}: field {name!r} must be {kind.__name__}, got {value!r}")
            converted[name] = value
        config = cls(**converted)
        config.validate(where)
        return config

    def validate(self, where: str = "config") -> None:
        """Raise a one-line RaycfError naming the first field out of range."""
        checks = [
            (self.model in MODEL_NAMES, "model", f"one of {', '.join(MODEL_NAMES)}"),
            (self.hidden >= 1, "hidden", ">= 1"),
            (0.0 <= self.dropout < 1.0, "dropout", "in [0, 1)"),
            (self.beta >= 0.0, "beta", ">= 0"),
            (self.anneal_steps >= 0, "anneal_steps", ">= 0"),
            (self.l2 >= 0.0, "l2", ">= 0"),
            (self.normalize in NORMALIZATIONS, "normalize", f"one of {', '.join(NORMALIZATIONS)}"),
            (self.lr > 0.0, "lr", "> 0"),
            (self.batch_size >= 1, "batch_size", ">= 1"),
            (self.max_epochs >= 1, "max_epochs", ">= 1"),
            (self.patience >= 1, "patience", ">= 1"),
            (self.eval_every >= 1, "eval_every", ">= 1"),
        ]
        for ok, name, rule in checks:
            if not ok:
                raise RaycfError(f"{where}: {name} must be {rule}, got {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
