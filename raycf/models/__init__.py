"""Models behind one interface: build from a config, scores for ranking, save/load; neural models have a loss,
fitted ones (the baselines) a fit. Each model is one module that declares its hyperparameters and registers
itself (raycf.models.registry); importing this package registers them all."""

from __future__ import annotations

# isort: off
# the order models are listed in (commands, errors, reports): the order they register
from raycf.models.multvae import MultVAE
from raycf.models.autorec import AutoRec
from raycf.models.multdae import MultDAE
from raycf.models.recvae import RecVAE
from raycf.models.popularity import Popularity
from raycf.models.ease import EASE
from raycf.models.itemknn import ItemKNN
from raycf.models.ials import IALS
# isort: on
from raycf.models.base import FittedRecommender, NeuralRecommender, Recommender, SparseBatch, SparseRows
from raycf.models.config import TrainConfig
from raycf.models.registry import MODELS, model_class


def build_model(config: TrainConfig, n_items: int) -> Recommender:
    """A freshly initialised model of `config.model` for `n_items` items."""
    return model_class(config.model)(n_items, config)


def planned_epochs(config: TrainConfig) -> int:
    """Epochs of a complete run: `max_epochs`, or fewer for a fitted model (its iterations)."""
    model = model_class(config.model)
    if issubclass(model, FittedRecommender):
        return min(config.max_epochs, model.iterations(config))
    return config.max_epochs


__all__ = ["MODELS", "AutoRec", "EASE", "FittedRecommender", "IALS", "ItemKNN", "MultDAE", "MultVAE",
           "NeuralRecommender", "Popularity", "RecVAE", "Recommender", "SparseBatch", "SparseRows", "build_model",
           "planned_epochs"]
