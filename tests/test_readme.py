"""README's main job (its Run block: tune, score, report of the quickstart) run as written, offline."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

from conftest import run_raycf

ROOT = Path(__file__).resolve().parents[1]


def run_block_commands() -> list[list[str]]:
    """The commands of README's `## Run` bash block, split at `&&`."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"^## Run\n\n```bash\n(.+?)\n```", text, re.DOTALL | re.MULTILINE).group(1)
    return [shlex.split(command) for command in block.split("&&")]


def test_readme_main_job_runs_as_written(ray_cluster, tmp_path, monkeypatch) -> None:
    commands = run_block_commands()
    assert [command[:2] for command in commands] == [["raycf", "tune"], ["raycf", "score"], ["raycf", "report"]]
    shutil.copytree(ROOT / "studies", tmp_path / "studies")
    monkeypatch.chdir(tmp_path)
    for command in commands:
        assert run_raycf(*command[1:]) == 0, command
    run_dir = tmp_path / "runs" / "quickstart"
    summary = json.loads((run_dir / "scores" / "summary.json").read_text())
    assert summary["users_scored"] == 600 and summary["ndcg"] > 0.2
    assert (run_dir / "report.html").stat().st_size > 20_000
