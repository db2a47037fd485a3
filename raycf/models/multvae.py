"""Mult-VAE (Liang et al., WWW 2018): a variational autoencoder with a multinomial likelihood."""

from __future__ import annotations

import torch
from torch import nn

from raycf.config import TrainConfig
from raycf.models.base import Recommender, SparseBatch, input_dropout, sparse_linear


class MultVAE(Recommender):
    """x_u -> L2-normalise -> dropout -> (mu, log sigma^2) -> z -> item logits -> softmax."""

    name = "multvae"

    def __init__(self, n_items: int, config: TrainConfig) -> None:
        super().__init__(n_items, config)
        hidden = config.hidden
        self.encoder_weight = nn.Parameter(torch.empty(n_items, 2 * hidden))
        self.encoder_bias = nn.Parameter(torch.empty(2 * hidden))
        self.decoder = nn.Linear(hidden, n_items)
        for weight, bias in ((self.encoder_weight, self.encoder_bias), (self.decoder.weight, self.decoder.bias)):
            nn.init.xavier_uniform_(weight)
            nn.init.normal_(bias, std=0.001)

    def encode(self, batch: SparseBatch, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = sparse_linear(batch, values, self.encoder_weight, self.encoder_bias).chunk(2, dim=1)
        return mu, logvar

    def beta_at(self, step: int) -> float:
        """Constant beta, or a linear anneal from 0 capped at beta."""
        if self.config.anneal_steps == 0:
            return self.config.beta
        return min(self.config.beta, step / self.config.anneal_steps)

    def loss(self, batch: SparseBatch, step: int, generator: torch.Generator | None = None) -> torch.Tensor:
        values = input_dropout(batch.normalized_values(self.config.normalize), self.config.dropout, generator)
        mu, logvar = self.encode(batch, values)
        std = torch.exp(0.5 * logvar)
        z = mu + torch.randn(std.shape, generator=generator).to(std.device) * std
        log_probs = torch.log_softmax(self.decoder(z), dim=1)
        nll = -(batch.gather(log_probs) * batch.values).sum() / batch.size
        kl = 0.5 * (-logvar + mu.square() + logvar.exp() - 1.0).sum() / batch.size
        return nll + self.beta_at(step) * kl + self.l2_penalty(self.encoder_weight, self.decoder.weight)

    def scores(self, batch: SparseBatch) -> torch.Tensor:
        mu, _ = self.encode(batch, batch.normalized_values(self.config.normalize))
        return self.decoder(mu)
