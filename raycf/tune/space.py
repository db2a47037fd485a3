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


def seeded_configs(study: Study) -> list[dict[str, Any]]:
    """The study's seeded configurations (searcher.points_to_evaluate) as complete TrainConfig dicts."""
    searches = {search.model: search for search in study.models}
    return [{**searches[model].base_config(study.scheduler.max_t, study.seed).to_dict(flat=True), **point}
            for model, points in study.searcher.points_to_evaluate.items() for point in points]


def study_space(study: Study) -> dict[str, Any]:
    """{"trial": a grid over the seeded configurations, then the models, each a TrainConfig dict with Tune domains
    inside}. (Tune's own points_to_evaluate cannot address a field inside a grid of dicts: a seed is a grid point.)"""
    return {"trial": tune.grid_search([*seeded_configs(study), *(model_space(search, study.scheduler.max_t, study.seed)
                                                                 for search in study.models)])}
