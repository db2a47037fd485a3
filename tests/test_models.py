"""Both models honour one interface; their sparse computations equal the dense formulas of the write-up."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from conftest import load_checkpoint
from scipy.sparse import csr_matrix, vstack

from raycf.errors import CheckpointError, RaycfError
from raycf.models import MODELS, NeuralRecommender, SparseBatch, build_model
from raycf.models.checkpoint import save_checkpoint
from raycf.models.config import TrainConfig
from raycf.train.trainer import Trainer

RNG = np.random.default_rng(0)
X = csr_matrix((RNG.random((7, 30)) < 0.2).astype(np.float32))

NEURAL_MODELS = [name for name, model in MODELS.items() if issubclass(model, NeuralRecommender)]


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


def double_batch(matrix: csr_matrix) -> tuple[SparseBatch, torch.Tensor]:
    """The batch of `matrix` with float64 values (for gradcheck), and its dense rows."""
    batch = SparseBatch.from_csr(matrix)
    batch = dataclasses.replace(batch, values=batch.values.double() * 0.5)
    dense = torch.zeros(batch.size, batch.n_items, dtype=torch.float64)
    dense[batch.rows, batch.indices] = batch.values
    return batch, dense


def test_sparse_products_and_losses_have_the_dense_formulas_gradients() -> None:
    """The hand-written backward passes (weight gradient by item, softmax and squared-error gradients) are those of
    the dense formulas, an empty row included."""
    from raycf.models.base import multinomial_nll, sparse_linear, squared_error

    batch, x = double_batch(csr_matrix(vstack([X[:2], csr_matrix((1, X.shape[1])), X[3:]])))  # row 2 empty
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(X.shape[1], 4, dtype=torch.float64, generator=generator, requires_grad=True)
    bias = torch.randn(4, dtype=torch.float64, generator=generator)
    logits = torch.randn(X.shape, dtype=torch.float64, generator=generator, requires_grad=True)
    values = batch.values * 1.5  # inputs other than the targets
    checks = [
        (lambda w: sparse_linear(batch, values, w, bias), lambda w: 1.5 * x @ w + bias, weight),
        (lambda z: multinomial_nll(z, batch), lambda z: -(torch.log_softmax(z, 1) * x).sum(1).mean(), logits),
        (lambda z: squared_error(torch.sigmoid(z), batch), lambda z: ((x - torch.sigmoid(z)) ** 2).sum(1).mean(),
         logits),
    ]
    for sparse, reference, tensor in checks:
        assert torch.autograd.gradcheck(sparse, (tensor,))
        assert torch.allclose(sparse(tensor), reference(tensor))
        upstream = torch.randn_like(sparse(tensor))
        assert torch.allclose(torch.autograd.grad(sparse(tensor), tensor, upstream)[0],
                              torch.autograd.grad(reference(tensor), tensor, upstream)[0])
    with pytest.raises(ValueError, match="values must not require a gradient"):
        sparse_linear(batch, values.clone().requires_grad_(), weight, bias)


def test_multvae_sample_and_kl_have_the_formulas_gradients() -> None:
    """The reparameterised sample and the KL term, computed and differentiated by hand, are the formulas'."""
    from raycf.models.multvae import _GaussianSample

    generator = torch.Generator().manual_seed(0)
    mu, logvar, noise = (torch.randn(5, 3, dtype=torch.float64, generator=generator) for _ in range(3))
    mu.requires_grad_()
    logvar.requires_grad_()
    std = torch.exp(0.5 * logvar)
    reference = (mu + noise * std, 0.5 * (-logvar + mu**2 + logvar.exp() - 1).sum())
    assert all(torch.allclose(a, b) for a, b in zip(_GaussianSample.apply(mu, logvar, noise), reference))
    assert torch.autograd.gradcheck(lambda m, v: _GaussianSample.apply(m, v, noise), (mu, logvar))


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


# --- wider search spaces (issue 12): layers, weight_decay, AutoRec activations; defaults unchanged ---

PINNED_NDCG = {"multvae": 0.20001994464996986, "autorec": 0.19778726270351735}
"""Seed-0 validation NDCG@5 after 5 epochs with each model's default settings on the synthetic split below,
recorded on the code before layers, weight_decay and the activations existed (torch 2.13.0 CPU)."""
PINNED_LAST_LOSS = {"multvae": 106.18297386169434, "autorec": 17.549729347229004}


@pytest.fixture(scope="module")
def pinned_split():
    from raycf.data.schemes.records import split_interactions
    from raycf.data.synthetic import generate_synthetic

    frame = generate_synthetic(n_users=400, n_items=150, mean_interactions=30, min_interactions=20, seed=0)
    return split_interactions(frame, seed=0, source="synthetic-test")


def trained(split, model: str, **overrides):
    from raycf.train.trainer import train

    return train(split, TrainConfig.for_model(model, max_epochs=5, **overrides))


@pytest.mark.parametrize("model", ["multvae", "autorec"])
def test_default_settings_train_as_before_the_new_options(model: str, pinned_split) -> None:
    result = trained(pinned_split, model)
    assert result.best_valid["ndcg"] == pytest.approx(PINNED_NDCG[model], abs=1e-6)
    assert result.history[-1].loss == pytest.approx(PINNED_LAST_LOSS[model], rel=1e-6)
    # the same parameters as before: older checkpoints keep loading
    assert sorted(result.model.state_dict()) == ["decoder.bias", "decoder.weight", "encoder_bias", "encoder_weight"]


@pytest.mark.parametrize(("model", "overrides"), [
    ("multvae", {"layers": [32]}),
    ("multvae", {"weight_decay": 1e-2}),
    ("autorec", {"weight_decay": 1e-2}),
    ("autorec", {"hidden_activation": "relu"}),
    ("autorec", {"output_activation": "identity"}),
    ("autorec", {"dropout": 0.3}),
], ids=lambda value: value if isinstance(value, str) else "-".join(map(str, value.items())))
def test_each_new_option_changes_training(model: str, overrides: dict, pinned_split) -> None:
    result = trained(pinned_split, model, **overrides)
    assert np.isfinite([report.loss for report in result.history]).all()
    assert result.history[-1].loss != pytest.approx(PINNED_LAST_LOSS[model], rel=1e-6)
    assert result.best_valid["ndcg"] > 0.1


def test_multvae_layers_add_tanh_layers_mirrored_in_the_decoder() -> None:
    n_items, plain = X.shape[1], build_model(TrainConfig.for_model("multvae", hidden=8), X.shape[1])
    model = build_model(TrainConfig.for_model("multvae", hidden=8, layers=[16, 12]), n_items)
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters() if name.endswith("weight")}
    assert shapes == {
        "encoder_weight": (n_items, 16), "encoder_layers.0.weight": (12, 16), "encoder_layers.1.weight": (16, 12),
        "decoder_layers.0.weight": (12, 8), "decoder_layers.1.weight": (16, 12), "decoder.weight": (n_items, 16),
    }
    count = sum(p.numel() for p in model.parameters())
    assert count == (n_items * 16 + 16) + (16 * 12 + 12) + (12 * 16 + 16) + (8 * 12 + 12) + (12 * 16 + 16) + (
        16 * n_items + n_items)
    assert sum(p.numel() for p in plain.parameters()) == n_items * 16 + 16 + 8 * n_items + n_items
    x = torch.from_numpy(X.toarray())
    h = torch.tanh(x / x.norm(dim=1, keepdim=True) @ model.encoder_weight + model.encoder_bias)
    mu, _ = model.encoder_layers[1](torch.tanh(model.encoder_layers[0](h))).chunk(2, dim=1)
    expected = model.decoder(torch.tanh(model.decoder_layers[1](torch.tanh(model.decoder_layers[0](mu)))))
    assert torch.allclose(model.scores(SparseBatch.from_csr(X)), expected, atol=1e-5)


def test_autorec_activations_are_applied() -> None:
    batch, x = SparseBatch.from_csr(X), torch.from_numpy(X.toarray())
    outputs = {}
    for output in ("identity", "sigmoid", "relu"):
        torch.manual_seed(0)
        model = build_model(TrainConfig.for_model("autorec", hidden=5, output_activation=output), X.shape[1])
        outputs[output] = model.reconstruct(batch)
        logits = model.decoder(torch.sigmoid(x @ model.encoder_weight + model.encoder_bias))
        assert torch.equal(model.scores(batch).argsort(1), logits.argsort(1))  # scores rank as before
    assert outputs["identity"].min() < 0  # scores outside [0, 1]: no sigmoid applied
    assert 0 < outputs["sigmoid"].min() and outputs["sigmoid"].max() < 1
    assert outputs["relu"].min() == 0 and torch.equal(outputs["relu"], outputs["identity"].clamp_min(0))
    assert torch.allclose(outputs["sigmoid"], torch.sigmoid(outputs["identity"]))
    for hidden, function in (("identity", lambda t: t), ("relu", torch.relu), ("elu", torch.nn.functional.elu),
                             ("selu", torch.nn.functional.selu)):
        model = build_model(TrainConfig.for_model("autorec", hidden=5, hidden_activation=hidden), X.shape[1])
        expected = torch.sigmoid(model.decoder(function(x @ model.encoder_weight + model.encoder_bias)))
        assert torch.allclose(model.reconstruct(batch), expected, atol=1e-5)


@pytest.mark.parametrize("name", NEURAL_MODELS)
def test_weight_decay_is_adams(name: str, small_split) -> None:
    """weight_decay is Adam's own (decoupled from the loss): the loss is unchanged, the optimizer carries it, on
    every parameter (and l2 more on the penalized weights)."""
    config = TrainConfig.for_model(name, hidden=6, weight_decay=0.05)
    trainer = Trainer(small_split, config)
    decays = {id(p): group["weight_decay"] for group in trainer.optimizer.param_groups for p in group["params"]}
    penalized = {id(weight) for weight in trainer.model.penalized()}
    assert [decays[id(p)] for p in trainer.model.parameters()] == [
        0.05 + config.params.l2 if id(p) in penalized else 0.05 for p in trainer.model.parameters()]
    plain = build_model(TrainConfig.for_model(name, hidden=6), small_split.n_items)
    plain.load_state_dict(trainer.model.state_dict())
    batch = SparseBatch.from_csr(small_split.train[:20])
    losses = [model.loss(batch, 0, torch.Generator().manual_seed(1)).item() for model in (trainer.model, plain)]
    assert losses[0] == losses[1]


def test_the_l2_penalty_gradient_is_in_adams_step(small_split) -> None:
    """The l2 penalty is in the loss's value; its gradient lambda * W reaches the penalized weights through Adam's
    weight decay: a step equals Adam on the loss with the penalty differentiated by autograd."""
    config = TrainConfig.for_model("autorec", hidden=6, l2=0.05, lr=0.01)
    trainer = Trainer(small_split, config)
    reference = build_model(config, small_split.n_items)
    reference.load_state_dict(trainer.model.state_dict())
    reference_optimizer = torch.optim.Adam(reference.parameters(), lr=config.params.lr)
    batch = SparseBatch.from_csr(small_split.train[:20])
    penalty = 0.5 * config.params.l2 * sum(weight.square().sum() for weight in reference.penalized())
    assert reference.l2_penalty() == pytest.approx(penalty.item(), rel=1e-6)
    gradient_only = penalty - penalty.detach()  # the reference: the penalty's gradient by autograd
    for loss, optimizer in ((trainer.model.loss(batch, 0), trainer.optimizer),
                            (reference.loss(batch, 0) + gradient_only, reference_optimizer)):
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for trained, expected in zip(trainer.model.parameters(), reference.parameters()):
        assert torch.allclose(trained, expected, atol=1e-6)


def one_line_error(values: dict, match: str) -> None:
    with pytest.raises(RaycfError, match=match) as caught:
        TrainConfig.from_dict(values, where="trial")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(("values", "match"), [
    ({"layers": [600, -1]}, r"trial: layers must be a list of ints >= 1, e\.g\. \[600\] or \[\], got \[600, -1\]"),
    ({"layers": [0]}, r"trial: layers must be a list of ints >= 1"),
    ({"layers": 600}, r"trial: field 'layers' must be a list of ints like \[600\] \(\[\] for none\), got 600"),
    ({"layers": [600.0]}, r"trial: field 'layers' must be a list of ints"),
    ({"layers": [True]}, r"trial: field 'layers' must be a list of ints"),
    ({"layers": "600,x"}, r"trial: field 'layers' must be comma-separated ints like 600,200"),
    ({"model": "autorec", "layers": [600]}, r"trial: layers is not a hyperparameter of autorec \(autorec takes hidden, "
                                            r"hidden_activation, .*\); remove it"),
    ({"hidden": -3}, r"trial: hidden must be >= 1, got -3"),
    ({"weight_decay": -0.1}, r"trial: weight_decay must be >= 0, got -0\.1"),
    ({"weight_decay": "0.1"}, r"trial: field 'weight_decay' must be float, got '0\.1'"),
    ({"model": "autorec", "hidden_activation": "tanh"},
     r"trial: hidden_activation must be one of identity, sigmoid, relu, elu, selu, got 'tanh'"),
    ({"model": "autorec", "output_activation": "softmax"}, r"trial: output_activation must be one of identity"),
    ({"hidden_activation": "relu"}, r"trial: hidden_activation is not a hyperparameter of multvae"),
    ({"output_activation": "identity"}, r"trial: output_activation is not a hyperparameter of multvae"),
    ({"latent": 200}, r"trial: unknown field\(s\) latent; known: model, hidden, layers"),
])
def test_configs_that_cannot_be_built_are_refused_naming_the_field(values: dict, match: str) -> None:
    one_line_error(values, match)


def test_layers_round_trip_through_dicts_and_their_flat_form() -> None:
    config = TrainConfig.for_model("multvae", layers=[600, 200], weight_decay=1e-5)
    assert config.params.layers == (600, 200) and hash(config)
    assert config.to_dict()["layers"] == [600, 200] and config.to_dict(flat=True)["layers"] == "600,200"
    assert TrainConfig.from_dict(config.to_dict()) == TrainConfig.from_dict(config.to_dict(flat=True)) == config
    assert TrainConfig.for_model("multvae", layers="").params.layers == ()
    assert TrainConfig.for_model("multvae").params.layers == ()
    assert TrainConfig.for_model("multvae", layers=[600]).params.layers == (600,)


def test_checkpoints_keep_new_settings_and_older_ones_load_with_defaults(tmp_path) -> None:
    batch = SparseBatch.from_csr(X)
    for config in (TrainConfig.for_model("multvae", hidden=6, layers=[10]),
                   TrainConfig.for_model("autorec", hidden=6, hidden_activation="elu", output_activation="identity")):
        model = build_model(config, X.shape[1]).eval()
        save_checkpoint(tmp_path / "model.pt", model)
        loaded, _ = load_checkpoint(tmp_path / "model.pt")
        assert loaded.config == config and torch.equal(loaded.scores(batch), model.scores(batch))
    # a checkpoint written before these fields existed: its config lacks them; one written before the model
    # registry (up to raycf 0.1.0's first releases): its config holds every model's hyperparameters
    every_field = {"hidden": 6, "layers": [], "dropout": 0.5, "beta": 0.2, "anneal_steps": 0, "l2": 0.0,
                   "weight_decay": 0.0, "hidden_activation": "sigmoid", "output_activation": "sigmoid",
                   "normalize": "l2", "matmul_dtype": "float32", "lr": 1e-3, "batch_size": 100, "neighbors": 100,
                   "shrink": 10.0, "factors": 64, "alpha": 1.0, "iterations": 15}
    for name in NEURAL_MODELS:
        config = TrainConfig.for_model(name, hidden=6)
        model = build_model(config, X.shape[1]).eval()
        save_checkpoint(tmp_path / "old.pt", model)
        payload = torch.load(tmp_path / "old.pt", weights_only=True)
        for key in ("layers", "weight_decay", "hidden_activation", "output_activation"):
            payload["config"].pop(key, None)
        torch.save(payload, tmp_path / "old.pt")
        loaded, _ = load_checkpoint(tmp_path / "old.pt", expect_model=name)
        assert loaded.config == config and torch.equal(loaded.scores(batch), model.scores(batch))
        payload["config"] = {**every_field, **config.to_dict()}
        torch.save(payload, tmp_path / "old.pt")
        assert load_checkpoint(tmp_path / "old.pt", expect_model=name)[0].config == config


def test_train_command_options_reach_the_checkpoint(tmp_path, capsys) -> None:
    from conftest import run_raycf

    fast = ["--dataset", "synthetic", "--hidden", "8", "--max-epochs", "2", "--quiet"]
    assert run_raycf("train", "--model", "multvae", *fast, "--layers", "24,12", "--weight-decay", "1e-4",
                     "--out", str(tmp_path / "m")) == 0
    assert run_raycf("train", "--model", "autorec", *fast, "--hidden-activation", "relu", "--output-activation",
                     "identity", "--out", str(tmp_path / "a")) == 0
    multvae, _ = load_checkpoint(tmp_path / "m" / "checkpoint.pt")
    autorec, _ = load_checkpoint(tmp_path / "a" / "checkpoint.pt")
    assert (multvae.config.params.layers, multvae.config.params.weight_decay) == ((24, 12), 1e-4)
    assert multvae.decoder.weight.shape[1] == 24 and len(multvae.decoder_layers) == 2
    assert (autorec.config.params.hidden_activation, autorec.config.params.output_activation) == ("relu", "identity")
    capsys.readouterr()
    assert run_raycf("train", "--model", "autorec", *fast, "--layers", "600", "--out", str(tmp_path / "x")) == 2
    assert capsys.readouterr().err.strip() == (
        "raycf: error: config: layers is not a hyperparameter of autorec (autorec takes hidden, hidden_activation, "
        "output_activation, dropout, normalize, l2, weight_decay, matmul_dtype, lr, batch_size); remove it")
    assert run_raycf("train", "--model", "multvae", *fast, "--layers", "6x", "--out", str(tmp_path / "x")) == 2
    assert "field 'layers' must be comma-separated ints like 600,200" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
