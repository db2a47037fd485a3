"""Untrusted files never run code: study YAML is loaded safely, trial state is unpickled weights-only.

(A checkpoint carrying code is a case of tests/test_bad_input.py.)
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
import yaml
from conftest import run_raycf, write_code_pickle

from raycf.data.split import Split
from raycf.models.config import TrainConfig
from raycf.train.trainer import Trainer
from raycf.tune.driver import STATE_FILE, restore_trial_checkpoint, write_trial_checkpoint


def code_study(marker: Path) -> str:
    """A study whose `models` is a YAML tag that, loaded unsafely, runs a shell command creating `marker`."""
    return f"name: s\ndata: {{dataset: synthetic}}\nmodels: !!python/object/apply:os.system ['touch {marker}']\n"


def test_the_payloads_run_code_when_loaded_unsafely(tmp_path: Path) -> None:
    """The control for the tests below: their files do carry code."""
    yaml.unsafe_load(code_study(tmp_path / "from-yaml"))
    write_code_pickle(tmp_path / "state.pt", tmp_path / "from-pickle")
    torch.load(tmp_path / "state.pt", weights_only=False)
    assert (tmp_path / "from-yaml").exists() and (tmp_path / "from-pickle").exists()


def test_study_with_a_python_tag_is_refused_in_one_line_and_runs_nothing(tmp_path: Path, capsys) -> None:
    marker = tmp_path / "code-ran"
    (tmp_path / "s.yaml").write_text(code_study(marker))
    assert run_raycf("tune", str(tmp_path / "s.yaml"), "--storage", str(tmp_path / "runs")) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert error.startswith(f"raycf: error: {tmp_path / 's.yaml'}: line 3: YAML tag !!python/object/apply:os.system")
    assert "remove the tag" in error
    assert not marker.exists() and not (tmp_path / "runs").exists()


def test_trial_state_with_code_is_refused_without_running_it(small_split: Split, tmp_path: Path) -> None:
    config = TrainConfig.for_model("autorec", hidden=8, max_epochs=2)
    trained = Trainer(small_split, config)
    trained.run_epoch()
    write_trial_checkpoint(trained, tmp_path)
    restore_trial_checkpoint(Trainer(small_split, config), tmp_path)  # the genuine files load
    marker = tmp_path / "code-ran"
    write_code_pickle(tmp_path / STATE_FILE, marker)
    with pytest.raises(pickle.UnpicklingError, match="posix.system"):
        restore_trial_checkpoint(Trainer(small_split, config), tmp_path)
    assert not marker.exists()
