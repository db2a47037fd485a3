"""The precision of a neural model's output-layer products (`matmul_dtype`): `auto` measures float32 and bfloat16 at
the model's own product shape on the device it trains on (once per process and shape, well under a second) and
takes bfloat16 only where it is clearly faster; an explicit bfloat16 that is slower trains as asked, with a warning."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from raycf.errors import RaycfError
from raycf.models.base import output_product

BFLOAT16_MARGIN = 1.25
"""`auto` takes bfloat16 when its measured rate is at least this multiple of float32's: a margin that noise on a
loaded machine does not cross, so that one machine keeps making the same choice."""
SMALL_PRODUCT = 1e7
"""`auto` trains products of fewer multiply-adds than this in float32 without measuring: there bfloat16's casts
cost more than its products save (measured: 100 x 16 x 150 at a third of float32's rate, 100 x 200 x 150 at 0.8x)."""
MEASURED_PRODUCT = 4e7
"""The product measured has at most this many multiply-adds (columns cut from the item count beyond it): short
repeats, so that on a busy machine some run undisturbed, and both measurements well under a second."""
REPEATS = 10
"""Each dtype is timed over at least this many repeats (and MEASURE_SECONDS); the best repeat counts."""
MEASURE_SECONDS = 0.1
MEASURE_LIMIT = 0.6
"""The repeats stop after this many seconds, however few that allows on a loaded machine."""

PRECISION_COLUMNS = ("matmul_dtype", "matmul_float32_gflops", "matmul_bfloat16_gflops")
"""A neural trial's precision in its results and in trials.parquet (null for a fitted model, rates null where
nothing was measured)."""

logger = logging.getLogger("raycf")


@dataclass(frozen=True)
class ProductShape:
    """An output layer's training product: `rows` users x `features` inputs x `items` outputs."""

    rows: int
    features: int
    items: int

    @property
    def multiply_adds(self) -> float:
        """Of one product."""
        return float(self.rows) * self.features * self.items

    @property
    def flop(self) -> float:
        """Floating-point operations of one forward and backward pass (three products)."""
        return 3 * 2.0 * self.multiply_adds


@dataclass(frozen=True)
class MatmulRates:
    """Measured GFLOP/s of the output layer's forward and backward products, in each dtype."""

    float32: float
    bfloat16: float


@dataclass(frozen=True)
class PrecisionChoice:
    """What a run asked for (`requested`), what it trains in (`matmul_dtype`) and the rates that decided it (None
    where nothing was measured: an explicit float32)."""

    requested: str
    matmul_dtype: str
    rates: MatmulRates | None = None

    def to_dict(self) -> dict[str, Any]:
        """Its form in metrics.json, trial results and reports."""
        rates = {} if self.rates is None else {"float32_gflops": round(self.rates.float32, 1),
                                               "bfloat16_gflops": round(self.rates.bfloat16, 1)}
        return {"requested": self.requested, "matmul_dtype": self.matmul_dtype, **rates}

    def results(self) -> dict[str, Any]:
        """Its PRECISION_COLUMNS, for a trial's results."""
        return {f"matmul_{name}" if name.endswith("gflops") else name: value
                for name, value in self.to_dict().items() if name != "requested"}


Measure = Callable[[ProductShape, str], MatmulRates]


def choose_matmul_dtype(rates: MatmulRates) -> str:
    """bfloat16 where it is at least BFLOAT16_MARGIN times as fast as float32, else float32."""
    return "bfloat16" if rates.bfloat16 >= BFLOAT16_MARGIN * rates.float32 else "float32"


def resolve_precision(requested: str, shape: ProductShape, device: str, measure: Measure | None = None
                      ) -> PrecisionChoice:
    """The dtype a run trains in: `requested` unless it is `auto`, then the measured choice; an explicit bfloat16
    that measures slower than float32 logs one warning line with both rates. `measure` defaults to
    `measure_rates` (tests inject theirs)."""
    if requested == "float32" or (requested == "auto" and shape.multiply_adds < SMALL_PRODUCT):
        return PrecisionChoice(requested, "float32")
    check_bfloat16_runs(device)
    rates = (measure or measure_rates)(shape, device)
    if requested == "auto":
        return PrecisionChoice(requested, choose_matmul_dtype(rates), rates)
    if rates.bfloat16 < rates.float32:
        logger.warning("matmul_dtype bfloat16 is slower than float32 on this %s (%.0f against %.0f GFLOP/s at the "
                       "output layer's shape); training as asked (matmul_dtype: auto would take float32)",
                       device, rates.bfloat16, rates.float32)
    return PrecisionChoice(requested, requested, rates)


@functools.cache
def measure_rates(shape: ProductShape, device: str) -> MatmulRates:
    """Both dtypes' rates at `shape` (its item count cut to MEASURED_PRODUCT) on `device`, with torch's current
    threads; measured once per process and shape. The dtypes' repeats alternate, so that both meet the same
    moments of a busy machine; the best repeat of each counts."""
    items = max(1, min(shape.items, int(MEASURED_PRODUCT / (shape.rows * shape.features))))
    measured = ProductShape(shape.rows, shape.features, items)
    generator = torch.Generator().manual_seed(0)
    layer = nn.Linear(measured.features, measured.items).to(device)
    inputs = torch.randn(measured.rows, measured.features, generator=generator).to(device).requires_grad_()

    def seconds(dtype: str) -> float:
        """One forward and backward pass of output_product in `dtype`."""
        started = time.perf_counter()
        output_product(inputs, layer, dtype).sum().backward()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - started

    dtypes = ("float32", "bfloat16")
    for dtype in dtypes:  # warm-up: kernels chosen, memory allocated
        seconds(dtype)
    best = dict.fromkeys(dtypes, float("inf"))
    started, repeats = time.perf_counter(), 0
    while repeats < REPEATS or time.perf_counter() - started < MEASURE_SECONDS:
        for dtype in dtypes:
            best[dtype] = min(best[dtype], seconds(dtype))
        repeats += 1
        if time.perf_counter() - started > MEASURE_LIMIT:
            break
    return MatmulRates(*(measured.flop / best[dtype] / 1e9 for dtype in dtypes))


def check_bfloat16_runs(device: str) -> None:
    """Refuse, in one line, bfloat16 on a GPU that cannot compute in it (torch computes it on every CPU, natively
    or emulated)."""
    if device.startswith("cuda") and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        raise RaycfError(f"matmul_dtype: this GPU ({torch.cuda.get_device_name()}) cannot compute in bfloat16; "
                         "use float32 (or auto, which measures)")


def precision_words(precision: dict[str, Any]) -> str:
    """"bfloat16 (auto: bfloat16 812 GFLOP/s, float32 230)": the dtype trained in, how it was chosen, the rates."""
    words = precision["matmul_dtype"]
    if "float32_gflops" not in precision:
        return words
    rates = f"bfloat16 {precision['bfloat16_gflops']:.0f} GFLOP/s, float32 {precision['float32_gflops']:.0f}"
    return f"{words} ({precision['requested']}: {rates})"
