"""Typed configuration of one training run (a trial): model, hyperparameters, stopping rule, seed."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from raycf.errors import RaycfError

MODEL_NAMES = ("multvae", "autorec")
NORMALIZATIONS = ("l2", "none")
ACTIVATIONS = ("identity", "sigmoid", "relu", "elu", "selu")
"""AutoRec's hidden and output activations (all monotone, so scores rank as the activated output)."""

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
    """AutoRec: hidden units. Mult-VAE: latent size (the Gaussian layer's; the name predates `layers`)."""
    layers: tuple[int, ...] = ()
    """Mult-VAE only: tanh layers between the input and the latent, mirrored in the decoder.
    (): the input maps straight to the latent; (600,): Liang et al. 2018's architecture."""
    dropout: float = 0.5
    """Dropout on the input (both models)."""
    beta: float = 0.2
    """Mult-VAE KL weight; with `anneal_steps` > 0 the cap of the linear anneal."""
    anneal_steps: int = 0
    """0: constant beta; otherwise beta_t = min(beta, step / anneal_steps)."""
    l2: float = 0.0
    """lambda: penalty lambda/2 * sum ||W||^2 over the weight matrices (biases excluded)."""
    weight_decay: float = 0.0
    """Adam's (coupled) weight decay: adds weight_decay * p to the gradient of every parameter, biases too."""
    hidden_activation: str = "sigmoid"
    """AutoRec only: activation of the hidden layer."""
    output_activation: str = "sigmoid"
    """AutoRec only: activation of the reconstruction."""
    normalize: str = "l2"
    lr: float = 1e-3
    batch_size: int = 100
    max_epochs: int = 1000
    patience: int = 50
    eval_every: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.layers, list):  # TrainConfig(layers=[600]): keep the config hashable
            object.__setattr__(self, "layers", tuple(self.layers))

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
            if name == "layers":
                converted[name] = parse_layers(value, where)
                continue
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
            (_layers_ok(self.layers), "layers", "a list of ints >= 1, e.g. [600] or []"),
            (self.model != "autorec" or not self.layers, "layers",
             "[] for autorec (Mult-VAE only; AutoRec's one hidden layer is `hidden`)"),
            (0.0 <= self.dropout < 1.0, "dropout", "in [0, 1)"),
            (self.beta >= 0.0, "beta", ">= 0"),
            (self.anneal_steps >= 0, "anneal_steps", ">= 0"),
            (self.l2 >= 0.0, "l2", ">= 0"),
            (self.weight_decay >= 0.0, "weight_decay", ">= 0"),
            (self.hidden_activation in ACTIVATIONS, "hidden_activation", f"one of {', '.join(ACTIVATIONS)}"),
            (self.output_activation in ACTIVATIONS, "output_activation", f"one of {', '.join(ACTIVATIONS)}"),
            (self.model != "multvae" or self.hidden_activation == "sigmoid", "hidden_activation",
             "sigmoid (the default) for multvae (AutoRec only; Mult-VAE's layers use tanh)"),
            (self.model != "multvae" or self.output_activation == "sigmoid", "output_activation",
             "sigmoid (the default) for multvae (AutoRec only; Mult-VAE's output is a softmax)"),
            (self.normalize in NORMALIZATIONS, "normalize", f"one of {', '.join(NORMALIZATIONS)}"),
            (self.lr > 0.0, "lr", "> 0"),
            (self.batch_size >= 1, "batch_size", ">= 1"),
            (self.max_epochs >= 1, "max_epochs", ">= 1"),
            (self.patience >= 1, "patience", ">= 1"),
            (self.eval_every >= 1, "eval_every", ">= 1"),
        ]
        for ok, name, rule in checks:
            if not ok:
                value = getattr(self, name)
                raise RaycfError(f"{where}: {name} must be {rule}, got {list(value) if isinstance(value, tuple) else value!r}")

    def to_dict(self, flat: bool = False) -> dict[str, Any]:
        """Plain values (`layers` a list of ints), which `from_dict` reads back.

        `flat=True`: every value a scalar (`layers` as "600,200", "" for none), for Ray Tune's config and
        the `hp_` columns of trials.parquet, whose readers compare values."""
        values = dataclasses.asdict(self)
        values["layers"] = ",".join(map(str, self.layers)) if flat else list(self.layers)
        return values


def parse_layers(value: Any, where: str = "config") -> tuple[int, ...]:
    """Layer sizes from a list or tuple of ints, or from their flat form "600,200" ("" for none)."""
    if isinstance(value, str):
        parts = [part.strip() for part in value.split(",")] if value.strip() else []
        if not all(part.lstrip("-").isdigit() for part in parts):
            raise RaycfError(f"{where}: field 'layers' must be comma-separated ints like 600,200 (empty for none), "
                             f"got {value!r}")
        return tuple(int(part) for part in parts)
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(size, int) and not isinstance(size, bool) for size in value
    ):
        raise RaycfError(f"{where}: field 'layers' must be a list of ints like [600] ([] for none), got {value!r}")
    return tuple(value)


def _layers_ok(layers: Any) -> bool:
    return isinstance(layers, tuple) and all(
        isinstance(size, int) and not isinstance(size, bool) and size >= 1 for size in layers
    )
