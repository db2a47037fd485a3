"""Every Parquet file raycf writes stores a missing value as null, never NaN: duckdb (which averages NaN into
NaN) reads the same means and counts as pandas (which skips NaN) from each of them."""

from __future__ import annotations

import math
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import run_raycf

from raycf.runs.layout import (
    LEADERBOARD_FILE,
    REPEATS_FILE,
    SELECT_FILE,
    SUMMARY_PARQUET,
    TOPK_DIR,
    TRIALS_FILE,
    USER_METRICS_DIR,
)

STUDY = """
name: nulls
seed: 0
data:
  dataset: synthetic
  synthetic: {n_users: 200, n_items: 80}
  scheme: users
  heldout_users: 0.2
scheduler: {type: fifo, max_t: 3}
resources: {cpus_per_trial: 1}
repeat_seeds: [1]
select: {top: 1, seeds: [1]}
models:
  pop: {}
  ease:
    search:
      l2: {grid: [10.0, 100.0]}
"""
"""Two models of which one has `l2` (`hp_l2` of the other is missing), and the `users` scheme, whose training
users have no test item (their user_metrics are missing)."""


@pytest.fixture(scope="module")
def outputs(ray_cluster, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A study with seed repeats and robust selection, and a scoring of its best trial: each Parquet output
    raycf writes, by name."""
    base = tmp_path_factory.mktemp("nulls")
    (base / "nulls.yaml").write_text(STUDY)
    run = base / "runs" / "nulls"
    assert run_raycf("tune", str(base / "nulls.yaml"), "--storage", str(base / "runs"), "--name", "nulls") == 0
    assert run_raycf("score", str(run), "--out", str(base / "scores"), "--actors", "1") == 0
    files = {name: run / name for name in (TRIALS_FILE, LEADERBOARD_FILE, REPEATS_FILE, SELECT_FILE)}
    files[SUMMARY_PARQUET] = base / "scores" / SUMMARY_PARQUET
    for directory in (USER_METRICS_DIR, TOPK_DIR):
        (files[directory],) = (base / "scores" / directory).glob("*.parquet")
    return files


def numeric_columns(path: Path) -> list[str]:
    schema = pq.read_schema(path)
    return [field.name for field in schema if str(field.type) in {"double", "float", "int16", "int32", "int64"}]


@pytest.mark.parametrize("name", [TRIALS_FILE, LEADERBOARD_FILE, REPEATS_FILE, SELECT_FILE, SUMMARY_PARQUET,
                                  USER_METRICS_DIR, TOPK_DIR])
def test_duckdb_and_pandas_read_the_same_means(outputs: dict[str, Path], name: str) -> None:
    path = outputs[name]
    frame = pd.read_parquet(path)
    columns = numeric_columns(path)
    assert columns, name
    query = ", ".join(f'avg("{column}"), count("{column}")' for column in columns)
    (answers,) = duckdb.sql(f"select {query} from read_parquet('{path}')").fetchall()
    for index, column in enumerate(columns):
        mean, count = answers[2 * index], answers[2 * index + 1]
        assert count == frame[column].count(), (name, column)
        expected = frame[column].mean()
        if math.isnan(expected):  # no value at all: null to duckdb too
            assert mean is None, (name, column, mean)
        else:
            assert mean == pytest.approx(expected, rel=1e-12), (name, column)


def test_what_is_missing_is_null(outputs: dict[str, Path]) -> None:
    """The users without a test item have null metrics; a model without a hyperparameter has a null there."""
    metrics = pq.read_table(outputs[USER_METRICS_DIR])
    untested = int((metrics["n_test"].to_numpy() == 0).sum())
    assert 0 < untested < metrics.num_rows
    for column in ("precision", "recall", "ndcg", "mrr"):
        assert metrics[column].null_count == untested, column
    trials = pq.read_table(outputs[TRIALS_FILE])
    models = trials["model"].to_pylist()
    assert [value is None for value in trials["hp_l2"].to_pylist()] == [model != "ease" for model in models]
    assert set(models) == {"pop", "ease"}
