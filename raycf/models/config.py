"""Typed configuration of one training run (a trial): the model and its hyperparameters, the stopping rule, the
seed."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from raycf.errors import RaycfError
from raycf.models.params import ModelParams
from raycf.models.registry import hyperparameter_names, model_class

RUN_FIELDS = ("model", "max_epochs", "patience", "eval_every", "seed")
"""Fields of every run, whatever the model; the others are the model's hyperparameters."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that fixes one training run. Its dict form is flat (the run fields and the model's
    hyperparameters side by side), so that Ray Tune can search any field."""

    model: str
    params: ModelParams
    max_epochs: int = 1000
    patience: int = 50
    eval_every: int = 1
    seed: int = 0

    @classmethod
    def for_model(cls, model: str, **overrides: Any) -> TrainConfig:
        """The model's reference settings, with `overrides` (None values ignored) on top."""
        given = {name: value for name, value in overrides.items() if value is not None}
        return cls.from_dict({**given, "model": model})

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "config", *, stored: bool = False,
                  joint: bool = True) -> TrainConfig:
        """Build and validate from flat values (a study's, a Tune config, a checkpoint's), naming bad fields.

        `stored`: values that raycf wrote itself, where an older release kept every model's hyperparameters;
        those of other models are dropped instead of refused. `joint=False`: each field checked alone, not the
        rules across fields (a study checks one field's value before it has them all)."""
        model = values.get("model", "multvae")
        params_class = model_class(model if isinstance(model, str) else repr(model), where).Params
        own, known = params_class.names(), hyperparameter_names()
        unknown = sorted(set(values) - set(RUN_FIELDS) - set(known))
        if unknown:
            raise RaycfError(f"{where}: unknown field(s) {', '.join(unknown)}; known: "
                             f"{', '.join((RUN_FIELDS[0], *known, *RUN_FIELDS[1:]))}")
        foreign = [name for name in values if name in known and name not in own]
        if foreign and not stored:
            takes = ", ".join(own) or "no hyperparameters"
            raise RaycfError(f"{where}: {foreign[0]} is not a hyperparameter of {model} ({model} takes {takes}); "
                             "remove it")
        run = {}
        for name in RUN_FIELDS[1:]:
            if name in values:
                value = values[name]
                if not isinstance(value, int) or isinstance(value, bool):
                    raise RaycfError(f"{where}: field {name!r} must be int, got {value!r}")
                run[name] = value
        params = params_class.from_values({name: values[name] for name in own if name in values}, where)
        config = cls(model=model, params=params, **run)
        config.validate(where, joint)
        return config

    def validate(self, where: str = "config", joint: bool = True) -> None:
        """Raise a one-line RaycfError naming the first field out of range (the model's hyperparameters first);
        `joint`: and the rules across the model's fields."""
        self.params.validate(where, joint)
        for name in ("max_epochs", "patience", "eval_every"):
            if getattr(self, name) < 1:
                raise RaycfError(f"{where}: {name} must be >= 1, got {getattr(self, name)!r}")

    def to_dict(self, flat: bool = False) -> dict[str, Any]:
        """The run fields and the model's hyperparameters in one flat mapping, which `from_dict` reads back
        (`layers` a list of ints; with `flat`, "600,200": every value a scalar, as Ray Tune's config and the
        `hp_` columns of trials.parquet hold them)."""
        run = {field.name: getattr(self, field.name) for field in dataclasses.fields(self) if field.name != "params"}
        return {"model": run.pop("model"), **self.params.to_dict(flat), **run}
