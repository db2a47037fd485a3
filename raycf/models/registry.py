"""The models by name: each model module registers its class, and whatever lists or builds models reads here."""

from __future__ import annotations

from typing import Any, TypeVar, cast

from raycf.errors import RaycfError

ModelClass = TypeVar("ModelClass")

MODELS: dict[str, Any] = {}
"""Registered models (raycf.models.base.Recommender subclasses) in the order they are listed (raycf.models imports
them in that order). Typed loosely, so that the registry imports no model code."""


def register(model: ModelClass) -> ModelClass:
    """Class decorator: list `model` under its `name`."""
    MODELS[cast(Any, model).name] = model
    return model


def model_names() -> tuple[str, ...]:
    return tuple(MODELS)


def model_class(name: str, where: str | None = None) -> Any:
    """The registered model `name`; a one-line RaycfError (after `where`) listing the registered ones otherwise."""
    if name not in MODELS:
        prefix = f"{where}: " if where else ""
        raise RaycfError(f"{prefix}unknown model {name!r}: choose one of {', '.join(MODELS)}")
    return MODELS[name]


def hyperparameter_names() -> tuple[str, ...]:
    """Every registered model's hyperparameters, each once, in the order they are first declared."""
    return tuple(dict.fromkeys(name for model in MODELS.values() for name in model.Params.names()))
