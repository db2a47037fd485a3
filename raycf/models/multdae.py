"""Mult-DAE (Liang et al., WWW 2018): a denoising autoencoder with a multinomial likelihood, Mult-VAE's encoder
and decoder without the latent sampling and the KL term."""

from __future__ import annotations

from dataclasses import dataclass

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
from raycf.models.params import LAYER_SIZES, NeuralParams, at_least, hyperparameter, redefault
from raycf.models.registry import register


@dataclass(frozen=True)
class MultDAEParams(NeuralParams):
    """Mult-DAE's hyperparameters; the defaults are Liang et al.'s ([I -> 200 -> I], input dropout 0.5)."""

    hidden: int = hyperparameter(200, "Code size (the tanh bottleneck's).", at_least(1))
    layers: tuple[int, ...] = hyperparameter(
        (), "Tanh layers between the input and the code, mirrored in the decoder.", LAYER_SIZES)
    # chosen on validation NDCG@5 of the seed-0 ML-1M split by benchmarks/bench_multdae.py
    l2: float = redefault(NeuralParams, "l2", 5e-3)


@register
class MultDAE(AutoencoderRecommender[MultDAEParams]):
    """x_u -> L2-normalise -> dropout -> tanh layers -> tanh code -> tanh layers -> softmax over the items.

    Its loss is the multinomial negative log-likelihood of the user's items plus the `l2` penalty."""

    name = "multdae"
    label = "Mult-DAE"
    colour = "tab:red"
    Params = MultDAEParams
    key_hyperparameters = ("hidden", "layers", "dropout", "l2", "lr")
    panels = ("l2", "dropout")

    def __init__(self, n_items: int, config: TrainConfig) -> None:
        super().__init__(n_items, config)
        sizes = [*self.params.layers, self.params.hidden]  # what each encoder layer gives
        self.build_layers(sizes[0], sizes[0], sizes, sizes[::-1])

    def hidden_features(self, batch: SparseBatch, values: torch.Tensor) -> torch.Tensor:
        """The input of the last layer for the batch's rows with entries `values`: encoder, code, decoder."""
        h = torch.tanh(sparse_linear(batch, values, self.encoder_weight, self.encoder_bias))
        for layer in (*self.encoder_layers, *self.decoder_layers):
            h = torch.tanh(layer(h))
        return h

    def loss(self, batch: SparseBatch, step: int, generator: torch.Generator | None = None) -> torch.Tensor:
        values = input_dropout(batch.normalized_values(self.params.normalize), self.params.dropout, generator)
        logits = output_product(self.hidden_features(batch, values), self.decoder, self.params.matmul_dtype)
        return multinomial_nll(logits, batch) + self.l2_penalty()

    def features(self, batch: SparseBatch) -> torch.Tensor:
        return self.hidden_features(batch, batch.normalized_values(self.params.normalize))
