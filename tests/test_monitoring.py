"""raycf's study metrics count each trial's end by the reason trials.parquet's `stopped_by` gives."""

from __future__ import annotations

import re
import time
import urllib.request
import uuid
from pathlib import Path

import pandas as pd
import pytest
from conftest import run_raycf

from raycf.tune.driver import TRIALS_FILE
from raycf.tune.endings import trial_ending

MAX_T = 3
FIFO_STUDY = f"""
name: ends
seed: 0
data:
  dataset: synthetic
  synthetic: {{n_users: 200, n_items: 60}}
scheduler: {{type: fifo, max_t: {MAX_T}}}
resources: {{cpus_per_trial: 1}}
checkpoint_every: null
models:
  multvae:
    fixed: {{hidden: 8, patience: 50}}
    search:
      beta: {{grid: [0.1, 0.2]}}
  autorec:
    fixed: {{hidden: 8, patience: 50}}
"""
"""Three trials (2 Mult-VAE, 1 AutoRec) that can only end at the epoch limit: FIFO, patience > max_t."""


def config(max_epochs: int = 12, patience: int = 6) -> dict:
    return {"trial": {"model": "multvae", "max_epochs": max_epochs, "patience": patience}}


@pytest.mark.parametrize(
    ("last_result", "ending"),
    [
        ({"epoch": 12, "best_epoch": 12}, "max_t"),  # the epoch limit: ASHA's max_t stop, or FIFO's end
        ({"epoch": 12, "best_epoch": 9}, "max_t"),
        ({"epoch": 10, "best_epoch": 4}, "patience"),
        ({"epoch": 12, "best_epoch": 6}, "patience"),  # both at once: patience, as in trials.parquet
        ({"epoch": 4, "best_epoch": 3}, "asha"),  # ended before either: the scheduler's rung stopped it
    ],
)
def test_a_trials_ending_is_classified_as_its_stopped_by(last_result: dict, ending: str) -> None:
    assert trial_ending(config(), last_result) == ending


def metrics_url() -> str:
    """This node's Prometheus endpoint (the driver's metrics are exported there)."""
    import ray

    here = ray.get_runtime_context().get_node_id()
    node = next(node for node in ray.nodes() if node["NodeID"] == here)
    return f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"


def trial_counts(url: str, study: str, reasons: set[str]) -> dict[str, float]:
    """`ray_raycf_trials_ended_total` of `study` for these reasons, per model, as the endpoint serves it now."""
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    counts = {}
    for labels, value in re.findall(r"^ray_raycf_trials_ended_total\{(.*)\} (\S+)$", text, re.MULTILINE):
        tags = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if tags.get("study") == study and tags.get("reason") in reasons:
            counts[tags["model"]] = counts.get(tags["model"], 0.0) + float(value)
    return counts


def test_trials_that_reach_max_t_count_as_ended_by_max_t(ray_cluster, tmp_path: Path) -> None:
    """Read back from the node's Prometheus endpoint: before, FIFO trials ending at max_t counted as finished."""
    study = tmp_path / "ends.yaml"
    study.write_text(FIFO_STUDY)
    name = f"ends-{uuid.uuid4().hex[:8]}"  # the metrics' `study` tag: this run's alone
    assert run_raycf("tune", str(study), "--storage", str(tmp_path), "--name", name) == 0
    trials = pd.read_parquet(tmp_path / name / TRIALS_FILE)
    assert (trials["stopped_by"] == "max_t").all() and (trials["epochs_run"] == MAX_T).all(), trials
    expected = trials["model"].value_counts().astype(float).to_dict()  # {"multvae": 2.0, "autorec": 1.0}

    url = metrics_url()
    deadline = time.monotonic() + 60  # metrics reach the endpoint every 10 s (Ray's default)
    stopped = trial_counts(url, name, {"max_t"})
    while stopped != expected and time.monotonic() < deadline:
        time.sleep(2)
        stopped = trial_counts(url, name, {"max_t"})
    assert stopped == expected, f"ray_raycf_trials_ended_total{{reason=max_t}} of study {name} at {url}: {stopped}"
    assert sum(trial_counts(url, name, {"asha", "patience", "complete", "error"}).values()) == 0
