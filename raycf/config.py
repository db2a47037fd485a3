"""Typed configuration of one training run (a trial): model, hyperparameters, stopping rule, seed."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from raycf.errors import RaycfError

MODEL_NAMES = ("multvae", "autorec", "pop", "ease", "itemknn", "ials")
NEURAL_MODELS = ("multvae", "autorec")
"""Trained by minibatch gradient descent; the others are fitted in closed form (pop, ease, itemknn) or by
alternating least squares (ials)."""
NORMALIZATIONS = ("l2", "none")
ACTIVATIONS = ("identity", "sigmoid", "relu", "elu", "selu")
"""AutoRec's hidden and output activations (all monotone, so scores rank as the activated output)."""
MATMUL_DTYPES = ("float32", "bfloat16")
"""Neural models: the precision of the output layer's products in training (raycf.models.base.output_product)."""

# Each model's reference settings (reference-experiment.md); anything not named takes the field default.
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "multvae": {"dropout": 0.5, "normalize": "l2", "beta": 0.2, "l2": 0.0},
    "autorec": {"dropout": 0.0, "normalize": "none", "beta": 0.0, "l2": 1e-3},
    "pop": {},
    "ease": {"l2": 500.0},
    "itemknn": {},
    # iALS: chosen on validation on each of the ML-1M split seeds 0-2 (benchmarks/bench_baselines.py, README)
    "ials": {"l2": 100.0, "alpha": 10.0},
}

_GRADIENT_FIELDS = ("lr", "batch_size", "weight_decay", "dropout", "normalize", "matmul_dtype")
MODEL_FIELDS: dict[str, tuple[str, ...]] = {
    "multvae": ("hidden", "layers", "beta", "anneal_steps", "l2", *_GRADIENT_FIELDS),
    "autorec": ("hidden", "hidden_activation", "output_activation", "l2", *_GRADIENT_FIELDS),
    "pop": (),
    "ease": ("l2",),
    "itemknn": ("neighbors", "shrink"),
    "ials": ("factors", "l2", "alpha", "iterations"),
}
"""The hyperparameters each model takes; every other model field keeps the model's default (and is refused
when set)."""
RUN_FIELDS = ("model", "max_epochs", "patience", "eval_every", "seed")
"""Fields of every run, whatever the model."""


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
    matmul_dtype: str = "float32"
    """Neural models: "bfloat16" runs the output layer's three training products (forward, both gradients) in
    bfloat16 with float32 weights, loss and Adam (mixed precision; ~4x faster products on CPUs with AVX512-BF16
    or AMX, slower where bfloat16 is emulated). Ranking stays exact: see raycf.ranking."""
    lr: float = 1e-3
    batch_size: int = 100
    max_epochs: int = 1000
    patience: int = 50
    eval_every: int = 1
    seed: int = 0
    neighbors: int = 100
    """ItemKNN only: the most similar items kept per item."""
    shrink: float = 10.0
    """ItemKNN only: cosine similarity shrinkage, sim = x_i.x_j / (|x_i| |x_j| + shrink)."""
    factors: int = 64
    """iALS only: latent factors."""
    alpha: float = 1.0
    """iALS only: confidence of an observed item (implicit's alpha: c = alpha * x)."""
    iterations: int = 15
    """iALS only: alternating least squares iterations (each one an epoch: validated, reported to ASHA)."""

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
            (0.0 <= self.dropout < 1.0, "dropout", "in [0, 1)"),
            (self.beta >= 0.0, "beta", ">= 0"),
            (self.anneal_steps >= 0, "anneal_steps", ">= 0"),
            (self.model not in ("ease", "ials") or self.l2 > 0.0, "l2", f"> 0 for {self.model}"),
            (self.l2 >= 0.0, "l2", ">= 0"),
            (self.weight_decay >= 0.0, "weight_decay", ">= 0"),
            (self.hidden_activation in ACTIVATIONS, "hidden_activation", f"one of {', '.join(ACTIVATIONS)}"),
            (self.output_activation in ACTIVATIONS, "output_activation", f"one of {', '.join(ACTIVATIONS)}"),
            (self.normalize in NORMALIZATIONS, "normalize", f"one of {', '.join(NORMALIZATIONS)}"),
            (self.matmul_dtype in MATMUL_DTYPES, "matmul_dtype", f"one of {', '.join(MATMUL_DTYPES)}"),
            (self.lr > 0.0, "lr", "> 0"),
            (self.batch_size >= 1, "batch_size", ">= 1"),
            (self.max_epochs >= 1, "max_epochs", ">= 1"),
            (self.patience >= 1, "patience", ">= 1"),
            (self.eval_every >= 1, "eval_every", ">= 1"),
            (self.neighbors >= 1, "neighbors", ">= 1"),
            (self.shrink >= 0.0, "shrink", ">= 0"),
            (self.factors >= 1, "factors", ">= 1"),
            (self.alpha > 0.0, "alpha", "> 0"),
            (self.iterations >= 1, "iterations", ">= 1"),
        ]
        if self.model in MODEL_FIELDS:
            self._check_unused_fields(where)
        for ok, name, rule in checks:
            if not ok:
                value = getattr(self, name)
                raise RaycfError(f"{where}: {name} must be {rule}, got {list(value) if isinstance(value, tuple) else value!r}")

    def _check_unused_fields(self, where: str) -> None:
        """A field that is not a hyperparameter of the model must keep its default (the field's or the model's)."""
        taken = {*MODEL_FIELDS[self.model], *RUN_FIELDS}
        defaults = {field.name: field.default for field in dataclasses.fields(self)}
        for name, default in defaults.items():
            value = getattr(self, name)
            if name not in taken and value != default and value != MODEL_DEFAULTS[self.model].get(name, default):
                takes = ", ".join(MODEL_FIELDS[self.model]) or "no hyperparameters"
                raise RaycfError(f"{where}: {name} is not a hyperparameter of {self.model} ({self.model} takes "
                                 f"{takes}); remove it")

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
