"""Mult-VAE (Liang et al., WWW 2018): a variational autoencoder with a multinomial likelihood."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from raycf.models.base import (
    AutoencoderRecommender,
    SparseBatch,
    input_dropout,
    multinomial_nll,
    output_product,
    sparse_linear,
)
from raycf.models.config import TrainConfig
from raycf.models.params import LAYER_SIZES, NeuralParams, at_least, hyperparameter
from raycf.models.registry import register


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


@dataclass(frozen=True)
class MultVAEParams(NeuralParams):
    """Mult-VAE's hyperparameters; the defaults are the write-up's reference settings."""

    hidden: int = hyperparameter(200, "Latent size (the Gaussian layer's).", at_least(1))
    layers: tuple[int, ...] = hyperparameter(
        (), "Tanh layers between the input and the latent, mirrored in the decoder ([600]: Liang et al. 2018's).",
        LAYER_SIZES)
    beta: float = hyperparameter(0.2, "KL weight; with anneal_steps > 0 the cap of the linear anneal.", at_least(0))
    anneal_steps: int = hyperparameter(0, "0: constant beta; else beta_t = min(beta, step / anneal_steps).",
                                       at_least(0))


@register
class MultVAE(AutoencoderRecommender[MultVAEParams]):
    """x_u -> L2-normalise -> dropout -> [tanh layers] -> (mu, log sigma^2) -> z -> [tanh layers] -> softmax.

    `layers` lists the encoder's hidden layers ([600] in the paper), mirrored in the decoder;
    without any (the default) the input maps straight to the `hidden`-sized latent.
    """

    name = "multvae"
    label = "Mult-VAE"
    colour = "tab:blue"
    Params = MultVAEParams
    key_hyperparameters = ("hidden", "dropout", "beta", "anneal_steps", "lr")
    panels = ("beta", "dropout")

    def __init__(self, n_items: int, config: TrainConfig) -> None:
        super().__init__(n_items, config)
        hidden, layers = self.params.hidden, list(self.params.layers)
        encoder = [*layers, 2 * hidden] if layers else []  # layers[0] -> ... -> layers[-1] -> (mu, logvar)
        decoder = [hidden, *reversed(layers)] if layers else []  # z -> layers[-1] -> ... -> layers[0]
        self.build_layers(layers[0] if layers else 2 * hidden, layers[0] if layers else hidden, encoder, decoder)

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
        hidden = self.params.hidden
        return sparse_linear(batch, values, self.encoder_weight[:, :hidden], self.encoder_bias[:hidden])

    def decoder_features(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's tanh layers applied to latent codes `z`: the input of its last layer."""
        for layer in self.decoder_layers:
            z = torch.tanh(layer(z))
        return z

    def beta_at(self, step: int) -> float:
        """Constant beta, or a linear anneal from 0 capped at beta."""
        if self.params.anneal_steps == 0:
            return self.params.beta
        return min(self.params.beta, step / self.params.anneal_steps)

    def loss(self, batch: SparseBatch, step: int, generator: torch.Generator | None = None) -> torch.Tensor:
        values = input_dropout(batch.normalized_values(self.params.normalize), self.params.dropout, generator)
        mu, logvar = self.encode(batch, values)
        noise = torch.randn(mu.shape, generator=generator).to(mu.device)
        z, kl = _GaussianSample.apply(mu, logvar, noise)
        logits = output_product(self.decoder_features(z), self.decoder, self.params.matmul_dtype)
        nll = multinomial_nll(logits, batch)
        return nll + self.beta_at(step) * (kl / batch.size) + self.l2_penalty()

    def features(self, batch: SparseBatch) -> torch.Tensor:
        return self.decoder_features(self.mean(batch, batch.normalized_values(self.params.normalize)))

