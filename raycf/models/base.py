"""The interface every model honours, and the sparse user batch it consumes."""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np
import torch
from scipy.sparse import csr_matrix
from torch import nn
from torch.nn import functional as F

from raycf.models.config import TrainConfig
from raycf.models.params import ModelParams, NeuralParams

ByItem = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""A batch's entries item by item (the transpose's CSR parts): (order, item_offsets, item_rows). `order` lists
entry positions item by item, rows ascending within an item; `item_offsets` is the start of each item's run in
it (length n_items); `item_rows` the row of each listed entry."""


@dataclass(frozen=True)
class SparseBatch:
    """Multi-hot rows of a batch of users, kept sparse (CSR parts as torch tensors)."""

    indices: torch.Tensor
    """Item index of every stored entry, row after row (int32, or int64 for a matrix beyond int32)."""
    offsets: torch.Tensor
    """Start of each row inside `indices` (length = batch size; the dtype of `indices`)."""
    values: torch.Tensor
    rows: torch.Tensor
    """Row (0..size-1) of every stored entry."""
    size: int
    n_items: int
    transposed: ByItem | None = None
    """`by_item` when the batch was cut with it (SparseRows.batches sorts a whole epoch at once)."""
    unit: torch.Tensor | None = None
    """`unit_values` when the batch was cut with them (SparseRows computed them for its whole matrix)."""

    @classmethod
    def from_csr(cls, matrix: csr_matrix, device: torch.device | str = "cpu") -> SparseBatch:
        return SparseRows(matrix, device).batch(0, matrix.shape[0])

    def normalized_values(self, normalize: str) -> torch.Tensor:
        """The entries scaled so each row has unit L2 norm ("l2") or as they are ("none")."""
        return self.values if normalize == "none" else self.unit_values

    @cached_property
    def unit_values(self) -> torch.Tensor:
        """The entries scaled so that each row has unit L2 norm: `unit`, else computed for this batch."""
        return unit_rows(self.values, self.rows, self.size) if self.unit is None else self.unit

    def gather(self, dense: torch.Tensor) -> torch.Tensor:
        """The entries of a dense (size x n_items) tensor at this batch's stored positions."""
        return dense[self.rows, self.indices]

    @cached_property
    def by_item(self) -> ByItem:
        """The entries item by item (ByItem): `transposed`, else a stable sort of this batch's entries by item."""
        if self.transposed is not None:
            return self.transposed
        order = torch.argsort(self.indices, stable=True)
        return order, item_starts(self.indices, self.n_items), self.rows[order]


def item_starts(indices: torch.Tensor, n_items: int) -> torch.Tensor:
    """Where each item's run starts when `indices` (item of each entry) are listed item by item: exclusive
    cumulative counts (counted by index_add_, as bincount syncs a GPU)."""
    counts = torch.zeros(n_items, dtype=torch.int64, device=indices.device).index_add_(
        0, indices, torch.ones_like(indices, dtype=torch.int64))
    return counts.cumsum(0) - counts


def unit_rows(values: torch.Tensor, rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """`values` scaled so that the entries of each row (`rows`: the row of each entry) have unit L2 norm."""
    squared = torch.zeros(n_rows, device=values.device).index_add_(0, rows, values.square())
    return values * squared.clamp_min(1e-12).rsqrt()[rows]


def writable_tensor(array: np.ndarray) -> torch.Tensor:
    """`array` as a tensor sharing its memory, or a copy where the array is read-only (Ray Data's zero-copy
    batches are: torch warns on them)."""
    return torch.from_numpy(array if array.flags.writeable else array.copy())


def index_dtype(largest: int) -> torch.dtype:
    """int32 where it holds `largest` (half the memory of int64), else int64."""
    return torch.int32 if largest <= torch.iinfo(torch.int32).max else torch.int64


class SparseRows:
    """A users x items CSR matrix as torch tensors on a device, from which batches of consecutive rows are cut
    without copying; `permuted` reorders its rows on the device (a training epoch's shuffle)."""

    def __init__(self, matrix: csr_matrix, device: torch.device | str = "cpu", unit_values: bool = False) -> None:
        """`unit_values`: compute the unit-norm values (SparseBatch.unit_values) once, for every batch and
        permutation of these rows."""
        self.n_items = matrix.shape[1]
        self.host_indptr = matrix.indptr.astype(np.int64)
        """`indptr` on the host: where batches start and stop, read without a device sync."""
        self.indptr = torch.from_numpy(self.host_indptr).to(device)
        self.indices = writable_tensor(matrix.indices).to(device)  # int32 (scipy's) for all but huge matrices
        self.values = writable_tensor(matrix.data.astype(np.float32, copy=False)).to(device)
        self.unit = unit_rows(self.values, self.entry_rows(), self.n_rows) if unit_values else None

    @property
    def n_rows(self) -> int:
        return len(self.host_indptr) - 1

    def entry_rows(self, dtype: torch.dtype = torch.int64) -> torch.Tensor:
        """The row of every stored entry."""
        counts = self.indptr[1:] - self.indptr[:-1]
        return torch.repeat_interleave(torch.arange(self.n_rows, dtype=dtype, device=counts.device), counts,
                                       output_size=len(self.indices))

    def permuted(self, order: torch.Tensor) -> SparseRows:
        """The rows `order` (indices into these rows), in that order."""
        starts = self.indptr[:-1][order]
        counts = self.indptr[1:][order] - starts
        indptr = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
        # entry e of new row r comes from starts[r] + (e - indptr[r])
        dtype, size = index_dtype(len(self.indices)), int(indptr[-1])  # one device sync per permutation
        source = torch.arange(size, dtype=dtype, device=indptr.device).add_(
            torch.repeat_interleave((starts - indptr[:-1]).to(dtype), counts, output_size=size))
        rows = object.__new__(SparseRows)
        rows.n_items, rows.indptr, rows.host_indptr = self.n_items, indptr, indptr.cpu().numpy()
        rows.indices, rows.values = self.indices[source], self.values[source]
        rows.unit = None if self.unit is None else self.unit[source]
        return rows

    def batch(self, start: int, stop: int) -> SparseBatch:
        """Rows start..stop-1 as a SparseBatch."""
        return next(self._cut([(start, stop)], None))

    def batches(self, size: int) -> Iterator[SparseBatch]:
        """Consecutive batches of `size` rows (the last one shorter), each with its transpose (`by_item`) cut from
        one stable sort of all entries by (batch, item), instead of one sort per batch."""
        key = self.entry_rows(index_dtype(-(-self.n_rows // size) * self.n_items))
        order = torch.argsort(key.div_(size, rounding_mode="floor").mul_(self.n_items).add_(self.indices), stable=True)
        del key
        bounds = [(start, min(start + size, self.n_rows)) for start in range(0, self.n_rows, size)]
        return self._cut(bounds, order)

    def _cut(self, bounds: list[tuple[int, int]], order: torch.Tensor | None) -> Iterator[SparseBatch]:
        """The batches of rows [start, stop) for each of `bounds`; with `order` (entries sorted by batch, then
        item, then row) each batch carries its transpose."""
        for start, stop in bounds:
            first, last = int(self.host_indptr[start]), int(self.host_indptr[stop])
            offsets, indices = (self.indptr[start:stop] - first).to(self.indices.dtype), self.indices[first:last]
            rows = torch.repeat_interleave(torch.arange(stop - start, device=offsets.device),
                                           self.indptr[start + 1 : stop + 1] - self.indptr[start:stop],
                                           output_size=last - first)
            transposed = None
            if order is not None:
                batch_order = order[first:last] - first
                transposed = (batch_order, item_starts(indices, self.n_items), rows[batch_order])
            yield SparseBatch(
                indices=indices,
                offsets=offsets,
                values=self.values[first:last],
                unit=None if self.unit is None else self.unit[first:last],
                rows=rows,
                size=stop - start,
                n_items=self.n_items,
                transposed=transposed,
            )


class _SparseLinear(torch.autograd.Function):
    """X @ weight for the batch's rows X (entries `values`, a constant); the weight's gradient X^T @ grad is a
    sum over each item's entries, so it is one embedding_bag over the transposed batch (the dense backward of
    embedding_bag zero-fills, sorts and scatters)."""

    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor, batch: SparseBatch, values: torch.Tensor) -> torch.Tensor:
        ctx.batch = batch
        ctx.save_for_backward(values)
        return F.embedding_bag(batch.indices, weight, batch.offsets, mode="sum", per_sample_weights=values)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (values,) = ctx.saved_tensors
        order, item_offsets, item_rows = ctx.batch.by_item
        weight_grad = F.embedding_bag(item_rows, grad, item_offsets, mode="sum", per_sample_weights=values[order])
        return weight_grad, None, None


def sparse_linear(batch: SparseBatch, values: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """(rows of batch with `values`) @ weight + bias, with weight laid out (n_items x out); `values` is an input,
    not differentiated."""
    if values.requires_grad:
        raise ValueError("sparse_linear: values must not require a gradient (they are the model's input)")
    return _SparseLinear.apply(weight, batch, values) + bias


class _MultinomialNLL(torch.autograd.Function):
    """-sum_u x_u . log_softmax(logits_u) / size, with its gradient (softmax * row mass - x) / size written in two
    passes over the logits instead of autograd's gather, zero-fill and softmax backward."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, batch: SparseBatch) -> torch.Tensor:
        log_probs = torch.log_softmax(logits, dim=1)
        ctx.batch = batch
        ctx.save_for_backward(log_probs)
        return -(batch.gather(log_probs) * batch.values).sum() / batch.size

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (log_probs,) = ctx.saved_tensors
        batch = ctx.batch
        scale = grad / batch.size
        mass = batch.values.new_zeros(batch.size).index_add_(0, batch.rows, batch.values)
        logits_grad = log_probs.exp().mul_((mass * scale)[:, None])
        return logits_grad.index_put_((batch.rows, batch.indices), -batch.values * scale, accumulate=True), None


def multinomial_nll(logits: torch.Tensor, batch: SparseBatch) -> torch.Tensor:
    """The batch's mean multinomial negative log-likelihood of its entries (weighted by their values) under
    softmax(`logits`) (size x n_items)."""
    return _MultinomialNLL.apply(logits, batch)


class _SquaredError(torch.autograd.Function):
    """sum (x - x_hat)^2 / size over every cell, from the dense `x_hat` and the sparse x, without densifying x;
    its gradient 2 (x_hat - x) / size is one pass over x_hat and a scatter."""

    @staticmethod
    def forward(ctx: Any, reconstruction: torch.Tensor, batch: SparseBatch) -> torch.Tensor:
        ctx.batch = batch
        ctx.save_for_backward(reconstruction)
        flat = reconstruction.reshape(-1)  # sum x_hat^2 - 2 x.x_hat + x.x, the first in one pass
        return (torch.dot(flat, flat) - 2.0 * (batch.gather(reconstruction) * batch.values).sum()
                + batch.values.square().sum()) / batch.size

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (reconstruction,) = ctx.saved_tensors
        batch = ctx.batch
        scale = 2.0 * grad / batch.size
        reconstruction_grad = reconstruction * scale
        return reconstruction_grad.index_put_((batch.rows, batch.indices), -batch.values * scale, accumulate=True), None


def squared_error(reconstruction: torch.Tensor, batch: SparseBatch) -> torch.Tensor:
    """The batch's mean (over users) squared error over all items between `reconstruction` (size x n_items) and
    its multi-hot rows."""
    return _SquaredError.apply(reconstruction, batch)


def input_dropout(values: torch.Tensor, rate: float, generator: torch.Generator | None) -> torch.Tensor:
    """Inverted dropout on the stored entries (the zeros of a sparse input stay zero anyway).

    The mask is drawn on the CPU `generator` whatever the device, so a seed gives the same masks.
    """
    if rate == 0.0:
        return values
    keep = torch.rand(values.shape, generator=generator).to(values.device) >= rate
    return values * keep / (1.0 - rate)


def output_product(x: torch.Tensor, layer: nn.Linear, matmul_dtype: str) -> torch.Tensor:
    """layer(x) in float32, its product taken in `matmul_dtype` (raycf.models.params.MATMUL_DTYPES): the inputs, weight
    and bias rounded to it, the result and (through autograd's casts) the weight's gradient back in float32. An
    unresolved `auto` (a model built outside a Trainer, raycf.train.precision) computes in float32."""
    if matmul_dtype != "bfloat16":
        return layer(x)
    dtype = torch.bfloat16
    return F.linear(x.to(dtype), layer.weight.to(dtype), layer.bias.to(dtype)).float()


ACTIVATION_FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": lambda x: x,
    "sigmoid": torch.sigmoid,
    "relu": torch.relu,
    "elu": F.elu,
    "selu": F.selu,
}
"""Every name of raycf.models.params.ACTIVATIONS, as a function."""


P = TypeVar("P", bound=ModelParams)
NP = TypeVar("NP", bound=NeuralParams)


class Recommender(nn.Module, ABC, Generic[P]):
    """A model that reads sparse multi-hot user rows and scores every item for ranking. A model module declares
    the class attributes below and registers the class (raycf.models.registry.register)."""

    name: ClassVar[str]
    """Its name in configurations, commands and outputs."""
    label: ClassVar[str]
    """What tables and figures call it."""
    colour: ClassVar[str]
    """Its colour in the report's figures (a matplotlib colour)."""
    Params: ClassVar[type[ModelParams]]
    """Its hyperparameters, declared once."""
    key_hyperparameters: ClassVar[tuple[str, ...] | None] = None
    """The hyperparameters the report's leaderboard shows (None: all of them)."""
    panels: ClassVar[tuple[str, ...] | None] = None
    """The hyperparameters the report always plots against the metric (None: those its trials vary)."""

    def __init__(self, n_items: int, config: TrainConfig) -> None:
        super().__init__()
        self.n_items = n_items
        self.config = config

    @property
    def params(self) -> P:
        """The model's hyperparameters (`config.params`, of its own `Params` class)."""
        return self.config.params  # type: ignore[return-value]

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


class NeuralRecommender(Recommender[NP]):
    """A model trained by minibatch gradient descent on its `loss`, with Adam over its `parameter_groups`; it
    scores through a last linear layer, `decoder` (items x features)."""

    decoder: nn.Linear

    @abstractmethod
    def features(self, batch: SparseBatch) -> torch.Tensor:
        """What the last layer reads when ranking (batch size x features): `scores` is decoder(features)."""

    def scores(self, batch: SparseBatch) -> torch.Tensor:
        return self.decoder(self.features(batch))

    @property
    def coarse_dtype(self) -> torch.dtype | None:
        """The precision its last layer's products may take when ranking (raycf.eval.ranking's first stage): the
        one it trained them in, or None for float32 (one exact stage)."""
        return torch.bfloat16 if self.params.matmul_dtype == "bfloat16" else None

    def start_epoch(self, epoch: int) -> None:
        """Called before training epoch `epoch` (0-based): a model trained in phases sets up that epoch's."""

    @abstractmethod
    def loss(self, batch: SparseBatch, step: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training loss of one batch at update `step` (0-based), averaged over its users, plus the `l2_penalty`
        (whose gradient the optimizer adds: see `parameter_groups`)."""

    @abstractmethod
    def penalized(self) -> list[torch.Tensor]:
        """The weight matrices the `l2` penalty covers."""

    def l2_penalty(self) -> torch.Tensor | float:
        """lambda/2 * sum of squared entries of the `penalized` weights, as a value without a gradient (0 when
        lambda is 0)."""
        if self.params.l2 == 0.0:
            return 0.0
        with torch.no_grad():
            flat = [weight.reshape(-1) for weight in self.penalized()]
            return 0.5 * self.params.l2 * sum(torch.dot(weight, weight) for weight in flat)

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Adam's parameter groups: its weight decay (`weight_decay`, on every parameter) and, on the `penalized`
        weights, lambda more: Adam's weight decay adds lambda * W to their gradient, which is the gradient of the
        penalty lambda/2 |W|^2, inside the fused step instead of autograd's passes over the weights."""
        decay, parameters = self.params.weight_decay, list(self.parameters())
        if self.params.l2 == 0.0:
            return [{"params": parameters, "weight_decay": decay}]
        penalized = {id(weight) for weight in self.penalized()}
        return [
            {"params": [p for p in parameters if id(p) in penalized], "weight_decay": decay + self.params.l2},
            {"params": [p for p in parameters if id(p) not in penalized], "weight_decay": decay},
        ]


class AutoencoderRecommender(NeuralRecommender[NP]):
    """A neural model whose first layer reads the sparse input (`encoder_weight`, `encoder_bias`) and whose last,
    `decoder`, scores the items, with dense `encoder_layers` and `decoder_layers` between them."""

    def build_layers(self, first: int, last: int, encoder: list[int], decoder: list[int]) -> None:
        """Create the layers: the sparse one `first` wide, the decoder reading `last` features, the inner ones
        through the sizes `encoder` and `decoder`; initialised as Liang et al. 2018 do (Xavier-uniform weights,
        N(0, 0.001^2) biases). They are created and initialised in this order: a seed's draws depend on it."""
        self.encoder_weight = nn.Parameter(torch.empty(self.n_items, first))
        self.encoder_bias = nn.Parameter(torch.empty(first))
        self.decoder = nn.Linear(last, self.n_items)
        self.encoder_layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(encoder, encoder[1:]))
        self.decoder_layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(decoder, decoder[1:]))
        pairs = [(self.encoder_weight, self.encoder_bias), (self.decoder.weight, self.decoder.bias)]
        pairs += [(layer.weight, layer.bias) for layer in (*self.encoder_layers, *self.decoder_layers)]
        for weight, bias in pairs:
            nn.init.xavier_uniform_(weight)
            nn.init.normal_(bias, std=0.001)

    def penalized(self) -> list[torch.Tensor]:
        """The weight matrices, the first encoder layer's first."""
        layers = (*self.encoder_layers, *self.decoder_layers)
        return [self.encoder_weight, *(layer.weight for layer in layers), self.decoder.weight]


class FittedRecommender(Recommender[P]):
    """A model fitted on the whole train matrix, in closed form (one iteration) or iteratively; its state is
    buffers, not parameters."""

    @classmethod
    def iterations(cls, config: TrainConfig) -> int:
        """Iterations of a complete fit (each one an epoch of the run)."""
        return 1

    @abstractmethod
    def fit_iteration(self, train: csr_matrix, iteration: int) -> None:
        """Iteration `iteration` (0-based) of the fit on the users x items train matrix."""
