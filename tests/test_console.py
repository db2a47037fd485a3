"""A quiet console: `raycf tune` and `raycf score` show Tune's progress table, raycf's own lines and one scoring
progress line, not Ray's internal log lines; `--verbose` brings those (and Tune's per-trial tables) back."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import TINY_STUDY

ROOT = Path(__file__).resolve().parents[1]
RAY_LOG_LINE = re.compile(r"\b(INFO|WARNING|DEBUG)\b")
"""How Ray's Python log lines look: `2026-11-30 05:26:24,595	INFO streaming_executor.py:215 -- ...`."""


def raycf(*args: str) -> str:
    """stdout and stderr of a raycf command run as a user would, on a local Ray of its own."""
    env = {key: value for key, value in os.environ.items() if key not in ("RAY_ADDRESS", "RAY_AIR_NEW_OUTPUT")}
    done = subprocess.run([sys.executable, "-m", "raycf", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


def test_tune_and_score_are_quiet_unless_verbose(tmp_path: Path) -> None:
    study = tmp_path / "tiny.yaml"
    study.write_text(TINY_STUDY)
    quiet = raycf("tune", str(study), "--storage", str(tmp_path), "--name", "quiet")
    assert "== Status ==" in quiet and "| Trial name" in quiet  # Tune's progress table, with the study's columns
    assert re.search(r"\|\s+model\s+\|\s+epoch\s+\|\s+ndcg@5\s+\|\s+best epoch\s+\|", quiet), quiet[-2000:]
    assert "run directory:" in quiet and "Ray dashboard:" in quiet
    assert "started with configuration" not in quiet  # Tune's per-trial tables
    assert not RAY_LOG_LINE.findall(quiet), [line for line in quiet.splitlines() if RAY_LOG_LINE.search(line)]
    verbose = raycf("tune", str(study), "--storage", str(tmp_path), "--name", "verbose", "--verbose")
    assert "started with configuration" in verbose and RAY_LOG_LINE.search(verbose)
    assert len(quiet.splitlines()) < len(verbose.splitlines()) / 2, (len(quiet.splitlines()), len(verbose.splitlines()))
    lines = raycf("score", str(tmp_path / "quiet")).splitlines()
    assert "scored 300 of 300 users" in lines and any(line.startswith("scores: ") for line in lines)
    # one line of Ray's C++ core worker stays (ray-project/ray#53727, about Ray Data's actor arguments)
    assert not [line for line in lines if RAY_LOG_LINE.search(line)], lines
