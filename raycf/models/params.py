"""Hyperparameters declared once per model: a typed field with its default, the values it allows and one line of
help. The CLI's options, a study's validation, the report's labels and the MLflow parameters all read them."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from raycf.errors import RaycfError

NORMALIZATIONS = ("l2", "none")
ACTIVATIONS = ("identity", "sigmoid", "relu", "elu", "selu")
"""AutoRec's hidden and output activations (all monotone, so scores rank as the activated output)."""
MATMUL_DTYPES = ("auto", "float32", "bfloat16")
"""Neural models: the precision of the output layer's products in training (raycf.models.base.output_product)."""


@dataclass(frozen=True)
class Rule:
    """The values a hyperparameter allows: `words` for messages, `allows` to test one."""

    words: str
    allows: Callable[[Any], bool]
    options: tuple[str, ...] = ()
    """The values allowed, where they are a list of names."""


def at_least(low: float) -> Rule:
    return Rule(f">= {low:g}", lambda value: value >= low)


def above(low: float, qualifier: str = "") -> Rule:
    """Values above `low`; `qualifier` says whose rule it is where other models allow more ("for ease")."""
    return Rule(f"> {low:g}" + (f" {qualifier}" if qualifier else ""), lambda value: value > low)


def one_of(options: tuple[str, ...]) -> Rule:
    return Rule(f"one of {', '.join(options)}", lambda value: value in options, options)


FRACTION = Rule("in [0, 1)", lambda value: 0.0 <= value < 1.0)
LAYER_SIZES = Rule("a list of ints >= 1, e.g. [600] or []", lambda layers: isinstance(layers, tuple) and all(
    isinstance(size, int) and not isinstance(size, bool) and size >= 1 for size in layers))


def hyperparameter(default: Any, help: str, rule: Rule, label: str | None = None) -> Any:
    """A field of a model's parameters: its default, one line of help, the rule its values follow, and the label
    a figure gives it (default: its name)."""
    return dataclasses.field(default=default, metadata={"help": help, "rule": rule, "label": label})


def redefault(params: type[ModelParams], name: str, default: Any) -> Any:
    """Field `name` of `params` (its help and rule) with another default: a model's own setting of a shared field."""
    declared = next(field for field in dataclasses.fields(params) if field.name == name)
    return dataclasses.field(default=default, metadata=declared.metadata)


@dataclass(frozen=True)
class ModelParams:
    """A model's hyperparameters (a subclass per model), built by `from_values`, checked by `validate`."""

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The fields, those the model's own class declares (or sets a default of) first."""
        fields = [field.name for field in dataclasses.fields(cls)]
        own = [name for name in cls.__dict__.get("__annotations__", {}) if name in fields]
        return (*own, *(name for name in fields if name not in own))

    @classmethod
    def field(cls, name: str) -> dataclasses.Field:
        return next(field for field in dataclasses.fields(cls) if field.name == name)

    @classmethod
    def label(cls, name: str) -> str:
        """What a figure calls field `name`."""
        return cls.field(name).metadata["label"] or name

    @classmethod
    def from_values(cls, values: dict[str, Any], where: str) -> ModelParams:
        """Typed parameters from plain values (ints taken for float fields, `layers` from a list or its flat form
        "600,200"); a one-line RaycfError naming the first value of the wrong type. `validate` checks the rules."""
        converted = {}
        for name, value in values.items():
            default: Any = cls.field(name).default
            if isinstance(default, tuple):
                converted[name] = parse_layers(value, where)
                continue
            kind = type(default)
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise RaycfError(f"{where}: field {name!r} must be {kind.__name__}, got {value!r}")
            converted[name] = value
        return cls(**converted)

    def validate(self, where: str, joint: bool = True) -> None:
        """A one-line RaycfError naming the first field out of its rule; with `joint`, then any rule across fields
        (`validate_joint`), which one field set alone over the defaults may break."""
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not field.metadata["rule"].allows(value):
                shown = list(value) if isinstance(value, tuple) else value
                raise RaycfError(f"{where}: {field.name} must be {field.metadata['rule'].words}, got {shown!r}")
        if joint:
            self.validate_joint(where)

    def validate_joint(self, where: str) -> None:
        """A one-line RaycfError naming the fields whose values do not go together (none by default)."""

    def to_dict(self, flat: bool = False) -> dict[str, Any]:
        """Plain values (`layers` a list of ints; with `flat`, "600,200", "" for none: every value a scalar)."""
        values = {name: getattr(self, name) for name in self.names()}
        for name, value in values.items():
            if isinstance(value, tuple):
                values[name] = ",".join(map(str, value)) if flat else list(value)
        return values


@dataclass(frozen=True)
class NeuralParams(ModelParams):
    """What every model trained by minibatch gradient descent takes."""

    dropout: float = hyperparameter(0.5, "Dropout on the input.", FRACTION)
    l2: float = hyperparameter(0.0, "lambda of the penalty lambda/2 * sum ||W||^2 over the weight matrices (biases "
                               "excluded).", at_least(0.0), label="lambda (l2)")
    weight_decay: float = hyperparameter(0.0, "Adam's (coupled) weight decay, on every parameter, biases too.",
                                         at_least(0.0))
    normalize: str = hyperparameter("l2", "Input normalisation.", one_of(NORMALIZATIONS))
    matmul_dtype: str = hyperparameter(
        "auto", "Precision of the output layer's training products: bfloat16 (mixed precision, faster on CPUs with "
        "AVX512-BF16 or AMX and on recent GPUs; ranking stays exact), float32, or auto: the faster of the two, "
        "measured at the model's product shape on its device.", one_of(MATMUL_DTYPES))
    lr: float = hyperparameter(1e-3, "Adam learning rate.", above(0.0))
    batch_size: int = hyperparameter(100, "Users per batch.", at_least(1))


def parse_layers(value: Any, where: str) -> tuple[int, ...]:
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
