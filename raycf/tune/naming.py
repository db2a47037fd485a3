"""Trials by name: what a trial's actor calls itself (its repr: the Ray dashboard's Actors page, the prefix of
its log lines) and how the console names a trial's searched hyperparameters."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from raycf.cluster.ray_private import function_trainable

TRAINABLE_NAME = "run_trial"
"""Tune's name of raycf's trainable: the prefix of every trial's name and directory (`run_trial_<id>_...`)."""


def searched_values(config: Mapping[str, Any], names: tuple[str, ...]) -> str:
    """`anneal_steps=0 beta=0.1 dropout=0.3`: the trial's values of the model's searched hyperparameters."""
    return " ".join(f"{name}={config[name]:g}" if isinstance(config.get(name), float) else f"{name}={config.get(name)}"
                    for name in names)


def trial_repr(trial_id: str, config: Mapping[str, Any], searched: Mapping[str, tuple[str, ...]]) -> str:
    """`trial 5a1f2_00003 multvae anneal_steps=0 beta=0.1 dropout=0.3`."""
    model = str(config.get("model", ""))
    return " ".join(part for part in ("trial", trial_id, model, searched_values(config, searched.get(model, ())))
                    if part)


def named_trainable(function: Callable[[dict[str, Any]], None],
                    searched: Mapping[str, tuple[str, ...]]) -> type:
    """The function trainable `function` as Tune's class trainable (raycf.cluster.ray_private), its actors named
    after their trial: the Ray dashboard shows an actor's `__repr__`, which Ray reads once the actor is
    constructed (its trial id and config are known by then). Tune still names it TRAINABLE_NAME."""
    searched = {model: tuple(names) for model, names in searched.items()}

    class NamedTrial(function_trainable(function, TRAINABLE_NAME)):  # type: ignore[misc]
        def __repr__(self) -> str:
            return trial_repr(self.trial_id, self.config.get("trial", {}), searched)

    NamedTrial.__name__ = NamedTrial.__qualname__ = TRAINABLE_NAME
    return NamedTrial
