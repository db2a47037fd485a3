"""RecVAE's pieces against hand-worked values: the composite prior's log-density, each user's beta, the parameters
each phase of the alternating training updates; its own fields refused in one line (the every-model tests in
test_every_model.py cover training, checkpoints, resume and scoring); and, slow, its seed-0 ML-1M runs on the
write-up's and the strong-generalization protocol against pinned figures."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import ray
import scipy.sparse as sp
import torch
from conftest import ml1m_path, run_raycf

from raycf.data.source import prepare_split
from raycf.data.spec import DataSpec
from raycf.errors import RaycfError
from raycf.eval.evaluation import evaluate_metrics, summarize
from raycf.eval.metrics import Selection
from raycf.models import SparseBatch, build_model
from raycf.models.config import TrainConfig
from raycf.models.recvae import composite_prior_log_density, user_betas
from raycf.train.trainer import Trainer, train

WEIGHTS = (0.15, 0.75, 0.1)


def log_normal(z: float, mu: float, variance: float) -> float:
    return -0.5 * math.log(2 * math.pi * variance) - (z - mu) ** 2 / (2 * variance)


def test_the_composite_prior_mixes_its_three_normals_in_each_coordinate() -> None:
    z = torch.tensor([[0.0, 1.0], [2.0, -1.0]])
    mu, logvar = torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.tensor([[0.0, 0.0], [math.log(4.0), 0.0]])
    density = composite_prior_log_density(z, (mu, logvar), WEIGHTS, 10.0)
    # row 0: at z=0 both the standard normal and the posterior N(0, 1) give 1/sqrt(2 pi); at z=1 the posterior
    # N(1, 1) does, the standard normal exp(-1/2)/sqrt(2 pi); the wide normal N(0, e^10) about e^-5/sqrt(2 pi)
    root = math.sqrt(2 * math.pi)
    first = math.log((0.15 + 0.75 + 0.1 * math.exp(-5)) / root)
    second = math.log((0.15 * math.exp(-0.5) + 0.75 + 0.1 * math.exp(-5 - 0.5 * math.exp(-10))) / root)
    mixture = [sum(w * math.exp(log_normal(value, m, v)) for w, (m, v) in zip(WEIGHTS, components))
               for value, components in ((2.0, ((0, 1), (1, 4), (0, math.exp(10)))),
                                         (-1.0, ((0, 1), (0, 1), (0, math.exp(10)))))]
    expected = [first + second, math.log(mixture[0]) + math.log(mixture[1])]
    assert density.tolist() == pytest.approx(expected, abs=1e-5)
    # one component alone is that normal's log-density
    alone = composite_prior_log_density(z, (mu, logvar), (0.0, 1.0, 0.0), 10.0)
    assert alone[1].item() == pytest.approx(log_normal(2.0, 1.0, 4.0) + log_normal(-1.0, 0.0, 1.0), abs=1e-5)


def test_each_users_beta_is_gamma_times_its_history_size() -> None:
    rows = sp.csr_matrix(np.array([[1, 1, 0, 1], [0, 1, 0, 0], [1, 1, 1, 1]], dtype=np.float32))
    assert user_betas(SparseBatch.from_csr(rows), 0.5).tolist() == [1.5, 0.5, 2.0]


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


def same(state: dict[str, torch.Tensor], module: torch.nn.Module) -> bool:
    """Whether `module` holds the tensors of `state`, in order (the prior's copy names them otherwise)."""
    now = list(module.state_dict().values())
    return len(now) == len(state) and all(torch.equal(a, b) for a, b in zip(state.values(), now))


def test_alternation_trains_the_encoder_then_the_decoder_and_refreshes_the_prior(small_split) -> None:
    config = TrainConfig.for_model("recvae", hidden=8, width=16, depth=2, encoder_epochs=2, decoder_epochs=1,
                                   batch_size=100, max_epochs=4)
    trainer = Trainer(small_split, config)
    model = trainer.model
    initial = snapshot(model.encoder)
    for epoch, trains_encoder in enumerate((True, True, False)):
        encoder, decoder, previous = snapshot(model.encoder), snapshot(model.decoder), snapshot(model.previous)
        trainer.train_epoch()
        assert same(encoder, model.encoder) != trains_encoder, epoch
        assert same(decoder, model.decoder) == trains_encoder, epoch
        assert same(previous, model.previous), epoch  # the prior stays frozen within an alternation
        assert same(initial, model.previous)  # ... and it is the encoder as the alternation began
    trainer.train_epoch()  # the next alternation's first epoch: the prior is the encoder it started from
    assert not same(initial, model.previous)
    assert same(encoder, model.previous) and not same(encoder, model.encoder)


def test_the_decoder_phase_loss_has_no_kl_term(small_split) -> None:
    model = build_model(TrainConfig.for_model("recvae", hidden=4, width=8, depth=2, encoder_epochs=1), 150)
    batch = SparseBatch.from_csr(small_split.train[:50])
    model.start_epoch(1)  # the decoder's epoch: the undropped input, z drawn from the posterior, no KL term
    loss = model.loss(batch, 0, torch.Generator().manual_seed(3))
    with torch.no_grad():
        mu, logvar = model.encoder(batch, batch.unit_values)
        z = mu + torch.randn(mu.shape, generator=torch.Generator().manual_seed(3)) * torch.exp(0.5 * logvar)
        log_probs = torch.log_softmax(model.decoder(z), dim=1)
    dense = torch.from_numpy(small_split.train[:50].toarray())
    assert loss.item() == pytest.approx(-(dense * log_probs).sum().item() / 50, rel=1e-5)


@pytest.mark.parametrize(("fields", "message"), [
    ({"prior_standard": 0.3}, "config: prior_standard + prior_posterior + prior_wide (the prior's mixture weights) "
                              "must sum to 1, got 1.15"),
    ({"gamma": -0.1}, "config: gamma must be >= 0, got -0.1"),
    ({"encoder_epochs": 0}, "config: encoder_epochs must be >= 1, got 0"),
    ({"decoder_epochs": 0}, "config: decoder_epochs must be >= 1, got 0"),
])
def test_bad_fields_are_refused_naming_the_field(fields: dict, message: str) -> None:
    with pytest.raises(RaycfError, match=f"^{re.escape(message)}$"):
        TrainConfig.for_model("recvae", **fields)


def refuse_ray(*args: object, **kwargs: object) -> None:
    raise AssertionError("Ray started")


@pytest.mark.parametrize(("args", "message"), [
    (["train", "--model", "recvae", "--dataset", "synthetic", "--gamma", "-1"], "config: gamma must be >= 0"),
    (["train", "--model", "recvae", "--dataset", "synthetic", "--decoder-epochs", "0"],
     "config: decoder_epochs must be >= 1"),
    (["tune", "{study}"], "{study}: models.recvae: config: prior_standard + prior_posterior + prior_wide"),
])
def test_the_cli_refuses_them_in_one_line_before_ray_starts(
    args: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    study = tmp_path / "s.yaml"
    study.write_text("name: s\ndata: {dataset: synthetic}\nmodels:\n  recvae: {fixed: {prior_wide: 0.2}}\n")
    monkeypatch.setattr(ray, "init", refuse_ray)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    out = tmp_path / "out"
    command = [arg.format(study=study) for arg in args]
    assert run_raycf(*command, *(["--out", str(out)] if args[0] == "train" else
                                 ["--storage", str(tmp_path), "--name", "run"])) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"raycf: error: {message.format(study=study)}") and error.count("\n") == 1, error
    assert sorted(path.name for path in tmp_path.iterdir()) == ["s.yaml"]


STRONG = {"min_rating": 3.5, "min_user_items": 5, "scheme": "users", "heldout_users": 600, "fold_in": 0.8}
"""Strong generalization as studies/ml1m-strong.yaml."""
PINNED_ML1M = {
    "writeup": ({}, Selection.parse("ndcg@5"), (59, 83),
                {"precision": 0.27856787667826954, "recall": 0.07892952593438923, "ndcg": 0.288589439777008,
                 "mrr": 0.47767279960218795}),
    "strong": (STRONG, Selection.parse("ndcg@100", "max", "recall@20,recall@50"), (100, 124),
               {"recall@20": 0.2987610285437351, "recall@50": 0.4811761989805113, "ndcg@100": 0.41785983154720413}),
}
"""RecVAE's seed-0 ML-1M runs on both protocols (README's RecVAE section; the paper's settings, batch 100, float32,
max_epochs 160, patience 24): data settings, selection (with the report metrics), (best epoch, epochs run)
and test figures. float32 runs are deterministic across CPUs, as the other models' float32 pins; measured on an
AMD EPYC with AVX512-BF16 (torch 2.13.0 CPU), the same at 1 and 2 threads."""


@pytest.mark.slow
@pytest.mark.skipif(not ml1m_path().is_file(), reason=f"ML-1M not found at {ml1m_path()} (set RAYCF_ML1M)")
@pytest.mark.parametrize("protocol", sorted(PINNED_ML1M))
def test_seed_0_runs_on_ml1m_give_the_pinned_figures(protocol: str) -> None:
    data, selection, (best_epoch, epochs_run), figures = PINNED_ML1M[protocol]
    split = prepare_split(DataSpec(ratings=str(ml1m_path()), **data), (0.6, 0.2, 0.2), seed=0)
    config = TrainConfig.for_model("recvae", seed=0, batch_size=100, max_epochs=160, patience=24,
                                   matmul_dtype="float32")
    result = train(split, config, selection=selection)
    test = summarize(evaluate_metrics(result.model, split, "test", selection.metrics, mask="train"))
    print(f"recvae {protocol}: best epoch {result.best_epoch} of {result.epochs_run}, test {test}")
    assert (result.best_epoch, result.epochs_run) == (best_epoch, epochs_run)  # stopped by patience
    for name, value in figures.items():
        assert test[name] == pytest.approx(value, abs=1e-4), name
