"""Models behind one interface: build from a config, loss for a batch, scores for ranking, save/load."""

from __future__ import annotations

from raycf.config import TrainConfig
from raycf.models.autorec import AutoRec
from raycf.models.base import Recommender, SparseBatch
from raycf.models.multvae import MultVAE

MODELS: dict[str, type[Recommender]] = {MultVAE.name: MultVAE, AutoRec.name: AutoRec}


def build_model(config: TrainConfig, n_items: int) -> Recommender:
    """A freshly initialised model of `config.model` for `n_items` items."""
    return MODELS[config.model](n_items, config)


__all__ = ["MODELS", "AutoRec", "MultVAE", "Recommender", "SparseBatch", "build_model"]
