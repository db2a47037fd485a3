"""The memory guard of a whole study, before Ray starts: each model at its fixed settings."""

from __future__ import annotations

from raycf.study.schema import Study
from raycf.train.memory import check_fit_memory


def check_study_memory(study: Study, n_users: int, n_items: int) -> None:
    """`check_fit_memory` for each model of the study, at its fixed settings."""
    for search in study.models:
        config = search.base_config(study.scheduler.max_t, study.seed)
        check_fit_memory(config, n_users, n_items, f"{study.path}: models.{search.model}")
