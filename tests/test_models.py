"""Both models honour one interface; their sparse computations equal the dense formulas of the write-up."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.sparse import csr_matrix

from raycf.config import TrainConfig
from raycf.errors import CheckpointError
from raycf.models import MODELS, SparseBatch, build_model
from raycf.models.checkpoint import load_checkpoint, save_checkpoint

RNG = np.random.default_rng(0)
X = csr_matrix((RNG.random((7, 30)) < 0.2).astype(np.float32))


def test_sparse_batch_keeps_every_entry_and_row() -> None:
    batch = SparseBatch.from_csr(X)
    dense = torch.zeros(batch.size, batch.n_items)
    dense[batch.rows, batch.indices] = batch.values
    assert torch.equal(dense, torch.from_numpy(X.toarray()))


def test_l2_normalisation_gives_unit_rows() -> None:
    batch = SparseBatch.from_csr(X)
    values = batch.normalized_values("l2")
    norms = torch.zeros(batch.size).index_add_(0, batch.rows, values.square())
    assert torch.allclose(norms[torch.from_numpy(np.diff(X.indptr) > 0)], torch.ones(1))


def test_multvae_loss_and_scores_match_dense_formulas() -> None:
    config = TrainConfig.for_model("multvae", hidden=8, dropout=0.0, beta=0.3)
    model = build_model(config, X.shape[1])
    x = torch.from_numpy(X.toarray())
    x_norm = x / x.norm(dim=1, keepdim=True)
    mu, logvar = (x_norm @ model.encoder_weight + model.encoder_bias).chunk(2, dim=1)
    assert torch.allclose(model.scores(SparseBatch.from_csr(X)), model.decoder(mu), atol=1e-5)
    eps = torch.randn(mu.shape, generator=torch.Generator().manual_seed(3))
    logits = model.decoder(mu + eps * torch.exp(0.5 * logvar))
    nll = -(torch.log_softmax(logits, 1) * x).sum(1).mean()
    kl = 0.5 * (-logvar + mu**2 + logvar.exp() - 1).sum(1).mean()
    loss = model.loss(SparseBatch.from_csr(X), step=0, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(loss, nll + 0.3 * kl, atol=1e-4)


def test_multvae_beta_anneals_linearly_to_its_cap() -> None:
    model = build_model(TrainConfig.for_model("multvae", beta=0.2, anneal_steps=1000), 10)
    assert [model.beta_at(step) for step in (0, 100, 200, 5000)] == pytest.approx([0.0, 0.1, 0.2, 0.2])


def test_autorec_loss_is_squared_error_over_all_items_plus_l2() -> None:
    config = TrainConfig.for_model("autorec", hidden=5, l2=0.01)
    model = build_model(config, X.shape[1])
    x = torch.from_numpy(X.toarray())
    x_hat = torch.sigmoid(model.decoder(torch.sigmoid(x @ model.encoder_weight + model.encoder_bias)))
    expected = ((x - x_hat) ** 2).sum(1).mean() + 0.005 * (
        model.encoder_weight.square().sum() + model.decoder.weight.square().sum()
    )
    assert torch.allclose(model.loss(SparseBatch.from_csr(X), step=0), expected, atol=1e-4)
    assert torch.equal(model.scores(SparseBatch.from_csr(X)).argsort(1), x_hat.argsort(1))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_checkpoint_round_trip_gives_identical_scores(name: str, tmp_path) -> None:
    model = build_model(TrainConfig.for_model(name, hidden=6), X.shape[1]).eval()
    save_checkpoint(tmp_path / "model.pt", model, meta={"note": "x"})
    loaded, meta = load_checkpoint(tmp_path / "model.pt", expect_model=name, expect_items=X.shape[1])
    batch = SparseBatch.from_csr(X)
    assert meta == {"note": "x"}
    assert torch.equal(loaded.scores(batch), model.scores(batch))


def test_checkpoint_refuses_another_model_or_item_count(tmp_path) -> None:
    path = tmp_path / "model.pt"
    save_checkpoint(path, build_model(TrainConfig.for_model("autorec", hidden=4), 30))
    with pytest.raises(CheckpointError, match="holds a autorec model, not multvae"):
        load_checkpoint(path, expect_model="multvae")
    with pytest.raises(CheckpointError, match="trained on 30 items but this split has 31"):
        load_checkpoint(path, expect_items=31)


def test_checkpoint_refuses_truncated_and_missing_files(tmp_path) -> None:
    path = tmp_path / "model.pt"
    save_checkpoint(path, build_model(TrainConfig.for_model("multvae", hidden=4), 30))
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="not a readable raycf checkpoint"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "absent.pt")


class Exploit:
    """Unpickling this would create a file: weights_only loading must refuse it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_checkpoint_with_code_is_refused_without_running_it(tmp_path) -> None:
    marker = tmp_path / "pwned"
    torch.save({"format": 1, "payload": Exploit(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="not a readable raycf checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()
