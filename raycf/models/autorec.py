"""User-based AutoRec (Sedhain et al., WWW 2015) for implicit feedback."""

from __future__ import annotations

import torch
from torch import nn

from raycf.config import TrainConfig
from raycf.models.base import (
    ACTIVATION_FUNCTIONS,
    NeuralRecommender,
    SparseBatch,
    input_dropout,
    output_product,
    sparse_linear,
    squared_error,
)


class AutoRec(NeuralRecommender):
    """x_hat = g(V f(W x + b) + c), squared error over all items plus lambda/2 (|W|^2 + |V|^2).

    f and g are `hidden_activation` and `output_activation` (both sigmoid by default, as in the paper)."""

    name = "autorec"

    def __init__(self, n_items: int, config: TrainConfig) -> None:
        super().__init__(n_items, config)
        self.encoder_weight = nn.Parameter(torch.empty(n_items, config.hidden))
        self.encoder_bias = nn.Parameter(torch.zeros(config.hidden))
        self.decoder = nn.Linear(config.hidden, n_items)
        nn.init.xavier_uniform_(self.encoder_weight)
        nn.init.xavier_uniform_(self.decoder.weight)
        nn.init.zeros_(self.decoder.bias)

    def hidden(self, batch: SparseBatch, values: torch.Tensor) -> torch.Tensor:
        """f(W x + b) for the batch's rows with entries `values`."""
        activation = ACTIVATION_FUNCTIONS[self.config.hidden_activation]
        return activation(sparse_linear(batch, values, self.encoder_weight, self.encoder_bias))

    def reconstruct(self, batch: SparseBatch, values: torch.Tensor | None = None) -> torch.Tensor:
        """x_hat = g(V f(W x + b) + c): what the squared error compares with x (`values`: the batch's,
        normalised), V's product in the config's matmul_dtype."""
        if values is None:
            values = batch.normalized_values(self.config.normalize)
        logits = output_product(self.hidden(batch, values), self.decoder, self.config.matmul_dtype)
        return ACTIVATION_FUNCTIONS[self.config.output_activation](logits)

    def loss(self, batch: SparseBatch, step: int, generator: torch.Generator | None = None) -> torch.Tensor:
        values = input_dropout(batch.normalized_values(self.config.normalize), self.config.dropout, generator)
        return squared_error(self.reconstruct(batch, values), batch) + self.l2_penalty()

    def penalized(self) -> list[nn.Parameter]:
        return [self.encoder_weight, self.decoder.weight]

    def features(self, batch: SparseBatch) -> torch.Tensor:
        # scores are the logits V f(W x + b) + c: every output activation is monotone, so ranking by logits is
        # the same and avoids ties from saturation (sigmoid) or clipping (relu)
        return self.hidden(batch, batch.normalized_values(self.config.normalize))
