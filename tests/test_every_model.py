"""What every registered model does, whatever it is: one test class parametrized over the registry, so that
registering a model gives it every test. Per model, on the built-in synthetic data: `raycf train` writes a
checkpoint that loads as the model it trained; `raycf.load(...).recommend` gives `raycf score`'s lists; a trial
checkpoint taken after epoch 1 resumes to the uninterrupted run; a hyperparameter of another model is refused in
one line. Then Mult-DAE in a tiny study beside popularity: tuned, scored, reported and loaded."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import load_checkpoint, run_raycf

import raycf
from raycf.data.source import load_split
from raycf.data.split import Split
from raycf.errors import RaycfError
from raycf.eval.evaluation import evaluate_model, summarize
from raycf.models import SparseBatch, planned_epochs
from raycf.models.config import TrainConfig
from raycf.models.registry import MODELS, hyperparameter_names, model_class, model_names
from raycf.report.run_report import REPORT_MD
from raycf.runs.layout import CHECKPOINT_NAME, METRICS_FILE, SPLIT_DIR
from raycf.train.trainer import EpochReport, Trainer
from raycf.tune.driver import (
    LEADERBOARD_FILE,
    MODEL_FILE,
    STATE_FILE,
    TRIALS_FILE,
    restore_trial_checkpoint,
    write_trial_checkpoint,
)

K = 5
FAST = {"hidden": 8, "width": 32, "factors": 8, "iterations": 2, "neighbors": 20, "batch_size": 200}
"""Small settings for whichever of these fields a model takes (a field that is not the model's is refused)."""
MAX_EPOCHS = 2
"""Two epochs: a neural model, and iALS (two iterations), resume after the first; the closed forms fit in one."""


def fast_settings(name: str) -> dict[str, Any]:
    own = model_class(name).Params.names()
    return {field: value for field, value in FAST.items() if field in own}


def option_args(settings: dict[str, Any]) -> list[str]:
    """`raycf train` options for `settings`: --field value each."""
    return [arg for field, value in settings.items() for arg in (f"--{field.replace('_', '-')}", cli_value(value))]


def cli_value(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def foreign_field(name: str) -> tuple[str, Any]:
    """The first hyperparameter of another model that `name` does not take, with a value that model allows."""
    own = model_class(name).Params.names()
    field = next(field for field in hyperparameter_names() if field not in own)
    declared = next(model.Params.field(field) for model in MODELS.values() if field in model.Params.names())
    return field, (600,) if isinstance(declared.default, tuple) else declared.default


def scores(model: torch.nn.Module, split: Split) -> torch.Tensor:
    with torch.no_grad():
        return model.scores(SparseBatch.from_csr(split.inputs("score")))


def assert_same_state(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert list(state) == list(expected)
    for key, tensor in expected.items():
        assert torch.equal(state[key].cpu(), tensor.cpu()), key


@pytest.mark.parametrize("name", model_names(), scope="class")
class TestEveryModel:
    """Each registered model, trained once (`run`) and once more in-process (`straight`), on the same split."""

    @pytest.fixture(scope="class")
    def config(self, name: str) -> TrainConfig:
        return TrainConfig.for_model(name, **fast_settings(name), max_epochs=MAX_EPOCHS)

    @pytest.fixture(scope="class")
    def run(self, name: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
        """`raycf train` output for the model (the built-in synthetic data, seed 0)."""
        out = tmp_path_factory.mktemp(name) / "run"
        assert run_raycf("train", "--model", name, "--dataset", "synthetic", *option_args(fast_settings(name)),
                         "--max-epochs", str(MAX_EPOCHS), "--quiet", "--out", str(out)) == 0
        return out

    @pytest.fixture(scope="class")
    def split(self, run: Path) -> Split:
        return load_split(run / SPLIT_DIR)

    @pytest.fixture(scope="class")
    def straight(self, split: Split, config: TrainConfig) -> tuple[Trainer, list[EpochReport]]:
        """An uninterrupted in-process run of the same config on the run's split, and its epochs."""
        trainer = Trainer(split, config)
        reports = []
        while not trainer.finished:
            reports.append(trainer.run_epoch())
        assert trainer.epoch == planned_epochs(config) == len(reports)
        return trainer, reports

    def test_trains_and_its_checkpoint_loads_as_the_trained_model(self, name, config, run, split, straight) -> None:
        trainer, _ = straight
        metrics = json.loads((run / METRICS_FILE).read_text())
        # the config as trained: a neural model's matmul_dtype settled (auto: float32 at this small shape)
        assert getattr(trainer.config.params, "matmul_dtype", "float32") == "float32"
        assert metrics["model"] == name and TrainConfig.from_dict(metrics["config"]) == trainer.config
        assert metrics["epochs_run"] == trainer.epoch and metrics["best_epoch"] == trainer.best_epoch
        model, meta = load_checkpoint(run / CHECKPOINT_NAME, expect_model=name, expect_items=split.n_items)
        assert type(model) is model_class(name) and model.config == trainer.config and not model.training
        assert meta["split_sha256"] == metrics["split_sha256"] == split.manifest["split_sha256"]
        # the weights of the best epoch: its validation figures, and the scores of the same run in-process
        valid = summarize(evaluate_model(model, split, "valid"))
        assert valid["ndcg"] == pytest.approx(metrics["valid"]["ndcg"], abs=1e-9) and valid["ndcg"] > 0
        loaded = scores(model, split)
        assert loaded.abs().sum() > 0 and torch.isfinite(loaded).all()  # fitted or trained, not fresh zeros
        assert torch.equal(loaded, scores(trainer.best_model(), split))

    def test_recommend_gives_the_lists_of_raycf_score(self, ray_cluster, run, split, tmp_path) -> None:
        out = tmp_path / "scores"
        assert run_raycf("score", str(run), "--k", str(K), "--actors", "1", "--out", str(out)) == 0
        expected = pd.read_parquet(out / "topk").sort_values(["user_id", "rank"], ignore_index=True)
        assert expected["fallback"].dtype == bool and not expected["fallback"].any()  # every user has items
        inputs = split.inputs("score")  # what raycf score gives each user with mask "train": its train items
        rows = np.flatnonzero(np.diff(inputs.indptr))
        assert len(rows) > 0.9 * split.n_users
        histories = [split.item_ids[inputs[row].indices] for row in rows]
        recommended = raycf.load(str(run)).recommend(histories, k=K, batch_size=300)
        assert recommended.unknown_items == 0 and all(len(items) == K for items in recommended.items)
        frame = recommended.to_frame()
        frame["user_id"] = split.user_ids[rows][frame.pop("user")]
        expected = expected[expected["user_id"].isin(split.user_ids[rows])].reset_index(drop=True)
        assert len(frame) == len(expected) == K * len(rows)
        assert frame["user_id"].tolist() == expected["user_id"].tolist()
        assert frame["item_id"].tolist() == expected["item_id"].tolist()
        assert frame["rank"].tolist() == expected["rank"].tolist()
        # the same scores, up to float rounding of other batch shapes (300 users here, 1,024 in the scorer)
        assert np.allclose(frame["score"], expected["score"], rtol=1e-5, atol=1e-6)

    def test_a_user_without_a_known_item_gets_the_most_popular_items_flagged(self, run, split) -> None:
        counts = split.train.getnnz(axis=0)
        popular = np.argsort(-counts, kind="stable")  # most training users first, ties to the lower index
        history = split.item_ids[split.inputs("score")[0].indices]
        loaded = raycf.load(str(run))
        recommended = loaded.recommend({"new": [], "lost": [10**12, 10**12 + 1], "known": history}, k=K,
                                       exclude={"lost": [split.item_ids[popular[0]]], "known": history})
        assert list(recommended.fallback) == [True, True, False] and recommended.unknown_items == 2
        assert list(recommended.items[0]) == list(split.item_ids[popular[:K]])
        assert list(recommended.scores[0]) == list(counts[popular[:K]].astype(np.float32))
        assert list(recommended.items[1]) == list(split.item_ids[popular[1:K + 1]])  # its exclusion still holds
        assert not set(recommended.items[2]) & set(history)
        frame = recommended.to_frame()
        assert frame["user"].tolist() == ["new"] * K + ["lost"] * K + ["known"] * K
        assert frame["fallback"].tolist() == [True] * 2 * K + [False] * K

    def test_raycf_scores_actor_gives_a_user_without_input_the_most_popular_items(self, ray_cluster, run,
                                                                                   split) -> None:
        import pyarrow as pa
        import ray

        from raycf.eval.ranking import item_popularity
        from raycf.score.job import Scorer, explode_topk, user_table

        users = user_table(split, np.arange(3))
        emptied = pa.array([[], *users["train"].to_pylist()[1:]], type=pa.list_(pa.int32()))
        users = users.set_column(users.schema.get_field_index("train"), "train", emptied)
        popularity = item_popularity(split.train)
        scorer = Scorer([ray.put((run / CHECKPOINT_NAME).read_bytes())], split.item_ids, popularity, K, "train", 1,
                        "cpu")
        topk = explode_topk(scorer(users)).to_pandas()
        assert topk["fallback"].tolist() == [True] * K + [False] * 2 * K
        popular = np.argsort(-popularity, kind="stable")[:K]
        assert topk["item_id"][:K].tolist() == split.item_ids[popular].tolist()
        assert topk["score"][:K].tolist() == popularity[popular].tolist()

    def test_resumes_from_a_trial_checkpoint_as_if_never_stopped(self, config, split, straight, tmp_path) -> None:
        trainer, reports = straight
        first = Trainer(split, config)
        report = first.run_epoch()
        assert report.epoch == first.best_epoch == 1 and report.valid is not None
        write_trial_checkpoint(first, tmp_path)
        assert (tmp_path / MODEL_FILE).is_file() and (tmp_path / STATE_FILE).is_file()
        resumed = Trainer(split, config)
        restore_trial_checkpoint(resumed, tmp_path)
        assert (resumed.epoch, resumed.step, resumed.best_epoch) == (1, first.step, 1)
        assert resumed.best_valid == first.best_valid == reports[0].valid
        assert_same_state(resumed.model.state_dict(), first.model.state_dict())
        tail = []
        while not resumed.finished:
            tail.append(resumed.run_epoch())
        assert [(r.epoch, r.best_epoch, r.valid) for r in tail] == [(r.epoch, r.best_epoch, r.valid)
                                                                    for r in reports[1:]]
        assert np.array_equal([r.loss for r in tail], [r.loss for r in reports[1:]], equal_nan=True)
        assert resumed.finished and (resumed.epoch, resumed.step) == (trainer.epoch, trainer.step)
        assert (resumed.best_epoch, resumed.best_valid) == (trainer.best_epoch, trainer.best_valid)
        assert_same_state(resumed.model.state_dict(), trainer.model.state_dict())
        assert_same_state(resumed.best_state, trainer.best_state)
        if trainer.epoch > 1:  # the epochs after the checkpoint changed the model
            assert tail and any(not torch.equal(tensor, trainer.model.state_dict()[key])
                                for key, tensor in first.model.state_dict().items())
        # the restored run's best weights are the run's: validating them again gives its best figure
        again = summarize(evaluate_model(resumed.best_model(), split, "valid"))["ndcg"]
        assert again == pytest.approx(trainer.best_valid["ndcg"], abs=1e-12)

    def test_a_hyperparameter_of_another_model_is_refused_in_one_line(self, name, tmp_path, capsys) -> None:
        field, value = foreign_field(name)
        takes = ", ".join(model_class(name).Params.names()) or "no hyperparameters"
        message = f"config: {field} is not a hyperparameter of {name} ({name} takes {takes}); remove it"
        with pytest.raises(RaycfError, match=f"^{re.escape(message)}$"):
            TrainConfig.for_model(name, **{field: value})
        capsys.readouterr()
        out = tmp_path / "out"
        assert run_raycf("train", "--model", name, "--dataset", "synthetic", *option_args({field: value}),
                         "--quiet", "--out", str(out)) == 2
        captured = capsys.readouterr()
        assert captured.err.splitlines() == [f"raycf: error: {message}"]
        assert not out.exists() and not any(tmp_path.iterdir())


DAE_STUDY = """
name: dae
seed: 0
data:
  dataset: synthetic
  synthetic: {n_users: 300, n_items: 100}
scheduler: {type: fifo, max_t: 2}
resources: {cpus_per_trial: 1}
max_failures: 1
models:
  multdae:
    fixed: {hidden: 16, lr: 1.0e-2}
  pop: {}
"""


def test_multdae_runs_in_a_study_beside_popularity(ray_cluster, tmp_path) -> None:
    (tmp_path / "dae.yaml").write_text(DAE_STUDY)
    assert run_raycf("tune", str(tmp_path / "dae.yaml"), "--storage", str(tmp_path), "--name", "run") == 0
    run = tmp_path / "run"
    trials = pd.read_parquet(run / TRIALS_FILE)
    assert sorted(trials["model"]) == ["multdae", "pop"] and trials["error"].isna().all()
    assert dict(zip(trials["model"], trials["epochs_run"])) == {"multdae": 2, "pop": 1}
    assert sorted(pd.read_parquet(run / LEADERBOARD_FILE)["model"]) == ["multdae", "pop"]
    assert run_raycf("score", str(run), "--model", "multdae", "--actors", "1") == 0
    summary = json.loads((run / "scores" / "summary.json").read_text())
    assert summary["model"] == "multdae" and summary["k"] == K
    assert run_raycf("report", str(run)) == 0
    assert "Mult-DAE" in (run / REPORT_MD).read_text()
    loaded = raycf.load(str(run), model="multdae")
    assert loaded.model.name == "multdae"
    split = load_split(run / SPLIT_DIR)
    inputs = split.inputs("score")
    histories = [split.item_ids[inputs[row].indices] for row in range(split.n_users)]
    recommended = loaded.recommend(histories, k=K)
    assert [len(items) for items in recommended.items] == [K] * split.n_users
    topk = pd.read_parquet(run / "scores" / "topk").sort_values(["user_id", "rank"])
    scored = topk.groupby("user_id")["item_id"].apply(list)
    assert [list(items) for items in recommended.items] == [scored[user] for user in split.user_ids]
