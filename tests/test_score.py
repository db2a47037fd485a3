"""`raycf score` on a real two-node Ray: every user once, consistent metrics, clean refusals."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import TINY_STUDY, load_checkpoint, run_raycf

from raycf.data.source import load_split
from raycf.data.spec import DataSpec
from raycf.errors import RaycfError
from raycf.eval.evaluation import evaluate_model, summarize
from raycf.eval.metrics import METRICS, mean_metrics, user_metrics
from raycf.models.config import TrainConfig
from raycf.score.job import ScoreOptions, run_scoring
from raycf.study.schema import load_study
from raycf.train.trainer import run_training
from raycf.tune.driver import TuneOptions, run_study


@pytest.fixture(scope="module")
def tune_run(ray_cluster, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("score")
    (root / "tiny.yaml").write_text(TINY_STUDY)
    run_dir = run_study(load_study(root / "tiny.yaml"), TuneOptions(storage=str(root), name="run", verbose=0)).run_dir
    return Path(run_dir)


@pytest.fixture()
def train_run(tmp_path) -> Path:
    config = TrainConfig.for_model("autorec", hidden=8, max_epochs=2)
    run_training(DataSpec(synthetic={"n_users": 200, "n_items": 80}), config, fractions=(0.6, 0.2, 0.2),
                 mask="train", out=tmp_path / "train-run")
    return tmp_path / "train-run"


def outputs(out: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    topk = pd.read_parquet(out / "topk").sort_values(["user_id", "rank"], ignore_index=True)
    metrics = pd.read_parquet(out / "user_metrics").sort_values("user_id", ignore_index=True)
    return topk, metrics, json.loads((out / "summary.json").read_text())


def raw_sets(frame: pd.DataFrame) -> dict:
    return frame.groupby("user_id")["item_id"].apply(set).to_dict()


def test_every_user_once_no_known_item_and_metrics_as_in_process(ray_cluster, tune_run, tmp_path) -> None:
    out = Path(run_scoring(str(tune_run), ScoreOptions(out=str(tmp_path / "s"), batch_size=64))[0])
    topk, metrics, summary = outputs(out)
    split = load_split(tune_run / "split")
    assert metrics["user_id"].is_unique and len(metrics) == split.n_users
    assert sorted(topk["user_id"].unique()) == sorted(split.user_ids)
    assert (topk.groupby("user_id").size() == 5).all()
    assert (topk.groupby("user_id")["rank"].apply(list) == [[1, 2, 3, 4, 5]] * split.n_users).all()
    train = raw_sets(pd.read_parquet(tune_run / "split" / "train.parquet"))
    assert not any(item in train[user] for user, item in zip(topk["user_id"], topk["item_id"]))
    model, _ = load_checkpoint(tune_run / json.loads((tune_run / "best.json").read_text())["checkpoint"])
    expected = summarize(evaluate_model(model, split, "test", mask="train"))
    for name in METRICS:
        assert summary[name] == pytest.approx(expected[name], abs=1e-6)
    assert summary["users_evaluated"] == expected["users"]
    assert summary["users_scored"] == split.n_users and summary["mask"] == "train"
    assert summary["split_sha256"] == split.manifest["split_sha256"]


def test_metrics_recomputed_from_topk_and_the_test_split_alone(ray_cluster, tune_run, tmp_path) -> None:
    out = Path(run_scoring(str(tune_run), ScoreOptions(out=str(tmp_path / "s")))[0])
    topk, _, summary = outputs(out)
    test = raw_sets(pd.read_parquet(tune_run / "split" / "test.parquet"))
    users = sorted(topk["user_id"].unique())
    lists = topk.groupby("user_id")["item_id"].apply(list)
    hits = np.array([[item in test.get(user, set()) for item in lists[user]] for user in users])
    n_test = np.array([len(test.get(user, ())) for user in users])
    recomputed = mean_metrics(user_metrics(hits, n_test, 5))  # in one go, not batch by batch: the same means
    for name in METRICS:
        assert recomputed[name] == summary[name]


def test_two_nodes_share_the_work_and_give_the_one_node_output(ray_cluster, tune_run, tmp_path) -> None:
    two = Path(run_scoring(str(tune_run), ScoreOptions(out=str(tmp_path / "two"), actors=2, batch_size=32))[0])
    one = Path(run_scoring(str(tune_run), ScoreOptions(out=str(tmp_path / "one"), actors=1, batch_size=32))[0])
    (topk_two, metrics_two, summary_two), (topk_one, metrics_one, summary_one) = outputs(two), outputs(one)
    assert len(summary_two["nodes"]) == 2 and len(summary_one["nodes"]) == 1
    pd.testing.assert_frame_equal(topk_two, topk_one)
    pd.testing.assert_frame_equal(metrics_two, metrics_one)


def test_mask_train_plus_valid_and_a_user_subset(ray_cluster, tune_run, tmp_path) -> None:
    split = load_split(tune_run / "split")
    chosen = split.user_ids[[0, 5, 7]]
    users_file = tmp_path / "users.txt"
    users_file.write_text("\n".join(str(user) for user in chosen) + "\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = Path(run_scoring(str(tune_run), ScoreOptions(out=str(tmp_path / "s"), mask="train+valid",
                                                           users=str(users_file), actors=2))[0])
    assert not [w for w in caught if "concurrent actors" in str(w.message)]  # Ray Data's pool-larger-than-input
    topk, metrics, summary = outputs(out)
    assert sorted(metrics["user_id"]) == sorted(chosen) and summary["mask"] == "train+valid"
    assert summary["actors"] == 1  # three users are one block: one actor, not an idle second one
    valid = raw_sets(pd.read_parquet(tune_run / "split" / "valid.parquet"))
    assert not any(item in valid.get(user, set()) for user, item in zip(topk["user_id"], topk["item_id"]))


def test_rerun_replaces_the_old_output_and_keeps_a_file_it_did_not_write(ray_cluster, train_run, tmp_path) -> None:
    out = tmp_path / "s"
    run_scoring(str(train_run), ScoreOptions(out=str(out), actors=1))
    (out / "notes.txt").write_text("the user's own file")
    with pytest.raises(RaycfError, match=r"holds notes\.txt, which is no `raycf score` output"):
        run_scoring(str(train_run), ScoreOptions(out=str(out), actors=1, k=3))
    assert (out / "notes.txt").read_text() == "the user's own file"
    (out / "notes.txt").unlink()
    run_scoring(str(train_run), ScoreOptions(out=str(out), actors=1, k=3))
    topk, _, summary = outputs(out)
    assert summary["k"] == 3 and topk["rank"].max() == 3
    assert sorted(path.name for path in tmp_path.iterdir()) == ["s", "train-run"]  # no staging or old copies


def score_cli(args: list[str]) -> int:
    return run_raycf("score", *args)


def break_checkpoint_missing(run: Path, _: Path) -> list[str]:
    (run / "checkpoint.pt").unlink()
    return [str(run)]


def break_checkpoint_truncated(run: Path, _: Path) -> list[str]:
    path = run / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[:300])
    return [str(run)]


def break_unfinished_study(run: Path, tmp: Path) -> list[str]:
    study = tmp / "unfinished"
    study.mkdir()
    shutil.copytree(run / "split", study / "split")
    (study / "study.json").write_text("{}")
    return [str(study)]


def break_unknown_users(run: Path, tmp: Path) -> list[str]:
    (tmp / "users.txt").write_text("1\n999999\n")
    return [str(run), "--users", str(tmp / "users.txt")]


def break_unwritable_out(run: Path, tmp: Path) -> list[str]:
    (tmp / "a-file").write_text("not a directory")
    return [str(run), "--out", str(tmp / "a-file" / "scores")]


@pytest.mark.parametrize(
    ("breaker", "expected"),
    [
        (break_checkpoint_missing, "not a run directory"),
        (break_checkpoint_truncated, "not a readable raycf checkpoint"),
        (break_unfinished_study, "no finished trial"),
        (break_unknown_users, "unknown user id '999999'"),
        (break_unwritable_out, "cannot write the output"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_output(ray_cluster, train_run, tmp_path, capsys, breaker, expected):
    args = breaker(train_run, tmp_path)
    assert score_cli(args) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("raycf: error:") and "\n" not in error and expected in error
    assert not (train_run / "scores").exists()
    assert not [path for path in tmp_path.rglob("*.tmp-*")]
