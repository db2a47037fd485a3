"""Mixed precision (matmul_dtype: bfloat16): the output layer's products in bfloat16, float32 everywhere else, and
rankings that stay the float32 ones (raycf.eval.ranking's two stages); the device-resident training rows."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy.sparse import csr_matrix
from torch import nn
from torch.nn import functional as F

from raycf.data.split import Split
from raycf.errors import RaycfError
from raycf.eval.evaluation import RankingTask
from raycf.eval.metrics import top_k
from raycf.eval.ranking import (
    BLOCK_CELLS,
    MIN_BLOCK_ROWS,
    candidate_count,
    final_rounding,
    linear_in_blocks,
    rank,
    rank_in_two_stages,
    rounding_error,
)
from raycf.models import SparseBatch, SparseRows, build_model
from raycf.models.base import output_product, unit_rows
from raycf.models.config import TrainConfig
from raycf.train.trainer import Trainer


def dense(batch: SparseBatch) -> torch.Tensor:
    matrix = torch.zeros(batch.size, batch.n_items)
    matrix[batch.rows, batch.indices] = batch.values
    return matrix


def test_float32_output_product_is_the_layer_itself() -> None:
    layer, x = nn.Linear(6, 9), torch.randn(4, 6)
    assert torch.equal(output_product(x, layer, "float32"), layer(x))


def test_product_in_blocks_has_the_bits_of_one_product() -> None:
    torch.manual_seed(0)
    layer, x = nn.Linear(40, 3_000), torch.randn(200, 40)  # blocks of 87 rows: 87, 87 and 26
    assert MIN_BLOCK_ROWS <= BLOCK_CELLS // 3_000 < 200
    assert torch.equal(linear_in_blocks(x, layer.weight, layer.bias), F.linear(x, layer.weight, layer.bias))
    low = (x.bfloat16(), layer.weight.bfloat16(), layer.bias.bfloat16())
    assert torch.equal(linear_in_blocks(*low), F.linear(*low))


def test_bfloat16_output_product_and_gradients_err_within_bfloat16_rounding() -> None:
    torch.manual_seed(0)
    layer, x = nn.Linear(16, 50), torch.randn(20, 16, requires_grad=True)
    grad = torch.randn(20, 50)
    results = {}
    for dtype in ("float32", "bfloat16"):
        layer.zero_grad()
        x.grad = None
        out = output_product(x, layer, dtype)
        out.backward(grad)
        results[dtype] = (out.detach(), layer.weight.grad.clone(), layer.bias.grad.clone(), x.grad.clone())
        assert out.dtype == layer.weight.grad.dtype == x.grad.dtype == torch.float32
    exact, mixed = results["float32"], results["bfloat16"]
    scales = (x.abs() @ layer.weight.abs().T + layer.bias.abs(), grad.abs().T @ x.abs(), grad.abs().sum(0),
              grad.abs() @ layer.weight.abs())
    for exact_part, mixed_part, scale in zip(exact, mixed, scales):
        error = (exact_part - mixed_part).abs()
        assert (error <= 2.0**-6 * scale.detach() + 1e-6).all()
        assert error.max() > 0  # the products really ran in bfloat16


def test_sparse_rows_permuted_and_cut_equal_scipy_row_selection() -> None:
    rng = np.random.default_rng(3)
    values = (rng.random((30, 12)) < 0.25) * rng.integers(1, 5, (30, 12)).astype(np.float32)
    values[[4, 17]] = 0  # empty rows
    matrix = csr_matrix(values)
    order = rng.permutation(30)[:23]
    rows = SparseRows(matrix, unit_values=True).permuted(torch.from_numpy(order))
    assert rows.n_rows == 23
    expected = matrix[order]
    for (start, stop), batch in zip(((0, 10), (10, 20), (20, 23)), rows.batches(10), strict=True):
        assert (batch.size, batch.n_items) == (stop - start, 12)
        assert torch.equal(dense(batch), torch.from_numpy(expected[start:stop].toarray()))
        assert torch.equal(batch.offsets, torch.from_numpy(expected[start:stop].indptr[:-1].astype(np.int64)))
        assert torch.equal(dense(rows.batch(start, stop)), dense(batch))
        # the transpose cut from the epoch's one sort is the batch's own: scipy's CSC of the same rows
        order, item_offsets, item_rows = batch.by_item
        positions = csr_matrix((np.arange(batch.indices.numel()), batch.indices.numpy(),
                                np.append(batch.offsets.numpy(), batch.indices.numel())),
                               shape=(stop - start, 12)).tocsc()
        assert order.tolist() == positions.data.tolist()
        assert item_offsets.tolist() == positions.indptr[:-1].tolist()
        assert item_rows.tolist() == positions.indices.tolist()
        assert batch.transposed is not None and rows.batch(start, stop).transposed is None
        # unit-norm values computed once for the matrix are bitwise the batch's own
        assert batch.unit is not None and torch.equal(batch.unit_values,
                                                      unit_rows(batch.values, batch.rows, batch.size))
        assert all(torch.equal(a, b) for a, b in zip(rows.batch(start, stop).by_item, batch.by_item))


def trained(split: Split, model: str, matmul_dtype: str, epochs: int = 4) -> Trainer:
    trainer = Trainer(split, TrainConfig.for_model(model, seed=0, hidden=16, matmul_dtype=matmul_dtype))
    for _ in range(epochs):
        trainer.train_epoch()
    return trainer


def float32_twin(trainer: Trainer):
    """The trained model's weights in a float32 model, ranking by plain float32 scores."""
    twin = build_model(TrainConfig.for_model(trainer.config.model, seed=0, hidden=16), trainer.split.n_items)
    twin.load_state_dict(trainer.model.state_dict())
    return twin.eval()


@pytest.mark.parametrize("model", ["multvae", "autorec"])
@pytest.mark.parametrize("k", [5, 20])
def test_two_stage_ranking_gives_the_float32_ranking(small_split: Split, model: str, k: int) -> None:
    trainer = trained(small_split, model, "bfloat16")
    mixed, twin = trainer.model.eval(), float32_twin(trainer)
    inputs, known = small_split.inputs("valid"), small_split.known("valid", "train")
    top, scores = rank(mixed, inputs, known, k)
    expected_top, expected_scores = rank(twin, inputs, known, k)
    assert torch.equal(top, expected_top)
    assert torch.allclose(scores, expected_scores, rtol=1e-5, atol=1e-5)


def test_two_stage_ranking_falls_back_to_float32_where_it_cannot_prove_the_order() -> None:
    """Scores 1 + 0.00009 (40 - |j - 20.3|) of item j (best: 20, 21, 19, 22, 18) all round to 1 in bfloat16, so
    the coarse stage cannot tell the items apart and proves no row: each row gets its float32 order; a row with
    fewer unknown items than candidates is proven (every unknown item is a candidate) and padded with -1."""
    layer = nn.Linear(1, 40)
    with torch.no_grad():
        layer.weight.copy_(1 + 0.00009 * (40 - (torch.arange(40.0) - 20.3).abs())[:, None])
        layer.bias.zero_()
    assert (layer.weight.to(torch.bfloat16) == 1).all()
    known = np.zeros((2, 40), dtype=np.float32)
    known[0, [19]] = 1
    known[1, 3:] = 1  # three unknown items: 0, 1, 2
    known = csr_matrix(known)
    assert candidate_count(5, 40) > 3
    with torch.no_grad():
        top, scores = rank_in_two_stages(torch.ones(2, 1), layer, known, 5, torch.bfloat16)
        assert torch.equal(top, top_k(layer(torch.ones(2, 1)), known, 5))
    assert top.tolist() == [[20, 21, 22, 18, 23], [2, 1, 0, -1, -1]]
    assert torch.allclose(scores[0], layer.weight[top[0], 0])


def test_bfloat16_training_is_reproducible_and_differs_from_float32(small_split: Split) -> None:
    first, second = (trained(small_split, "multvae", "bfloat16", epochs=2) for _ in range(2))
    exact = trained(small_split, "multvae", "float32", epochs=2)
    for name, weight in first.model.state_dict().items():
        assert torch.equal(weight, second.model.state_dict()[name]), name
    decoder, exact_decoder = first.model.decoder.weight, exact.model.decoder.weight
    assert not torch.equal(decoder, exact_decoder)
    assert (decoder - exact_decoder).norm() < 0.05 * exact_decoder.norm()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"model": "multvae", "matmul_dtype": "float16"},
         "matmul_dtype must be one of auto, float32, bfloat16, got 'float16'"),
        ({"model": "ease", "matmul_dtype": "bfloat16"}, "matmul_dtype is not a hyperparameter of ease"),
    ],
)
def test_bad_matmul_dtype_is_refused(overrides: dict, message: str) -> None:
    with pytest.raises(RaycfError, match=message):
        TrainConfig.for_model(overrides.pop("model"), **overrides)


def test_two_stage_ranking_breaks_exact_ties_to_the_lower_index() -> None:
    """Items 9, 3 and 6 score exactly 5 (far above the rest, so the coarse stage proves them): ranked 3, 6, 9."""
    layer = nn.Linear(1, 12)
    with torch.no_grad():
        layer.weight.copy_(torch.linspace(0.0, 1.0, 12)[:, None])
        layer.weight[[9, 3, 6]] = 5.0
        layer.bias.zero_()
    with torch.no_grad():
        top, scores = rank_in_two_stages(torch.ones(4, 1), layer, csr_matrix((4, 12), dtype=np.float32), 4,
                                         torch.bfloat16)
    assert top.tolist() == [[3, 6, 9, 11]] * 4
    assert scores[:, :3].eq(5.0).all()


def test_read_only_arrays_make_batches_without_a_warning() -> None:
    """Ray Data hands scorers read-only arrays; a batch of them neither warns nor shares their memory."""
    matrix = csr_matrix(np.eye(3, 5, dtype=np.float32))
    for array in (matrix.indices, matrix.data, matrix.indptr):
        array.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        batch = SparseBatch.from_csr(matrix)
    assert torch.equal(dense(batch), torch.from_numpy(matrix.toarray()))
    assert batch.indices.data_ptr() != matrix.indices.ctypes.data  # a copy: torch may not write into Ray's memory


@pytest.mark.parametrize(
    ("feature_scale", "bias_scale", "representable"),
    [(1.0, 0.1, False), (30.0, 0.1, False), (1e-3, 5.0, False), (1.0, 0.0, True)],
)
def test_rounding_error_bounds_every_float32_score_from_its_coarse_score(
    feature_scale: float, bias_scale: float, representable: bool
) -> None:
    """Every float32 score lies within final_rounding + rounding_error of its bfloat16 score, at scales where
    each term of the bound dominates (`representable`: factors exact in bfloat16, so only float32 accumulation
    separates the two products), and the bound is at least twice as tight as 2^-6 (|h| max|w| + max|b|)."""
    generator = torch.Generator().manual_seed(0)
    layer = nn.Linear(200, 3000)
    features = torch.randn(256, 200, generator=generator) * feature_scale
    with torch.no_grad():
        layer.weight.copy_(torch.randn(3000, 200, generator=generator) * 0.1)
        layer.bias.copy_(torch.randn(3000, generator=generator) * bias_scale)
        if representable:
            features = features.bfloat16().float()
            layer.weight.copy_(layer.weight.bfloat16().float())
        low = (features.bfloat16(), layer.weight.bfloat16(), layer.bias.bfloat16())
        coarse, exact = F.linear(*low), layer(features)
        error = rounding_error(features, layer, *low)
        assert ((exact - coarse.float()).abs() <= final_rounding(coarse.float(), torch.bfloat16) + error[:, None]).all()
        loose = 2.0**-6 * (features.norm(dim=1) * layer.weight.norm(dim=1).max() + layer.bias.abs().max())
        assert (error < loose / 2).all()


@pytest.mark.parametrize("matmul_dtype", ["float32", "bfloat16"])
def test_validation_ranks_from_the_shared_training_rows_as_from_its_inputs(small_split: Split,
                                                                          matmul_dtype: str) -> None:
    """A Trainer validates from its resident training rows (the validation inputs here, shared, not copied):
    spans of them are cut without copying and ranked whole; each user's top k is the one ranking its input row
    gives, for users in one span, in a span with gaps (within SPAN_SLACK) and scattered."""
    trainer = trained(small_split, "multvae", matmul_dtype)
    task, model = trainer.validation, trainer.model.eval()
    assert task.rows is trainer.train_rows
    plain = RankingTask.of(small_split, "valid")
    assert plain.rows is None
    for users in (np.arange(40, 140), np.delete(np.arange(40, 140), [3, 50, 51]), np.arange(0, 400, 7)):
        assert torch.equal(task.rank(model, users, 5), plain.rank(model, users, 5))
        assert torch.equal(task.rank(model, users, 5), rank(model, task.inputs[users], task.known[users], 5)[0])


def test_rows_that_are_not_the_inputs_are_refused(small_split: Split) -> None:
    with pytest.raises(ValueError, match=r"rows 400 x 150 \(\d+ entries\) are not the test inputs"):
        RankingTask.of(small_split, "test", rows=SparseRows(small_split.valid))
