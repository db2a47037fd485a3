"""Every checkpoint names its split (split_sha256), and `raycf score` refuses a checkpoint of another split."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import load_checkpoint, run_raycf

from raycf.data.source import load_split
from raycf.data.split import Split
from raycf.errors import CheckpointError
from raycf.models.checkpoint import check_same_split
from raycf.models.config import TrainConfig
from raycf.train.trainer import Trainer
from raycf.tune.driver import MODEL_FILE, write_trial_checkpoint

FAST = ["--hidden", "8", "--max-epochs", "2", "--quiet"]


def train(out: Path, seed: int) -> Path:
    code = run_raycf("train", "--model", "autorec", "--dataset", "synthetic", "--seed", str(seed), *FAST,
                     "--out", str(out))
    assert code == 0
    return out


def test_score_refuses_a_checkpoint_trained_on_another_split(tmp_path: Path, capsys) -> None:
    run, other = train(tmp_path / "run", seed=0), train(tmp_path / "other", seed=1)
    mine, theirs = (load_split(path / "split").manifest["split_sha256"] for path in (run, other))
    assert mine != theirs
    assert load_split(run / "split").n_items == load_split(other / "split").n_items, "only the split hash differs"
    shutil.copyfile(other / "checkpoint.pt", run / "checkpoint.pt")
    capsys.readouterr()

    assert run_raycf("score", str(run)) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0
    assert theirs[:12] in error and mine[:12] in error
    assert str(run / "checkpoint.pt") in error and "score the run the checkpoint was trained on" in error
    assert not (run / "scores").exists()


def test_check_same_split() -> None:
    check_same_split({"split_sha256": "ab" * 32}, "ab" * 32, "run/checkpoint.pt")
    check_same_split({"epoch": 3}, "ab" * 32, "old.pt")  # written before checkpoints named their split
    with pytest.raises(CheckpointError, match=r"^x\.pt: .*split cdcdcdcdcdcd .* split is abababababab; score the run"):
        check_same_split({"split_sha256": "cd" * 32}, "ab" * 32, "x.pt")


def test_trial_checkpoint_records_the_split(small_split: Split, tmp_path: Path) -> None:
    trainer = Trainer(small_split, TrainConfig.for_model("multvae", hidden=8, max_epochs=1))
    trainer.run_epoch()
    write_trial_checkpoint(trainer, tmp_path)
    _, meta = load_checkpoint(tmp_path / MODEL_FILE)
    assert meta["split_sha256"] == small_split.manifest["split_sha256"]
