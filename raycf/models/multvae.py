"""Mult-VAE (Liang et al., WWW 2018): a variational autoencoder with a multinomial likelihood."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from raycf.config import TrainConfig
from raycf.models.base import (
    NeuralRecommender,
    SparseBatch,
    input_dropout,
    multinomial_nll,
    output_product,
    sparse_linear,
)


class _GaussianSample(torch.autograd.Function):
    """z = mu + noise * exp(logvar / 2) and KL(N(mu, exp(logvar)) || N(0, I)) summed over the batch, with their
    gradients in a handful of operations (autograd records some twenty small ones)."""

    @staticmethod
    def forward(ctx: Any, mu: torch.Tensor, logvar: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, ...]:
        std = torch.exp(0.5 * logvar)
        variance = logvar.exp()
        ctx.save_for_backward(mu, noise, std, variance)
        return mu + noise * std, 0.5 * (-logvar + mu.square() + variance - 1.0).sum()

    @staticmethod
    def backward(ctx: Any, z_grad: torch.Tensor, kl_grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        mu, noise, std, variance = ctx.saved_tensors
        return z_grad + kl_grad * mu, 0.5 * (z_grad * noise * std + kl_grad * (variance - 1.0)), None


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

    def penalized(self) -> list[nn.Parameter]:
        """The weight matrices, the first encoder layer's first."""
        layers = (*self.encoder_layers, *self.decoder_layers)
        return [self.encoder_weight, *(layer.weight for layer in layers), self.decoder.weight]

    def encode(self, batch: SparseBatch, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = sparse_linear(batch, values, self.encoder_weight, self.encoder_bias)
        for layer in self.encoder_layers:
            h = layer(torch.tanh(h))
        mu, logvar = h.chunk(2, dim=1)
        return mu, logvar

    def mean(self, batch: SparseBatch, values: torch.Tensor) -> torch.Tensor:
        """mu alone; without `layers` only the first layer's mu half is computed."""
        if self.encoder_layers:
            return self.encode(batch, values)[0]
        hidden = self.config.hidden
        return sparse_linear(batch, values, self.encoder_weight[:, :hidden], self.encoder_bias[:hidden])

    def decoder_features(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's tanh layers applied to latent codes `z`: the input of its last layer."""
        for layer in self.decoder_layers:
            z = torch.tanh(layer(z))
        return z

    def beta_at(self, step: int) -> float:
        """Constant beta, or a linear anneal from 0 capped at beta."""
        if self.config.anneal_steps == 0:
            return self.config.beta
        return min(self.config.beta, step / self.config.anneal_steps)

    def loss(self, batch: SparseBatch, step: int, generator: torch.Generator | None = None) -> torch.Tensor:
        values = input_dropout(batch.normalized_values(self.config.normalize), self.config.dropout, generator)
        mu, logvar = self.encode(batch, values)
        noise = torch.randn(mu.shape, generator=generator).to(mu.device)
        z, kl = _GaussianSample.apply(mu, logvar, noise)
        logits = output_product(self.decoder_features(z), self.decoder, self.config.matmul_dtype)
        nll = multinomial_nll(logits, batch)
        return nll + self.beta_at(step) * (kl / batch.size) + self.l2_penalty()

    def features(self, batch: SparseBatch) -> torch.Tensor:
        return self.decoder_features(self.mean(batch, batch.normalized_values(self.config.normalize)))

