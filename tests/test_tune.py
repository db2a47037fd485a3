"""`raycf tune` on a real local Ray: both models, ASHA per model, leaderboard, resume, refusals."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import load_checkpoint, run_raycf

from raycf.data.schemes.records import split_interactions
from raycf.data.source import load_split
from raycf.data.synthetic import generate_synthetic
from raycf.eval.evaluation import evaluate_model, summarize
from raycf.eval.metrics import METRICS
from raycf.models.config import TrainConfig
from raycf.runs.layout import BEST_FILE
from raycf.train.trainer import train
from raycf.tune.driver import LEADERBOARD_FILE, SPLIT_DIR, TRIALS_FILE
from raycf.tune.repeats import REPEATS_FILE, REPEATS_SUMMARY, format_repeats, summarize_repeats

ROOT = Path(__file__).resolve().parents[1]


def tune(args: list[str]) -> int:
    return run_raycf("tune", *args)


def test_study_runs_both_models_and_its_best_checkpoint_reproduces(ray_cluster, tiny_study, tmp_path, capsys):
    assert tune([str(tiny_study), "--storage", str(tmp_path), "--name", "run"]) == 0
    run_dir = tmp_path / "run"
    out = capsys.readouterr().out
    assert "valid_ndcg" in out and str(run_dir) in out
    trials = pd.read_parquet(run_dir / TRIALS_FILE)
    assert sorted(trials["model"].value_counts().items()) == [("autorec", 3), ("multvae", 3)]
    assert trials["error"].isna().all()
    # matmul_dtype auto, settled in each trial (float32: the tiny study's products are too small to measure)
    assert (trials["matmul_dtype"] == "float32").all() and trials["matmul_float32_gflops"].isna().all()
    assert (trials["hp_matmul_dtype"] == "auto").all()
    stopped = trials[trials["stopped_by"] == "asha"]
    assert len(stopped) >= 1 and (stopped["epochs_run"] < 12).all()
    leaderboard = pd.read_parquet(run_dir / LEADERBOARD_FILE)
    assert sorted(leaderboard["model"]) == ["autorec", "multvae"]
    for _, row in leaderboard.iterrows():  # the best of each model is the max of its trials
        assert row["valid_ndcg"] == trials[trials["model"] == row["model"]]["valid_ndcg"].max()
    best = json.loads((run_dir / BEST_FILE).read_text())
    assert best["valid"]["ndcg"] == leaderboard["valid_ndcg"].max()
    split = load_split(run_dir / SPLIT_DIR)
    model, meta = load_checkpoint(run_dir / best["checkpoint"], expect_model=best["model"], expect_items=split.n_items)
    assert meta["epoch"] == best["best_epoch"]
    assert summarize(evaluate_model(model, split, "valid"))["ndcg"] == pytest.approx(best["valid"]["ndcg"], abs=1e-9)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("name: x\nmodels: {multvae: {}}\ndata: {dataset: synthetic}\nbogus: 1\n", "bogus"),
        ("name: x\nmodels: {multvae: {}}\ndata: {dataset: synthetic}\nnum_samples: many\n", "num_samples"),
        ("name: x\nmodels: {multvae: {search: {beta: {grid: []}}}}\ndata: {dataset: synthetic}\n", "grid"),
        ("name: x\nmodels: {bpr: {}}\ndata: {dataset: synthetic}\n", "bpr"),
        ("name: x\nmodels: {multvae: {}}\ndata: {ratings: missing.csv}\n", "missing.csv"),
    ],
)
def test_bad_study_is_refused_before_ray_starts(tmp_path, content, expected):
    study = tmp_path / "bad.yaml"
    study.write_text(content)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "raycf", "tune", str(study), "--storage", str(tmp_path)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "bad.yaml" in lines[0] and expected in lines[0]
    assert "Traceback" not in done.stderr and "Ray" not in done.stdout
    assert time.monotonic() - started < 30
    assert not any(tmp_path.glob("*/tuner.pkl"))


def test_storage_uri_holds_the_whole_run(ray_cluster, tiny_study, tmp_path):
    storage = (tmp_path / "bucket").as_uri()  # file:///...: the pyarrow filesystem path, as for s3://
    assert tune([str(tiny_study), "--storage", storage, "--name", "remote", "--num-samples", "1"]) == 0
    run_dir = tmp_path / "bucket" / "remote"
    best = json.loads((run_dir / BEST_FILE).read_text())
    assert best["checkpoint"].startswith("run_trial_") and best["split"] == SPLIT_DIR  # relative: a run can move
    assert (run_dir / SPLIT_DIR / "manifest.json").is_file() and (run_dir / LEADERBOARD_FILE).is_file()


def test_repeat_seeds_retrain_the_best_configurations_and_compare_them(ray_cluster, tiny_study, tmp_path):
    assert tune([str(tiny_study), "--storage", str(tmp_path), "--name", "run", "--repeat-seeds", "0,3"]) == 0
    run_dir = tmp_path / "run"
    repeats = pd.read_parquet(run_dir / REPEATS_FILE)
    assert sorted(zip(repeats["model"], repeats["seed"])) == [
        ("autorec", 0), ("autorec", 3), ("multvae", 0), ("multvae", 3)
    ]
    summary = json.loads((run_dir / REPEATS_SUMMARY).read_text())
    vae = repeats[repeats["model"] == "multvae"]
    assert summary["per_model"]["multvae"]["ndcg"]["mean"] == pytest.approx(vae["ndcg"].mean())
    assert summary["per_model"]["multvae"]["ndcg"]["std"] == pytest.approx(vae["ndcg"].std(ddof=1))
    difference = vae["ndcg"].to_numpy() - repeats[repeats["model"] == "autorec"]["ndcg"].to_numpy()
    assert summary["paired"]["ndcg"]["mean_difference"] == pytest.approx(difference.mean())
    # a repeat is the same run as training that configuration in-process on that seed's split
    row = vae[vae["seed"] == 3].iloc[0]
    split = split_interactions(generate_synthetic(n_users=300, n_items=100), seed=3)
    result = train(split, TrainConfig.from_dict(json.loads(row["config"])))
    assert summarize(evaluate_model(result.model, split, "test"))["ndcg"] == pytest.approx(row["ndcg"], abs=1e-9)


def test_repeats_compare_the_models_on_the_studys_own_metric() -> None:
    """A study selecting on NDCG@100 is summarised by NDCG@100's paired difference, not NDCG@5's."""
    rows = [{"model": model, "seed": seed, **dict.fromkeys(METRICS, 0.3 if model == "ease" else 0.28),
             "ndcg@100": base + 0.01 * seed}
            for model, base in (("ease", 0.41), ("recvae", 0.42)) for seed in (0, 1, 2)]
    repeats = pd.DataFrame(rows)
    summary = summarize_repeats(repeats)
    assert summary["paired"]["models"] == ["recvae", "ease"]
    assert summary["paired"]["ndcg@100"]["mean_difference"] == pytest.approx(0.01)
    assert summary["paired"]["ndcg@100"]["wins"] == 3 and summary["paired"]["ndcg"]["wins"] == 0
    line = format_repeats(repeats, "ndcg@100").splitlines()[-1]
    assert line.startswith("  recvae - ease: ndcg@100 +0.0100, wins 3 of 3")


def test_unreachable_address_fails_fast_with_one_line(tmp_path):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "raycf", "tune", str(ROOT / "studies" / "quickstart.yaml"),
                           "--address", f"127.0.0.1:{port}", "--storage", str(tmp_path)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 2 and time.monotonic() - started < 30
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "--address" in lines[0]
    assert not any(tmp_path.iterdir())
