"""`raycf report` on a real tune + score run: every section, valid figures, numbers equal to the files."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pandas as pd
import pytest
from conftest import TINY_STUDY, run_raycf

from raycf.eval.metrics import METRICS
from raycf.report.run_report import (
    CURVES_PNG,
    HYPERPARAMETERS_PNG,
    REPORT_HTML,
    REPORT_MD,
    write_report,
)

SECTIONS = ("## Run", "## Leaderboard", "## Learning curves", "## Hyperparameters", "## Test metrics",
            "## Seed repeats")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run_dir(ray_cluster, tmp_path_factory) -> Path:
    """A tiny study, tuned and scored through the command line, then reported."""
    root = tmp_path_factory.mktemp("report")
    study = root / "tiny.yaml"
    study.write_text(TINY_STUDY)
    assert run_raycf("tune", str(study), "--storage", str(root), "--name", "run", "--repeat-seeds", "0,1") == 0
    assert run_raycf("score", str(root / "run"), "--actors", "1") == 0
    assert run_raycf("report", str(root / "run")) == 0
    return root / "run"


def section(markdown: str, heading: str) -> str:
    """The text under `heading` up to the next `## ` heading."""
    return markdown.split(f"{heading}\n", 1)[1].split("\n## ", 1)[0]


def table_rows(text: str) -> list[list[str]]:
    """Cells of a markdown table's body rows (header and separator left out)."""
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in text.splitlines() if line.startswith("|")]
    return rows[2:]


def test_every_section_is_there(run_dir) -> None:
    markdown = (run_dir / REPORT_MD).read_text()
    for heading in SECTIONS:
        assert f"\n{heading}\n" in markdown
    assert "estimate" in section(markdown, "## Run")


@pytest.mark.parametrize("name", [CURVES_PNG, HYPERPARAMETERS_PNG])
def test_figures_are_real_pngs(run_dir, name) -> None:
    path = run_dir / name
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    assert path.stat().st_size > 10_000
    height, width = matplotlib.image.imread(path).shape[:2]
    assert width > 200 and height > 200


def test_leaderboard_numbers_equal_the_parquet(run_dir) -> None:
    rows = table_rows(section((run_dir / REPORT_MD).read_text(), "## Leaderboard"))
    leaderboard = pd.read_parquet(run_dir / "leaderboard.parquet")
    assert [row[:2] for row in rows] == leaderboard[["model", "trial_id"]].values.tolist()
    for row, (_, best) in zip(rows, leaderboard.iterrows()):
        assert int(row[2]) == best["best_epoch"]
        assert row[3] == f"{best['valid_ndcg']:.4f} ± {best['valid_se']:.4f}"  # the study's metric and its SE
        assert [float(cell) for cell in row[4:8]] == [round(best[f"valid_{name}"], 4) for name in METRICS]
        assert row[-1] == best["matmul_dtype"] == "float32"  # the output layer's precision (auto, unmeasured here)


def test_trial_table_lists_every_trial(run_dir) -> None:
    rows = table_rows(section((run_dir / REPORT_MD).read_text(), "## Hyperparameters"))
    trials = pd.read_parquet(run_dir / "trials.parquet").set_index("trial_id")
    assert sorted(row[1] for row in rows) == sorted(trials.index)
    for row in rows:
        assert row[2] == trials.loc[row[1], "stopped_by"]
        trial = trials.loc[row[1]]
        assert row[5] == f"{trial['valid_ndcg']:.4f} ± {trial['valid_se']:.4f}"


def test_test_metrics_equal_the_summary(run_dir) -> None:
    text = section((run_dir / REPORT_MD).read_text(), "## Test metrics")
    summary = json.loads((run_dir / "scores" / "summary.json").read_text())
    ours, reference = table_rows(text)
    assert [float(cell) for cell in ours[4:8]] == [round(summary[name], 4) for name in METRICS]
    assert reference[0].startswith("write-up") and reference[1] == ours[1]
    assert "train-only masking" in text and f"{summary['users_evaluated']:,}" in text


def test_html_is_self_contained(run_dir) -> None:
    page = (run_dir / REPORT_HTML).read_text()
    assert page.count("data:image/png;base64,") == 2
    assert not re.findall(r'(?:src|href)="(?!data:)', page)
    assert "<table>" in page and "<h2>Test metrics</h2>" in page


def test_without_scores_it_says_to_score_first(run_dir) -> None:
    write_report(str(run_dir), str(run_dir / "no-scores"))
    text = section((run_dir / REPORT_MD).read_text(), "## Test metrics")
    assert f"raycf score {run_dir}" in text
    write_report(str(run_dir))  # leave the scored report for the other tests


def test_missing_run_dir_is_one_line_and_exit_2(tmp_path, capsys) -> None:
    assert run_raycf("report", str(tmp_path / "nothing")) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and str(tmp_path / "nothing") in error and "--resume" in error


def test_seed_repeats_are_reported_as_in_repeats_json(run_dir) -> None:
    summary = json.loads((run_dir / "repeats.json").read_text())
    rows = table_rows(section((run_dir / REPORT_MD).read_text(), "## Seed repeats"))
    means = {row[0]: row[1:5] for row in rows if row[0] in ("Mult-VAE", "AutoRec")}
    for label, model in (("Mult-VAE", "multvae"), ("AutoRec", "autorec")):
        expected = summary["per_model"][model]
        assert means[label] == [f"{expected[name]['mean']:.4f} ± {expected[name]['std']:.4f}" for name in METRICS]
    paired = {row[0]: row[1] for row in rows if row[0] in ("P", "R", "NDCG", "MRR")}
    assert paired["NDCG"] == f"{summary['paired']['ndcg']['mean_difference']:.4f}"


NO_RAY = """
import sys
{body}
loaded = sorted(name for name in sys.modules if name == "ray" or name.startswith("ray."))
assert not loaded, f"Ray was imported: {{loaded[:5]}}"
"""
"""A fresh interpreter runs `body`, then fails if any `ray` module was imported."""


@pytest.mark.parametrize("body", [
    "import raycf\nmodel = raycf.load(sys.argv[1])\n"
    "assert len(model.recommend([list(model.item_ids[:3])], k=4).items[0]) == 4",
    "from raycf.cli.main import main\ntry:\n    main(['report', sys.argv[1]])\nexcept SystemExit as end:\n"
    "    assert end.code == 0, end.code",
    "from raycf.cli.main import main\ntry:\n"
    "    main(['compare', sys.argv[1] + '/scores', sys.argv[2], '--out', sys.argv[3]])\n"
    "except SystemExit as end:\n    assert end.code == 0, end.code",
], ids=["load-recommend", "report", "compare"])
def test_the_python_api_report_and_compare_never_import_ray(run_dir: Path, tmp_path: Path, body: str) -> None:
    shutil.copytree(run_dir / "scores", tmp_path / "copy")
    subprocess.run([sys.executable, "-c", NO_RAY.format(body=body), str(run_dir), str(tmp_path / "copy"),
                    str(tmp_path / "compared")], check=True, capture_output=True, text=True, timeout=300)
