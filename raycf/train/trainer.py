"""One training run, callable without Ray: shuffled user batches, Adam, validation, early stopping."""

from __future__ import annotations

import copy
import dataclasses
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from raycf.data.source import prepare_split
from raycf.data.spec import DataSpec
from raycf.data.split import MASK_PROTOCOLS, Split, save_split
from raycf.errors import RaycfError
from raycf.eval.evaluation import RankingTask, evaluate_metrics, summarize
from raycf.eval.metrics import METRICS, REPORT_K, Selection, standard_error
from raycf.models import (
    FittedRecommender,
    NeuralRecommender,
    Recommender,
    SparseRows,
    build_model,
    planned_epochs,
)
from raycf.models.checkpoint import save_checkpoint
from raycf.models.config import TrainConfig
from raycf.runs.layout import CHECKPOINT_NAME, METRICS_FILE, SPLIT_DIR
from raycf.storage.atomic import PendingOutput
from raycf.storage.json_text import json_text
from raycf.storage.location import Location
from raycf.train.memory import check_fit_memory
from raycf.train.precision import PrecisionChoice, ProductShape, check_bfloat16_runs, precision_words, resolve_precision

K = REPORT_K


@dataclass(frozen=True)
class EpochReport:
    """What one epoch did; `valid` is None on epochs without validation."""

    epoch: int
    loss: float
    train_seconds: float
    valid: dict[str, float] | None
    valid_seconds: float
    improved: bool
    best_epoch: int
    best_value: float
    """The best epoch's validation value of the run's Selection metric (NaN before the first validation)."""


@dataclass
class TrainResult:
    config: TrainConfig
    model: Recommender
    """The model holding the best epoch's weights, in eval mode."""
    best_epoch: int
    best_valid: dict[str, float]
    epochs_run: int
    seconds: float
    history: list[EpochReport] = field(default_factory=list)
    precision: PrecisionChoice | None = None
    """A neural model's output-layer precision: asked, chosen, measured."""


class Trainer:
    """Owns the model, optimizer and random state of one run; its state can be saved and restored."""

    def __init__(
        self, split: Split, config: TrainConfig, device: torch.device | str = "cpu", selection: Selection = Selection()
    ) -> None:
        config.validate()
        self.split = split
        self.config = config
        self.selection = selection
        self.device = torch.device(device)
        with torch.random.fork_rng():
            torch.manual_seed(config.seed)
            self.model = build_model(config, split.n_items).to(self.device)
        self.precision = self.resolve_precision()
        """The output layer's precision: asked, chosen and measured (raycf.train.precision)."""
        self.generator = torch.Generator().manual_seed(config.seed)
        self.optimizer = torch.optim.Adam(self.model.parameter_groups(), lr=self.model.params.lr, fused=True) \
            if isinstance(self.model, NeuralRecommender) else None
        self.planned_epochs = planned_epochs(config)
        self.train_rows = None if self.optimizer is None else SparseRows(
            split.train, self.device, unit_values=self.model.params.normalize == "l2")
        """Every user's train row, resident on the device for the whole run."""
        self.train_users = torch.from_numpy(split.train_users).to(self.device)
        """The rows it trains on: users with a train record."""
        shared = self.train_rows is not None and split.inputs("valid") is split.train
        self.validation = RankingTask.of(split, "valid", rows=self.train_rows if shared else None)
        self.epoch = 0
        self.step = 0
        self.best_epoch = 0
        self.best_valid: dict[str, float] = {}
        self.best_state: dict[str, torch.Tensor] = copy.deepcopy(self.model.state_dict())

    def resolve_precision(self) -> PrecisionChoice | None:
        """A neural model's `matmul_dtype` settled (`auto` measured at its output layer's shape), and the model and
        config set to it; None for a fitted model."""
        if not isinstance(self.model, NeuralRecommender):
            return None
        params = self.model.params
        shape = ProductShape(params.batch_size, self.model.decoder.in_features, self.split.n_items)
        choice = resolve_precision(params.matmul_dtype, shape, self.device.type)
        self.use_matmul_dtype(choice.matmul_dtype)
        return choice

    def use_matmul_dtype(self, matmul_dtype: str) -> None:
        """Train (and checkpoint) in `matmul_dtype` from now on."""
        params = dataclasses.replace(self.model.params, matmul_dtype=matmul_dtype)
        self.config = self.model.config = dataclasses.replace(self.config, params=params)

    @property
    def best_value(self) -> float:
        """The best validation value of the selection metric so far (NaN before the first validation)."""
        return self.best_valid.get(self.selection.field, float("nan"))

    @property
    def finished(self) -> bool:
        """Max epochs (a fitted model's iterations) reached, or no improvement for `patience` epochs."""
        return self.epoch >= self.planned_epochs or self.epoch - self.best_epoch >= self.config.patience

    def train_epoch(self) -> float:
        """One pass over all users in shuffled batches, or a fitted model's next iteration; returns the mean batch
        loss (NaN for a fitted model)."""
        self.model.train()
        if isinstance(self.model, FittedRecommender):
            self.model.fit_iteration(self.split.train, self.epoch)
            self.epoch += 1
            return float("nan")
        assert isinstance(self.model, NeuralRecommender) and self.optimizer is not None and self.train_rows is not None
        self.model.start_epoch(self.epoch)
        order = self.train_users[torch.randperm(len(self.train_users), generator=self.generator).to(self.device)]
        total, steps = torch.zeros((), dtype=torch.float64, device=self.device), 0
        for batch in self.train_rows.permuted(order).batches(self.model.params.batch_size):
            loss = self.model.loss(batch, self.step, self.generator)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.step += 1
            # summed in place and read once per epoch: no device sync per batch, nothing kept per batch
            total += loss.detach()
            steps += 1
        self.epoch += 1
        return (total / steps).item()

    def validate(self) -> dict[str, float]:
        """Validation means of the selection's metrics (P/R/NDCG/MRR at REPORT_K, the selection metric, the
        report metrics; one ranking at the largest k), and the selection metric's per-user standard error
        (`<field>_se`)."""
        per_user = evaluate_metrics(self.model, self.split, "valid", self.selection.metrics, task=self.validation)
        valid = summarize(per_user)
        valid[f"{self.selection.field}_se"] = standard_error(per_user[self.selection.field])
        return valid

    def run_epoch(self) -> EpochReport:
        """Train one epoch and, when due, validate and keep the weights if they are the best so far."""
        started = time.perf_counter()
        loss = self.train_epoch()
        trained = time.perf_counter()
        valid, improved = None, False
        if self.epoch % self.config.eval_every == 0 or self.epoch == self.planned_epochs:
            valid = self.validate()
            field = self.selection.field
            improved = self.selection.improves(valid[field], self.best_valid.get(field))
            if improved:
                self.best_epoch, self.best_valid = self.epoch, valid
                self.best_state = copy.deepcopy(self.model.state_dict())
        return EpochReport(
            epoch=self.epoch,
            loss=loss,
            train_seconds=trained - started,
            valid=valid,
            valid_seconds=time.perf_counter() - trained,
            improved=improved,
            best_epoch=self.best_epoch,
            best_value=self.best_value,
        )

    def best_model(self) -> Recommender:
        """A copy of the model holding the best epoch's weights, in eval mode."""
        model = build_model(self.config, self.split.n_items).to(self.device)
        model.load_state_dict(self.best_state)
        return model.eval()

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this run exactly where it is (tensors and plain values only).

        `best_state` is None when the current weights are the best ones, which keeps checkpoints
        taken at an improving epoch free of a second copy of the weights.
        """
        return {
            "model": self.model.state_dict(),
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "epoch": self.epoch,
            "step": self.step,
            "best_epoch": self.best_epoch,
            "best_valid": self.best_valid,
            "best_state": None if self.best_epoch == self.epoch else self.best_state,
            "matmul_dtype": self.model.params.matmul_dtype if self.precision is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.precision is not None and state.get("matmul_dtype") is not None:
            # a resumed run goes on in the precision it started in
            self.precision = dataclasses.replace(self.precision, matmul_dtype=state["matmul_dtype"])
            self.use_matmul_dtype(state["matmul_dtype"])
        self.model.load_state_dict(state["model"])
        if self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])  # moves the moments to the model's device
        self.generator.set_state(state["generator"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.best_epoch, self.best_valid = state["best_epoch"], dict(state["best_valid"])
        best = state["best_state"]
        self.best_state = copy.deepcopy(self.model.state_dict()) if best is None else best


def format_epoch(config: TrainConfig, report: EpochReport, selection: Selection = Selection()) -> str:
    """The progress line printed after each epoch."""
    loss = "fitted" if np.isnan(report.loss) else f"loss {report.loss:10.4f}"
    line = f"[{config.model}] epoch {report.epoch:4d}  {loss:>15s}  {report.train_seconds:6.2f}s"
    if report.valid is not None:
        line += f"  valid {selection.label} {report.valid[selection.field]:.4f}{' *' if report.improved else '  '}"
    return line + f"  best {report.best_value:.4f} @ {report.best_epoch}"


def train(
    split: Split,
    config: TrainConfig,
    on_epoch: Callable[[EpochReport], None] | None = None,
    device: torch.device | str = "cpu",
    selection: Selection = Selection(),
) -> TrainResult:
    """Train until early stopping or `max_epochs`, keeping the best epoch by `selection`; `on_epoch` sees
    every epoch's report."""
    started = time.perf_counter()
    trainer = Trainer(split, config, device, selection)
    history = []
    while not trainer.finished:
        report = trainer.run_epoch()
        history.append(report)
        if on_epoch is not None:
            on_epoch(report)
    return TrainResult(
        config=trainer.config,
        model=trainer.best_model(),
        best_epoch=trainer.best_epoch,
        best_valid=trainer.best_valid,
        epochs_run=trainer.epoch,
        seconds=time.perf_counter() - started,
        history=history,
        precision=trainer.precision,
    )


class TrainRun(NamedTuple):
    """What `run_training` wrote: the output directory and its metrics.json content."""

    out: str
    metrics: dict[str, Any]

    @property
    def summary(self) -> str:
        """The few lines `raycf train` prints."""
        return format_summary(self.metrics, self.out)


def run_training(
    data: DataSpec,
    config: TrainConfig,
    *,
    fractions: tuple[float, float, float],
    mask: str,
    out: str | Path,
    device: str = "cpu",
    progress: Callable[[str], None] | None = None,
    selection: Selection = Selection(),
) -> TrainRun:
    """Split, train, test and write `out/` (split/, checkpoint.pt, metrics.json).

    `out` is a local path or a URI (s3://...). The outputs are staged and committed at the end
    (raycf.storage.atomic.PendingOutput), so an interrupted run leaves no output, and an existing non-empty
    `out` is refused rather than overwritten.
    """
    location = Location.of(str(out), "")
    location.check_access("--out")
    if location.is_used():
        raise RaycfError(f"{out}: output directory exists and is not empty; choose a new --out or remove it")
    if mask not in MASK_PROTOCOLS:
        raise RaycfError(f"mask must be one of {', '.join(MASK_PROTOCOLS)}, got {mask!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise RaycfError("--device cuda: no CUDA GPU is visible to torch here; use --device cpu")
    if getattr(config.params, "matmul_dtype", None) == "bfloat16":
        check_bfloat16_runs(device)
    split = prepare_split(data, fractions, config.seed)
    check_fit_memory(config, split.n_users, split.n_items, f"--model {config.model}")
    on_epoch = None if progress is None else (lambda report: progress(format_epoch(config, report, selection)))
    result = train(split, config, on_epoch=on_epoch, device=device, selection=selection)
    test = summarize(evaluate_metrics(result.model, split, "test", selection.metrics, mask=mask))
    metrics = {
        "model": config.model,
        "config": result.config.to_dict(),
        "precision": None if result.precision is None else result.precision.to_dict(),
        "k": K,
        "mask": mask,
        "selection": {"metric": selection.label, "mode": selection.mode,
                      "report_metrics": [metric.label for metric in selection.report]},
        "valid": result.best_valid,
        "test": test,
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "seconds": round(result.seconds, 3),
        "history": [history_entry(report) for report in result.history],
        "dataset": split.manifest["source"],
        "scheme": split.scheme,
        "split_sha256": split.manifest["split_sha256"],
    }
    try:
        with tempfile.TemporaryDirectory() as local:
            staging = Path(local)
            save_split(split, staging / SPLIT_DIR)
            meta = {"split_sha256": split.manifest["split_sha256"]}
            save_checkpoint(staging / CHECKPOINT_NAME, result.model, meta=meta)
            (staging / METRICS_FILE).write_text(json_text(metrics))
            PendingOutput.write(location, staging)
    except OSError as error:
        raise RaycfError(f"{out}: cannot write the run ({str(error).splitlines()[0]}); choose a writable, new "
                         "--out") from None
    return TrainRun(str(out), metrics)


def history_entry(report: EpochReport) -> dict[str, Any]:
    """One epoch in metrics.json: its seconds (training, validation), loss (null for a fitted model) and
    validation metrics (null on an epoch without validation)."""
    valid = None if report.valid is None else {name: value for name, value in report.valid.items()
                                                if not name.endswith("_se")}
    return {"epoch": report.epoch, "train_seconds": round(report.train_seconds, 4),
            "valid_seconds": round(report.valid_seconds, 4), "loss": None if np.isnan(report.loss) else report.loss,
            "valid": valid}


def format_summary(metrics: dict[str, Any], out: str | Path) -> str:
    """A few lines: the run, its best epoch, and validation and test metrics at k."""
    k = metrics["k"]
    fields = [*METRICS, *(name for name in metrics["test"] if "@" in name)]  # then the other k's, e.g. recall@20
    labels = [name if "@" in name else f"{name}@{k}" for name in fields]
    width = max(13, *(len(label) + 2 for label in labels))  # recall_capped@20 is wider than the numbers
    lines = [
        (f"{metrics['model']} on {metrics['dataset']}: best epoch {metrics['best_epoch']} of {metrics['epochs_run']}"
         f" ({metrics['seconds']:.1f}s)"),
        f"{'':6s}" + "".join(f"{label:>{width}s}" for label in labels),
    ]
    for part in ("valid", "test"):
        lines.append(f"{part:6s}" + "".join(f"{metrics[part][name]:{width}.4f}" for name in fields))
    if metrics.get("precision"):
        lines.append(f"output layer in {precision_words(metrics['precision'])}")
    given = "fold-in" if metrics.get("scheme") == "users" else metrics["mask"]
    lines.append(f"test ranks exclude {given} items; outputs in {out}")
    return "\n".join(lines)

