"""Mult-VAE (Liang et al., WWW 2018): a variational autoencoder with a multinomial likelihood."""

from __future__ import annotations

import torch
from torch import nn

from raycf.config import TrainConfig
from raycf.models.base import (
    NeuralRecommender,
    SparseBatch,
    input_dropout,
    sparse_linear,
)


class MultVAE(NeuralRecommender):
    """x_u -> L2-normalise -> dropout -> [tanh layers] -> (mu, log sigma^2) -> z -> [tanh layers] -> softmax.

    `config.layers` lists the encoder's hidden layers ([600] in the paper), mirrored in the decoder;
    without any (the default) the input maps straight to the `config.hidden`-sized latent.
    """

    name = "multvae"

    def __init__(self, n_items: int, config: TrainConfig) -> None:
        super().__init__(n_items, config)
        hidden, layers = config.hidden, list(config.layers)
        # first encoder layer (sparse input) and last decoder layer; created and initialised first, in
        # this order, so that a model without `layers` draws the same initial weights as before them
        self.encoder_weight = nn.Parameter(torch.empty(n_items, layers[0] if layers else 2 * hidden))
        self.encoder_bias = nn.Parameter(torch.empty(layers[0] if layers else 2 * hidden))
        self.decoder = nn.Linear(layers[0] if layers else hidden, n_items)
        encoder = [*layers, 2 * hidden] if layers else []  # layers[0] -> ... -> layers[-1] -> (mu, logvar)
        decoder = [hidden, *reversed(layers)] if layers else []  # z -> layers[-1] -> ... -> layers[0]
        self.encoder_layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(encoder, encoder[1:]))
        self.decoder_layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(decoder, decoder[1:]))
        pairs = [(self.encoder_weight, self.encoder_bias), (self.decoder.weight, self.decoder.bias)]
        pairs += [(layer.weight, layer.bias) for layer in (*self.encoder_layers, *self.decoder_layers)]
        for weight, bias in pairs:
            nn.init.xavier_uniform_(weight)
            nn.init.normal_(bias, std=0.001)

    def weights(self) -> list[torch.Tensor]:
        """The weight matrices (what `l2` penalises), the first encoder layer's first."""
        layers = (*self.encoder_layers, *self.decoder_layers)
        return [self.encoder_weight, *(layer.weight for layer in layers), self.decoder.weight]

    def encode(self, batch: SparseBatch, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = sparse_linear(batch, values, self.encoder_weight, self.encoder_bias)
        for layer in self.encoder_layers:
            h = layer(torch.tanh(h))
        mu, logvar = h.chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Item logits of latent codes `z`."""
        for layer in self.decoder_layers:
            z = torch.tanh(layer(z))
        return self.decoder(z)

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
        log_probs = torch.log_softmax(self.decode(z), dim=1)
        nll = -(batch.gather(log_probs) * batch.values).sum() / batch.size
        kl = 0.5 * (-logvar + mu.square() + logvar.exp() - 1.0).sum() / batch.size
        return nll + self.beta_at(step) * kl + self.l2_penalty(*self.weights())

    def scores(self, batch: SparseBatch) -> torch.Tensor:
        mu, _ = self.encode(batch, batch.normalized_values(self.config.normalize))
        return self.decode(mu)
