"""The interface every model honours, and the sparse user batch it consumes."""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from scipy.sparse import csr_matrix
from torch import nn
from torch.nn import functional as F

from raycf.config import TrainConfig


@dataclass(frozen=True)
class SparseBatch:
    """Multi-hot rows of a batch of users, kept sparse (CSR parts as torch tensors)."""

    indices: torch.Tensor
    """Item index of every stored entry, row after row."""
    offsets: torch.Tensor
    """Start of each row inside `indices` (length = batch size)."""
    values: torch.Tensor
    rows: torch.Tensor
    """Row (0..size-1) of every stored entry."""
    size: int
    n_items: int

    @classmethod
    def from_csr(cls, matrix: csr_matrix, device: torch.device | str = "cpu") -> SparseBatch:
        counts = np.diff(matrix.indptr)
        return cls(
            indices=torch.from_numpy(matrix.indices.astype(np.int64, copy=False)).to(device),
            offsets=torch.from_numpy(matrix.indptr[:-1].astype(np.int64, copy=False)).to(device),
            values=torch.from_numpy(matrix.data.astype(np.float32, copy=False)).to(device),
            rows=torch.from_numpy(np.repeat(np.arange(matrix.shape[0], dtype=np.int64), counts)).to(device),
            size=matrix.shape[0],
            n_items=matrix.shape[1],
        )

    def normalized_values(self, normalize: str) -> torch.Tensor:
        """The entries scaled so each row has unit L2 norm ("l2") or as they are ("none")."""
        if normalize == "none":
            return self.values
        squared = torch.zeros(self.size, device=self.values.device).index_add_(0, self.rows, self.values.square())
        return self.values * squared.clamp_min(1e-12).rsqrt()[self.rows]

    def gather(self, dense: torch.Tensor) -> torch.Tensor:
        """The entries of a dense (size x n_items) tensor at this batch's stored positions."""
        return dense[self.rows, self.indices]


def sparse_linear(batch: SparseBatch, values: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """(rows of batch with `values`) @ weight + bias, with weight laid out (n_items x out)."""
    return F.embedding_bag(batch.indices, weight, batch.offsets, mode="sum", per_sample_weights=values) + bias


def input_dropout(values: torch.Tensor, rate: float, generator: torch.Generator | None) -> torch.Tensor:
    """Inverted dropout on the stored entries (the zeros of a sparse input stay zero anyway).

    The mask is drawn on the CPU `generator` whatever the device, so a seed gives the same masks.
    """
    if rate == 0.0:
        return values
    keep = torch.rand(values.shape, generator=generator).to(values.device) >= rate
    return values * keep / (1.0 - rate)


ACTIVATION_FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": lambda x: x,
    "sigmoid": torch.sigmoid,
    "relu": torch.relu,
    "elu": F.elu,
    "selu": F.selu,
}
"""Every name of raycf.config.ACTIVATIONS, as a function."""


class Recommender(nn.Module, ABC):
    """A model that reads sparse multi-hot user rows and scores every item for ranking."""

    name: ClassVar[str]

    def __init__(self, n_items: int, config: TrainConfig) -> None:
        super().__init__()
        self.n_items = n_items
        self.config = config

    @property
    def device(self) -> torch.device:
        """Where the model's tensors (parameters or buffers) live."""
        return next(itertools.chain(self.parameters(), self.buffers())).device

    @classmethod
    def fit_bytes(cls, n_users: int, n_items: int, config: TrainConfig) -> int:
        """Memory that fitting needs beyond the data, where it can outgrow a machine (0: not estimated)."""
        return 0

    @abstractmethod
    def scores(self, batch: SparseBatch) -> torch.Tensor:
        """Deterministic ranking scores (batch size x n_items); higher ranks first."""


class NeuralRecommender(Recommender):
    """A model trained by minibatch gradient descent on its `loss`."""

    @abstractmethod
    def loss(self, batch: SparseBatch, step: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training loss of one batch at update `step` (0-based), averaged over its users."""

    def l2_penalty(self, *weights: torch.Tensor) -> torch.Tensor | float:
        """lambda/2 * sum of squared entries of `weights` (nothing to compute when lambda is 0)."""
        if self.config.l2 == 0.0:
            return 0.0
        return 0.5 * self.config.l2 * sum(weight.square().sum() for weight in weights)


class FittedRecommender(Recommender):
    """A model fitted on the whole train matrix, in closed form (one iteration) or iteratively; its state is
    buffers, not parameters."""

    @classmethod
    def iterations(cls, config: TrainConfig) -> int:
        """Iterations of a complete fit (each one an epoch of the run)."""
        return 1

    @abstractmethod
    def fit_iteration(self, train: csr_matrix, iteration: int) -> None:
        """Iteration `iteration` (0-based) of the fit on the users x items train matrix."""
