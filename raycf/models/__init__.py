"""Models behind one interface: build from a config, scores for ranking, save/load; neural models have a loss,
fitted ones (the baselines) a fit."""

from __future__ import annotations

from raycf.config import TrainConfig
from raycf.models.autorec import AutoRec
from raycf.models.base import (
    FittedRecommender,
    NeuralRecommender,
    Recommender,
    SparseBatch,
    SparseRows,
)
from raycf.models.ease import EASE
from raycf.models.ials import IALS
from raycf.models.itemknn import ItemKNN
from raycf.models.multvae import MultVAE
from raycf.models.popularity import Popularity

MODELS: dict[str, type[Recommender]] = {
    model.name: model for model in (MultVAE, AutoRec, Popularity, EASE, ItemKNN, IALS)
}


def build_model(config: TrainConfig, n_items: int) -> Recommender:
    """A freshly initialised model of `config.model` for `n_items` items."""
    return MODELS[config.model](n_items, config)


def planned_epochs(config: TrainConfig) -> int:
    """Epochs of a complete run: `max_epochs`, or fewer for a fitted model (its iterations)."""
    model = MODELS[config.model]
    if issubclass(model, FittedRecommender):
        return min(config.max_epochs, model.iterations(config))
    return config.max_epochs


__all__ = ["MODELS", "AutoRec", "EASE", "FittedRecommender", "IALS", "ItemKNN", "MultVAE", "NeuralRecommender",
           "Popularity", "Recommender", "SparseBatch", "SparseRows", "build_model", "planned_epochs"]
