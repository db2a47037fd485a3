"""The console agrees with raycf: `raycf tune` says what it does within 2 s, names the run directory (and the
TensorBoard command) before the first trial, and its progress table ranks each trial by its best value of the
study's metric as the leaderboard does, with raycf's own trial counts. Ray's internal log lines show only with
`--verbose` (with Tune's per-trial results); `raycf score` shows one progress line."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import TINY_STUDY

from raycf.cli.launch import first_line
from raycf.runs.layout import TRIALS_FILE

ROOT = Path(__file__).resolve().parents[1]
RAY_LOG_LINE = re.compile(r"\b(INFO|WARNING|DEBUG)\b")
"""How Ray's Python log lines look: `2026-11-30 05:26:24,595	INFO streaming_executor.py:215 -- ...`."""
FIRST_LINE_S = 2.0
STATUS = re.compile(r"^== .+: (\d+) trials: (\d+) running, (\d+) pending, (\d+) ended.*, (\d+) errored ==$")


@pytest.mark.parametrize(("args", "expected"), [
    (["tune", "study.yaml"], "raycf tune: running a study"),
    (["score", "runs/q1", "--actors", "1"], "raycf score: scoring a run's users"),
    (["train", "--model", "ease"], "raycf train: training one model"),
    (["serve", "runs/q1"], "raycf serve: serving a run's model"),
    (["tune", "--help"], None), (["--version"], None), (["nonsense"], None), ([], None),
])
def test_the_first_line_says_what_the_command_does_and_stays_out_of_help(args: list[str],
                                                                          expected: str | None) -> None:
    line = first_line(args)
    assert line == expected if expected is None else line.startswith(expected), line


def test_every_command_has_its_first_line() -> None:
    from raycf.cli.launch import DOING
    from raycf.cli.main import cli

    assert set(DOING) == set(cli.commands)


def raycf(*args: str) -> tuple[str, float]:
    """stdout and stderr of a raycf command run as a user would, on a local Ray of its own, and the seconds
    until its first line."""
    env = {key: value for key, value in os.environ.items() if key not in ("RAY_ADDRESS", "RAY_AIR_NEW_OUTPUT")}
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "raycf", *args], cwd=ROOT, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    first = process.stdout.readline()
    first_after = time.monotonic() - started
    rest, _ = process.communicate(timeout=600)
    assert process.returncode == 0, (first + rest)[-3000:]
    return first + rest, first_after


def last_table(output: str, label: str) -> tuple[str, pd.DataFrame]:
    """The last progress table's `current best` line and rows (trial, best value)."""
    lines = output.splitlines()
    start = max(index for index, line in enumerate(lines) if STATUS.match(line))
    header = next(index for index in range(start, len(lines)) if lines[index].split()[:1] == ["trial"])
    best = next(line for line in lines[start:header] if line.startswith("current best: "))
    rows = []
    for line in lines[header + 1:]:
        if not line.strip():
            break
        rows.append((line.split()[0], float(re.findall(r"\d\.\d{4}", line)[-2])))  # best, then latest
    return best, pd.DataFrame(rows, columns=["trial_id", f"{label} best"])


def test_tune_speaks_first_agrees_with_the_leaderboard_and_is_quiet_unless_verbose(tmp_path: Path) -> None:
    study = tmp_path / "tiny.yaml"
    study.write_text(TINY_STUDY)
    quiet, first_after = raycf("tune", str(study), "--storage", str(tmp_path), "--name", "quiet")
    lines = quiet.splitlines()
    assert first_after < FIRST_LINE_S and lines[0].startswith("raycf tune: running a study"), (first_after, lines[0])
    assert "Ray dashboard:" in quiet and "Result logdir" not in quiet
    first_table = next(index for index, line in enumerate(lines) if STATUS.match(line))
    assert f"run directory: {tmp_path / 'quiet'}" in lines[:first_table], lines[:first_table]
    counts = [tuple(map(int, STATUS.match(line).groups())) for line in lines if STATUS.match(line)]
    assert all(total == 6 and running + pending + ended + errored == 6
               for total, running, pending, ended, errored in counts), counts
    assert counts[-1][3] == 6  # the last table: every trial ended

    best_line, table = last_table(quiet, "ndcg@5")
    trials = pd.read_parquet(tmp_path / "quiet" / TRIALS_FILE)
    leader = json.loads((tmp_path / "quiet" / "best.json").read_text())
    assert best_line.startswith(f"current best: trial {leader['trial_id']} ({leader['model']}), ndcg@5 "
                                f"{leader['valid']['ndcg']:.4f}"), best_line
    assert list(table["trial_id"]) == list(trials.sort_values(["valid_ndcg", "trial_id"], ascending=[False, True])
                                           ["trial_id"])  # ranked by the best value, as the leaderboard
    expected = trials.set_index("trial_id")["valid_ndcg"].round(4)
    assert table.set_index("trial_id")["ndcg@5 best"].to_dict() == expected.to_dict()
    assert not RAY_LOG_LINE.findall(quiet), [line for line in lines if RAY_LOG_LINE.search(line)]

    tracked = tmp_path / "tracked.yaml"
    tracked.write_text(TINY_STUDY + "tracking: {tensorboard: true}\n")
    verbose, _ = raycf("tune", str(tracked), "--storage", str(tmp_path), "--name", "verbose", "--verbose")
    assert f"tensorboard: tensorboard --logdir {tmp_path / 'verbose'}" in verbose.splitlines()
    assert "Result for run_trial_" in verbose and RAY_LOG_LINE.search(verbose)  # Tune's per-trial results
    assert len(lines) < len(verbose.splitlines()) / 2, (len(lines), len(verbose.splitlines()))
    scored = raycf("score", str(tmp_path / "quiet"))[0].splitlines()
    assert scored[0].startswith("raycf score: scoring") and "scored 300 of 300 users" in scored
    assert any(line.startswith("scores: ") for line in scored)
    # one line of Ray's C++ core worker stays (ray-project/ray#53727, about Ray Data's actor arguments)
    assert not [line for line in scored if RAY_LOG_LINE.search(line)], scored
