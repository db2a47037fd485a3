"""Shared fixtures: small seeded synthetic data and its split (tests never read MovieLens unless marked)."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest

from raycf.data.split import Split, split_interactions
from raycf.data.synthetic import generate_synthetic

ML1M_DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ml-1m" / "ratings.dat.gz"


def run_raycf(*args: str) -> int:
    """Run the `raycf` command in this process; its exit status (0 when it returns normally)."""
    from raycf.cli import main

    try:
        main(list(args))
    except SystemExit as exited:
        return exited.code
    return 0


def ml1m_path() -> Path:
    """ML-1M ratings from $RAYCF_ML1M (default ../shared/data/ml-1m/ratings.dat.gz)."""
    return Path(os.environ.get("RAYCF_ML1M", ML1M_DEFAULT))


@pytest.fixture(scope="session")
def small_split() -> Split:
    """400 users x 150 items with planted structure, split 60/20/20 with seed 0."""
    frame = generate_synthetic(n_users=400, n_items=150, mean_interactions=30, min_interactions=20, seed=0)
    return split_interactions(frame, seed=0, source="synthetic-test")


@pytest.fixture(scope="session")
def session_cluster():
    """One real Ray for the whole test session: two simulated nodes of 1 CPU each, no dashboard.

    The `ray.cluster_utils.Cluster` itself: a test may add nodes, and removes those it added."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="ERROR", configure_logging=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="session")
def ray_cluster(session_cluster):
    """`ray`, connected to the session's cluster."""
    import ray

    return ray


TINY_STUDY = """
name: tiny
seed: 0
data:
  dataset: synthetic
  synthetic: {n_users: 300, n_items: 100}
scheduler: {type: asha, max_t: 12, grace_period: 2, reduction_factor: 3}
resources: {cpus_per_trial: 1}
max_failures: 1
models:
  multvae:
    fixed: {hidden: 16, lr: 1.0e-2, patience: 6}
    search:
      beta: {grid: [0.1, 0.2, 0.3]}
  autorec:
    fixed: {hidden: 16, lr: 1.0e-2, patience: 6}
    search:
      l2: {grid: [1.0e-4, 1.0e-3, 1.0e-2]}
"""


@pytest.fixture()
def tiny_study(tmp_path: Path) -> Path:
    """A six-trial study (3 Mult-VAE, 3 AutoRec) on 300 synthetic users, a few seconds per trial."""
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_STUDY)
    return path


class RunsCode:
    """Unpickling this runs a shell command that creates `marker`: a checkpoint that carries code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def write_code_pickle(path: Path, marker: Path) -> None:
    """torch.save a checkpoint-shaped dict whose unpickling would create `marker`."""
    import torch

    torch.save({"format": 1, "state_dict": RunsCode(marker)}, path)
