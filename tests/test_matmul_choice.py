"""matmul_dtype auto: bfloat16 only where measured faster at the model's own product shape, the choice and both
rates recorded; explicit values train as asked (a slower bfloat16 with one warning line)."""

from __future__ import annotations

import json
import logging

import pytest

from raycf.data.spec import DataSpec
from raycf.data.split import Split
from raycf.models.config import TrainConfig
from raycf.train.precision import (
    SMALL_PRODUCT,
    MatmulRates,
    ProductShape,
    measure_rates,
    precision_words,
    resolve_precision,
)
from raycf.train.trainer import Trainer, run_training

ML1M_DECODER = ProductShape(100, 200, 3_651)
"""Mult-VAE's output product on ML-1M (batch 100, 200 latent features, 3,651 items): large enough to measure."""


def injected(float32: float, bfloat16: float):
    """A measurement that returns these rates and records the shapes it was asked for."""
    asked: list[ProductShape] = []

    def measure(shape: ProductShape, device: str) -> MatmulRates:
        asked.append(shape)
        return MatmulRates(float32, bfloat16)

    measure.asked = asked  # type: ignore[attr-defined]
    return measure


@pytest.mark.parametrize(("float32", "bfloat16", "chosen"), [
    (30.0, 120.0, "bfloat16"),   # a CPU with AVX512-BF16: ~4x
    (40.0, 12.0, "float32"),     # an AVX-512 Xeon that emulates bfloat16: ~3x slower
    (100.0, 110.0, "float32"),   # within the margin that noise could cross: the safe choice
])
def test_auto_follows_the_measured_rates(float32: float, bfloat16: float, chosen: str) -> None:
    measure = injected(float32, bfloat16)
    choice = resolve_precision("auto", ML1M_DECODER, "cpu", measure)
    assert measure.asked == [ML1M_DECODER]
    assert choice.matmul_dtype == chosen
    assert choice.to_dict() == {"requested": "auto", "matmul_dtype": chosen, "float32_gflops": float32,
                                "bfloat16_gflops": bfloat16}
    assert precision_words(choice.to_dict()) == (
        f"{chosen} (auto: bfloat16 {bfloat16:.0f} GFLOP/s, float32 {float32:.0f})")


def test_auto_takes_float32_for_small_products_without_measuring() -> None:
    small = ProductShape(100, 16, 150)
    assert small.multiply_adds < SMALL_PRODUCT
    measure = injected(1.0, 1000.0)
    assert resolve_precision("auto", small, "cpu", measure).matmul_dtype == "float32"
    assert measure.asked == []


def test_explicit_values_train_as_asked_and_a_slower_bfloat16_warns(caplog) -> None:
    assert resolve_precision("float32", ML1M_DECODER, "cpu", injected(10.0, 90.0)).rates is None
    with caplog.at_level(logging.WARNING, logger="raycf"):
        choice = resolve_precision("bfloat16", ML1M_DECODER, "cpu", injected(40.0, 12.0))
    assert choice.matmul_dtype == "bfloat16"
    [warning] = caplog.records
    assert warning.getMessage() == (
        "matmul_dtype bfloat16 is slower than float32 on this cpu (12 against 40 GFLOP/s at the output layer's "
        "shape); training as asked (matmul_dtype: auto would take float32)")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="raycf"):
        resolve_precision("bfloat16", ML1M_DECODER, "cpu", injected(30.0, 120.0))
    assert caplog.records == []


def test_the_real_measurement_is_taken_once_per_shape() -> None:
    rates = measure_rates(ML1M_DECODER, "cpu")
    assert rates.float32 > 0 and rates.bfloat16 > 0
    assert measure_rates(ML1M_DECODER, "cpu") is rates


@pytest.mark.parametrize("matmul_dtype", ["float32", "bfloat16"])
def test_a_trainer_trains_and_resumes_in_the_precision_it_started_in(small_split: Split, matmul_dtype: str) -> None:
    config = TrainConfig.for_model("multvae", seed=0, hidden=16, matmul_dtype=matmul_dtype)
    first = Trainer(small_split, config)
    assert first.model.params.matmul_dtype == first.config.params.matmul_dtype == matmul_dtype
    first.train_epoch()
    # a resume whose own choice differs (auto, here float32 at this small shape) goes on as it started
    resumed = Trainer(small_split, TrainConfig.for_model("multvae", seed=0, hidden=16))
    resumed.load_state_dict(first.state_dict())
    assert resumed.model.params.matmul_dtype == matmul_dtype
    assert resumed.precision is not None and resumed.precision.matmul_dtype == matmul_dtype
    assert resumed.best_model().params.matmul_dtype == matmul_dtype


def test_metrics_json_records_the_choice(tmp_path) -> None:
    data = DataSpec(synthetic={"n_users": 200, "n_items": 80})
    config = TrainConfig.for_model("autorec", hidden=8, max_epochs=1)
    assert config.params.matmul_dtype == "auto"  # the default
    run = run_training(data, config, fractions=(0.6, 0.2, 0.2), mask="train", out=tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["precision"] == {"requested": "auto", "matmul_dtype": "float32"}  # 100 x 8 x 80: too small
    assert metrics["config"]["matmul_dtype"] == "float32"  # what it trained in, so the run can be repeated exactly
    assert "output layer in float32" in run.summary
    ease = run_training(data, TrainConfig.for_model("ease"), fractions=(0.6, 0.2, 0.2), mask="train",
                        out=tmp_path / "ease")
    assert ease.metrics["precision"] is None

