"""`raycf train` end to end on synthetic data, and its one-line refusals of bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import load_checkpoint, run_raycf

from raycf.data.source import load_split
from raycf.eval.evaluation import evaluate_model, summarize

FAST = ["--hidden", "16", "--max-epochs", "4", "--quiet"]


def train(out: Path, *extra: str) -> int:
    return run_raycf("train", "--model", "multvae", "--dataset", "synthetic", *FAST, *extra, "--out", str(out))


def test_train_writes_split_checkpoint_and_metrics_that_agree(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert train(out) == 0
    assert "valid" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["mask"] == "train" and metrics["k"] == 5 and metrics["epochs_run"] == 4
    assert set(metrics["test"]) >= {"precision", "recall", "ndcg", "mrr"}
    split = load_split(out / "split")
    model, meta = load_checkpoint(out / "checkpoint.pt", expect_model="multvae", expect_items=split.n_items)
    assert meta["split_sha256"] == metrics["split_sha256"] == split.manifest["split_sha256"]
    assert summarize(evaluate_model(model, split, "valid"))["ndcg"] == pytest.approx(metrics["valid"]["ndcg"])
    assert summarize(evaluate_model(model, split, "test"))["ndcg"] == pytest.approx(metrics["test"]["ndcg"])
    history = metrics["history"]  # every epoch documents its own speed, loss and validation metrics
    assert [entry["epoch"] for entry in history] == [1, 2, 3, 4]
    assert all(entry["train_seconds"] > 0 and entry["valid_seconds"] > 0 and entry["loss"] > 0 for entry in history)
    assert history[metrics["best_epoch"] - 1]["valid"] == {key: value for key, value in metrics["valid"].items()
                                                          if not key.endswith("_se")}


def test_same_command_twice_gives_the_same_split_and_metrics(tmp_path: Path) -> None:
    assert train(tmp_path / "a") == 0 and train(tmp_path / "b") == 0
    for name in ("train.parquet", "valid.parquet", "test.parquet", "manifest.json"):
        assert (tmp_path / "a" / "split" / name).read_bytes() == (tmp_path / "b" / "split" / name).read_bytes()
    first, second = (json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("a", "b"))
    assert first["test"] == second["test"]


def test_mask_train_plus_valid_is_recorded_and_raises_test_metrics(tmp_path: Path) -> None:
    assert train(tmp_path / "t") == 0 and train(tmp_path / "tv", "--mask", "train+valid") == 0
    plain, masked = (json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("t", "tv"))
    assert masked["mask"] == "train+valid"
    assert masked["test"]["ndcg"] > plain["test"]["ndcg"]


def test_existing_output_is_refused_and_kept(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert train(out) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and str(out) in error and "--out" in error
    assert [path.name for path in out.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize(
    ("content", "args", "expected"),
    [
        (None, [], "no such file"),
        ("1::2::5::978300760\n1::3::4\n", [], "line 2"),
        ("1::2::5::978300760\nx::3::4::978300760\n", [], "line 2"),
        ("", [], "empty"),
        ("1::2::5::1\n2::3::4::1\n", ["--split", "0.5,0.5,0.5"], "split"),
        ("1::2::5::1\n2::3::4::1\n", ["--split", "0.6,0.4"], "--split"),
        ("1::2::5::1\n", ["--dataset", "ml-1m"], "--dataset and --ratings"),
        ("1::2::5::1\n", ["--no-such-option"], "no-such-option"),
    ],
)
def test_bad_input_gets_one_line_and_exit_2(tmp_path: Path, capsys, content, args, expected) -> None:
    ratings = tmp_path / "ratings.dat"
    if content is not None:
        ratings.write_text(content)
    code = run_raycf("train", "--model", "autorec", "--ratings", str(ratings), *args, "--out", str(tmp_path / "o"))
    error = capsys.readouterr().err.strip()
    assert code == 2
    assert error.startswith("raycf: error:") and "\n" not in error and expected in error
    assert not (tmp_path / "o").exists()


def test_real_process_prints_no_traceback(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "raycf", "train", "--model", "multvae", "--ratings", str(tmp_path / "none.csv"),
         "--out", str(tmp_path / "o")],
        capture_output=True, text=True, check=False,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
