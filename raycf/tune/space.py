"""A study's search space as Ray Tune's: each model's TrainConfig dict with its searched fields as Tune domains."""

from __future__ import annotations

from typing import Any

from ray import tune

from raycf.study.schema import Dimension, ModelSearch, Study


def tune_domain(dimension: Dimension) -> Any:
    """The Ray Tune search space domain of one searched field."""
    if dimension.kind == "grid":
        return tune.grid_search(list(dimension.values))
    if dimension.kind == "choice":
        return tune.choice(list(dimension.values))
    return getattr(tune, dimension.kind)(*dimension.values)


def model_space(search: ModelSearch, max_epochs: int, seed: int) -> dict[str, Any]:
    """A complete TrainConfig dict whose searched fields are Tune domains."""
    base = search.base_config(max_epochs, seed).to_dict(flat=True)
    return {**base, **{name: tune_domain(dimension) for name, dimension in search.search.items()}}


def study_space(study: Study) -> dict[str, Any]:
    """{"trial": a grid over the models, each a TrainConfig dict with Tune domains inside}."""
    return {"trial": tune.grid_search([model_space(search, study.scheduler.max_t, study.seed)
                                       for search in study.models])}
