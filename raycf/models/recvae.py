"""RecVAE (Shenbin et al., WSDM 2020): Mult-VAE with a deeper encoder, a composite prior, a per-user KL weight
and alternating training of the encoder and the decoder."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn
from torch.nn import functional as F

from raycf.errors import RaycfError
from raycf.models.base import (
    NeuralRecommender,
    SparseBatch,
    input_dropout,
    multinomial_nll,
    output_product,
    sparse_linear,
)
from raycf.models.config import TrainConfig
from raycf.models.params import NeuralParams, Rule, at_least, hyperparameter, redefault
from raycf.models.registry import register

LAYER_NORM_EPS = 0.1
"""The encoder's layer normalisation epsilon (the authors' setting: a large one, which damps small activations)."""
LOG_2PI = math.log(2.0 * math.pi)
PRIOR_WEIGHTS = ("prior_standard", "prior_posterior", "prior_wide")
"""The composite prior's mixture weights, in the order of its components."""
WEIGHT = Rule("in [0, 1]", lambda value: 0.0 <= value <= 1.0)


@dataclass(frozen=True)
class RecVAEParams(NeuralParams):
    """RecVAE's hyperparameters; the defaults are the paper's (ML-20M) settings."""

    hidden: int = hyperparameter(200, "Latent size.", at_least(1))
    width: int = hyperparameter(600, "Width of the encoder's layers.", at_least(1))
    depth: int = hyperparameter(5, "Encoder layers (swish, layer normalisation, each fed the sum of those before).",
                                at_least(1))
    gamma: float = hyperparameter(0.005, "KL weight per history item: a user's beta is gamma * (items in the input).",
                                  at_least(0))
    prior_standard: float = hyperparameter(0.15, "Composite prior: weight of N(0, I).", WEIGHT)
    prior_posterior: float = hyperparameter(0.75, "Composite prior: weight of the previous epoch's posterior.",
                                            WEIGHT)
    prior_wide: float = hyperparameter(0.1, "Composite prior: weight of the wide normal N(0, exp(wide_logvar) I).",
                                       WEIGHT)
    wide_logvar: float = hyperparameter(10.0, "Log-variance of the composite prior's wide normal.", at_least(0))
    encoder_epochs: int = hyperparameter(3, "Encoder epochs of each alternation (the decoder frozen).", at_least(1))
    decoder_epochs: int = hyperparameter(1, "Decoder epochs of each alternation (the encoder frozen, no KL term).",
                                         at_least(1))
    lr: float = redefault(NeuralParams, "lr", 5e-4)
    batch_size: int = redefault(NeuralParams, "batch_size", 500)

    @property
    def prior_weights(self) -> tuple[float, float, float]:
        return self.prior_standard, self.prior_posterior, self.prior_wide

    def validate_joint(self, where: str) -> None:
        """The prior's weights sum to 1."""
        total = sum(self.prior_weights)
        if abs(total - 1.0) > 1e-6:
            raise RaycfError(f"{where}: {' + '.join(PRIOR_WEIGHTS)} (the prior's mixture weights) must sum to 1, "
                             f"got {total:g}")


def normal_log_density(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, exp(logvar)) of each coordinate."""
    return -0.5 * (LOG_2PI + logvar + (z - mu).square() / logvar.exp())


def composite_prior_log_density(
    z: torch.Tensor, posterior: tuple[torch.Tensor, torch.Tensor], weights: tuple[float, float, float],
    wide_logvar: float,
) -> torch.Tensor:
    """log p(z) of each row of `z` under the composite prior: in each latent coordinate the mixture
    weights[0] N(0, 1) + weights[1] N(mu, exp(logvar)) + weights[2] N(0, exp(wide_logvar)), with (mu, logvar) the
    previous epoch's `posterior`; the coordinates independent (summed), as the authors' code mixes them."""
    zero = torch.zeros_like(z)
    components = torch.stack([
        normal_log_density(z, zero, zero),
        normal_log_density(z, *posterior),
        normal_log_density(z, zero, torch.full_like(z, wide_logvar)),
    ], dim=-1)
    log_weights = torch.tensor(weights, dtype=z.dtype, device=z.device).log()
    return torch.logsumexp(components + log_weights, dim=-1).sum(dim=-1)


def user_betas(batch: SparseBatch, gamma: float) -> torch.Tensor:
    """Each user's KL weight: gamma times the mass of its input row (its item count, for implicit data)."""
    return gamma * batch.values.new_zeros(batch.size).index_add_(0, batch.rows, batch.values)


class RecVAEEncoder(nn.Module):
    """x -> [swish, layer norm] x depth -> (mu, logvar); each layer after the first reads the previous layer's
    output plus the sum of all earlier outputs (dense connections)."""

    def __init__(self, n_items: int, width: int, depth: int, latent: int) -> None:
        super().__init__()
        self.input_weight = nn.Parameter(torch.empty(n_items, width))
        self.input_bias = nn.Parameter(torch.empty(width))
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth - 1))
        self.norms = nn.ModuleList(nn.LayerNorm(width, eps=LAYER_NORM_EPS) for _ in range(depth))
        self.head = nn.Linear(width, 2 * latent)

    def forward(self, batch: SparseBatch, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.norms[0](F.silu(sparse_linear(batch, values, self.input_weight, self.input_bias)))
        earlier = h
        for layer, norm in zip(self.layers, self.norms[1:]):
            h = norm(F.silu(layer(h) + earlier))
            earlier = earlier + h
        mu, logvar = self.head(h).chunk(2, dim=1)
        return mu, logvar

    def weights(self) -> list[torch.Tensor]:
        """Its weight matrices (the `l2` penalty's)."""
        layers = cast(list[nn.Linear], list(self.layers))
        return [self.input_weight, *(layer.weight for layer in layers), self.head.weight]


class FrozenCopy(nn.Module):
    """A module's parameters copied into buffers: in the state dict, outside autograd and the optimizer; `run`
    calls the module with them in place of its own."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.names = [name for name, _ in module.named_parameters()]
        for name, parameter in module.named_parameters():
            self.register_buffer(name.replace(".", "_"), parameter.detach().clone())

    def tensors(self) -> dict[str, torch.Tensor]:
        """The copies, by the module's parameter names."""
        return {name: getattr(self, name.replace(".", "_")) for name in self.names}

    def copy_from(self, module: nn.Module) -> None:
        copies = self.tensors()
        with torch.no_grad():
            for name, parameter in module.named_parameters():
                copies[name].copy_(parameter)

    def run(self, module: nn.Module, *args: Any) -> Any:
        return torch.func.functional_call(module, self.tensors(), args)


@register
class RecVAE(NeuralRecommender[RecVAEParams]):
    """x_u -> L2-normalise -> dropout -> encoder -> (mu, log sigma^2) -> z -> linear decoder -> softmax.

    Training alternates: `encoder_epochs` epochs train the encoder alone (input dropout, KL term against the
    composite prior, each user's beta gamma * |x_u|), then `decoder_epochs` epochs train the decoder alone on the
    undropped input, without the KL term. At the start of each alternation the prior's posterior component
    (`previous`, a frozen copy of the encoder's weights, buffers in the state dict) takes the encoder's current
    weights; the phase follows from the epoch number, so a resumed run continues in the phase it stopped in.
    """

    name = "recvae"
    label = "RecVAE"
    colour = "tab:cyan"
    Params = RecVAEParams
    key_hyperparameters = ("hidden", "dropout", "gamma", "prior_posterior", "encoder_epochs", "lr")
    panels = ("gamma", "dropout")

    def __init__(self, n_items: int, config: TrainConfig) -> None:
        super().__init__(n_items, config)
        params = self.params
        self.encoder = RecVAEEncoder(n_items, params.width, params.depth, params.hidden)
        self.decoder = nn.Linear(params.hidden, n_items)
        for weight, bias in ((self.encoder.input_weight, self.encoder.input_bias),
                             *((layer.weight, layer.bias) for layer in (*self.encoder.layers, self.encoder.head)),
                             (self.decoder.weight, self.decoder.bias)):
            nn.init.xavier_uniform_(weight)
            nn.init.normal_(bias, std=0.001)
        self.previous = FrozenCopy(self.encoder)
        self.training_encoder = True

    def start_epoch(self, epoch: int) -> None:
        """Set the phase of epoch `epoch` (0-based): the encoder's first `encoder_epochs` of each alternation, then
        the decoder's; the first epoch of an alternation copies the encoder into the prior."""
        position = epoch % (self.params.encoder_epochs + self.params.decoder_epochs)
        if position == 0:
            self.previous.copy_from(self.encoder)
        self.training_encoder = position < self.params.encoder_epochs
        self.encoder.requires_grad_(self.training_encoder)
        self.decoder.requires_grad_(not self.training_encoder)

    def penalized(self) -> list[torch.Tensor]:
        return [*self.encoder.weights(), self.decoder.weight]

    def sample(self, mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        noise = torch.randn(mu.shape, generator=generator).to(mu.device)
        return mu + noise * torch.exp(0.5 * logvar)

    def loss(self, batch: SparseBatch, step: int, generator: torch.Generator | None = None) -> torch.Tensor:
        values = batch.normalized_values(self.params.normalize)
        if not self.training_encoder:
            with torch.no_grad():
                mu, logvar = self.encoder(batch, values)
                z = self.sample(mu, logvar, generator)
            logits = output_product(z, self.decoder, self.params.matmul_dtype)
            return multinomial_nll(logits, batch) + self.l2_penalty()
        mu, logvar = self.encoder(batch, input_dropout(values, self.params.dropout, generator))
        z = self.sample(mu, logvar, generator)
        logits = output_product(z, self.decoder, self.params.matmul_dtype)
        with torch.no_grad():
            posterior = self.previous.run(self.encoder, batch, values)
        kl = normal_log_density(z, mu, logvar).sum(dim=-1) - composite_prior_log_density(
            z, posterior, self.params.prior_weights, self.params.wide_logvar)
        return multinomial_nll(logits, batch) + (user_betas(batch, self.params.gamma) * kl).mean() + self.l2_penalty()

    def features(self, batch: SparseBatch) -> torch.Tensor:
        """The posterior mean."""
        return self.encoder(batch, batch.normalized_values(self.params.normalize))[0]
