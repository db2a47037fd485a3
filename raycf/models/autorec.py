"""User-based AutoRec (Sedhain et al., WWW 2015) for implicit feedback."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from raycf.models.base import (
    ACTIVATION_FUNCTIONS,
    NeuralRecommender,
    SparseBatch,
    input_dropout,
    output_product,
    sparse_linear,
    squared_error,
)
from raycf.models.config import TrainConfig
from raycf.models.params import ACTIVATIONS, NeuralParams, at_least, hyperparameter, one_of, redefault
from raycf.models.registry import register


@dataclass(frozen=True)
class AutoRecParams(NeuralParams):
    """AutoRec's hyperparameters; the defaults are the write-up's reference settings."""

    hidden: int = hyperparameter(200, "Hidden units.", at_least(1))
    hidden_activation: str = hyperparameter("sigmoid", "Activation of the hidden layer.", one_of(ACTIVATIONS))
    output_activation: str = hyperparameter("sigmoid", "Activation of the reconstruction.", one_of(ACTIVATIONS))
    dropout: float = redefault(NeuralParams, "dropout", 0.0)
    normalize: str = redefault(NeuralParams, "normalize", "none")
    l2: float = redefault(NeuralParams, "l2", 1e-3)


@register
class AutoRec(NeuralRecommender[AutoRecParams]):
    """x_hat = g(V f(W x + b) + c), squared error over all items plus lambda/2 (|W|^2 + |V|^2).

    f and g are `hidden_activation` and `output_activation` (both sigmoid by default, as in the paper)."""

    name = "autorec"
    label = "AutoRec"
    colour = "tab:orange"
    Params = AutoRecParams
    key_hyperparameters = ("hidden", "l2", "normalize", "lr")
    panels = ("l2",)

    def __init__(self, n_items: int, config: TrainConfig) -> None:
        super().__init__(n_items, config)
        self.encoder_weight = nn.Parameter(torch.empty(n_items, self.params.hidden))
        self.encoder_bias = nn.Parameter(torch.zeros(self.params.hidden))
        self.decoder = nn.Linear(self.params.hidden, n_items)
        nn.init.xavier_uniform_(self.encoder_weight)
        nn.init.xavier_uniform_(self.decoder.weight)
        nn.init.zeros_(self.decoder.bias)

    def hidden(self, batch: SparseBatch, values: torch.Tensor) -> torch.Tensor:
        """f(W x + b) for the batch's rows with entries `values`."""
        activation = ACTIVATION_FUNCTIONS[self.params.hidden_activation]
        return activation(sparse_linear(batch, values, self.encoder_weight, self.encoder_bias))

    def reconstruct(self, batch: SparseBatch, values: torch.Tensor | None = None) -> torch.Tensor:
        """x_hat = g(V f(W x + b) + c): what the squared error compares with x (`values`: the batch's,
        normalised), V's product in the config's matmul_dtype."""
        if values is None:
            values = batch.normalized_values(self.params.normalize)
        logits = output_product(self.hidden(batch, values), self.decoder, self.params.matmul_dtype)
        return ACTIVATION_FUNCTIONS[self.params.output_activation](logits)

    def loss(self, batch: SparseBatch, step: int, generator: torch.Generator | None = None) -> torch.Tensor:
        values = input_dropout(batch.normalized_values(self.params.normalize), self.params.dropout, generator)
        return squared_error(self.reconstruct(batch, values), batch) + self.l2_penalty()

    def penalized(self) -> list[torch.Tensor]:
        return [self.encoder_weight, self.decoder.weight]

    def features(self, batch: SparseBatch) -> torch.Tensor:
        # scores are the logits V f(W x + b) + c: every output activation is monotone, so ranking by logits is
        # the same and avoids ties from saturation (sigmoid) or clipping (relu)
        return self.hidden(batch, batch.normalized_values(self.params.normalize))
