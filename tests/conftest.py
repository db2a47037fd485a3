"""Shared fixtures: small seeded synthetic data and its split (tests never read MovieLens unless marked)."""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from raycf.data.schemes.records import split_interactions
from raycf.data.split import Split
from raycf.data.synthetic import generate_synthetic
from raycf.errors import CheckpointError
from raycf.eval.metrics import check_disjoint, evaluate_ranked, top_k
from raycf.models import Recommender
from raycf.models.checkpoint import checkpoint_from_bytes

ML1M_DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ml-1m" / "ratings.dat.gz"


def run_raycf(*args: str) -> int:
    """Run the `raycf` command in this process; its exit status (0 when it returns normally)."""
    from raycf.cli.main import main

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


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def wait_for_port(port: int, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {seconds} s")


def can_unshare_mounts() -> bool:
    """True when this user may give a process its own mount namespace (root, as in CI)."""
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "--mount", "true"], capture_output=True, check=False).returncode == 0


@dataclass
class TwoNodeCluster:
    dashboard: str
    gcs: str
    metrics: list[str]
    env: dict[str, str]
    """The client's environment: the cluster's auth token and the venv's bin first on PATH."""
    base: Path
    private: Path | None
    """A directory that only the head node sees (the worker mounts an empty tmpfs over it)."""
    processes: list[subprocess.Popen] = field(default_factory=list)


@pytest.fixture(scope="session")
def two_nodes(object_store: ObjectStore) -> Iterator[TwoNodeCluster]:
    """Head and worker raylets as separate `ray start --block` process groups, token auth on; both nodes and
    the client reach the session's S3 server (its endpoint and credentials in their environment)."""
    base = Path(tempfile.mkdtemp(prefix="rcf", dir="/tmp"))  # short: Ray's socket paths live under it
    token = secrets.token_hex(16)
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, **object_store.env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
           "RAY_metrics_report_interval_ms": "1000", "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    gcs, dashboard, client, head_metrics, worker_metrics, head_agent, worker_agent = free_ports(7)
    ray = [str(Path(bin_dir) / "ray"), "start", "--block", "--num-cpus", "1", "--node-ip-address", "127.0.0.1",
           "--disable-usage-stats"]
    private = base / "private" if can_unshare_mounts() else None
    cluster = TwoNodeCluster(f"http://127.0.0.1:{dashboard}", f"127.0.0.1:{gcs}",
                             [f"http://127.0.0.1:{port}/metrics" for port in (head_metrics, worker_metrics)],
                             env, base, private)
    head = [*ray, "--head", "--temp-dir", str(base / "head"), "--port", str(gcs), "--dashboard-port", str(dashboard),
            "--dashboard-host", "127.0.0.1", "--include-dashboard", "true", "--ray-client-server-port", str(client),
            "--metrics-export-port", str(head_metrics), "--dashboard-agent-listen-port", str(head_agent)]
    # Each raylet gets its own temp dir: on one machine a shared one would let the worker's runtime-env
    # cleanup delete the job's working directory from under the head's driver.
    worker = [*ray, "--address", cluster.gcs, "--temp-dir", str(base / "worker"),
              "--metrics-export-port", str(worker_metrics), "--dashboard-agent-listen-port", str(worker_agent)]
    if private is not None:
        private.mkdir()
        worker = ["unshare", "--mount", "sh", "-c", f'mount -t tmpfs tmpfs "{private}" && exec "$@"', "sh", *worker]
    try:
        for command, port in ((head, dashboard), (worker, worker_metrics)):
            cluster.processes.append(subprocess.Popen(command, env=env, start_new_session=True,
                                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            wait_for_port(port)
        yield cluster
    finally:
        for process in cluster.processes:
            os.killpg(process.pid, signal.SIGTERM)
        for process in cluster.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        shutil.rmtree(base, ignore_errors=True)


@dataclass
class ObjectStore:
    """A real S3 API server (moto's server mode) on 127.0.0.1 with IAM authentication on, one bucket."""

    endpoint: str
    env: dict[str, str]
    """AWS_ENDPOINT_URL, AWS_REGION and the access key of a user allowed s3:*, for any S3 client."""
    bucket: str = "raycf"

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=self.env["AWS_REGION"],
                            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"])

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def keys(self, prefix: str) -> dict[str, str]:
        """Every object under `prefix`: key -> ETag (the content's MD5 for these small objects)."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return {item["Key"]: item["ETag"] for page in pages for item in page.get("Contents", [])}

    def read(self, key: str) -> bytes:
        return self.client().get_object(Bucket=self.bucket, Key=key)["Body"].read()


@pytest.fixture(scope="session")
def object_store() -> Iterator[ObjectStore]:
    """moto_server on a free loopback port, stopped at the end. Its first three requests are unauthenticated
    (INITIAL_NO_AUTH_ACTION_COUNT): they create the IAM user and access key that everything else signs with,
    so wrong or missing credentials are refused as by a real S3."""
    import boto3

    (port,) = free_ports(1)
    endpoint = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_port(port, 60)
        iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bootstrap",
                           aws_secret_access_key="bootstrap")
        iam.create_user(UserName="raycf")
        iam.put_user_policy(UserName="raycf", PolicyName="s3", PolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="raycf")["AccessKey"]
        store = ObjectStore(endpoint, {"AWS_ENDPOINT_URL": endpoint, "AWS_REGION": "us-east-1",
                                       "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
                                       "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
                                       "AWS_EC2_METADATA_DISABLED": "true"})
        store.client().create_bucket(Bucket=store.bucket)
        yield store
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def evaluate_scores(
    score_fn: Callable[[np.ndarray], torch.Tensor],
    known: sp.spmatrix,
    heldout: sp.spmatrix,
    k: int = 5,
    batch_size: int = 256,
) -> dict[str, np.ndarray]:
    """raycf.eval.metrics.evaluate_ranked over a score function (the tests' way in): per-user METRICS at k for
    all users, plus int arrays "n_heldout" and "hits" (their counts) and the
    (n_users x k) bool "ranked_hits" for metrics_at (all False for users without a held-out item).

    `score_fn(users)` returns (len(users) x n_items) scores, which top_k may overwrite; it
    is called only for users with a held-out item. Users without one get NaN metrics.
    Known and held-out items that overlap raise ValueError.
    """
    known, heldout = check_disjoint(known, heldout)

    def rank_fn(users: np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            scores = torch.as_tensor(score_fn(users))
        if tuple(scores.shape) != (len(users), known.shape[1]):
            raise ValueError(f"score_fn returned {tuple(scores.shape)}, expected {(len(users), known.shape[1])}")
        return top_k(scores, known[users], k)

    return evaluate_ranked(rank_fn, heldout, k, batch_size)


def load_checkpoint(
    path: Path, *, expect_model: str | None = None, expect_items: int | None = None
) -> tuple[Recommender, dict[str, Any]]:
    """A checkpoint file's model in eval mode and its meta (raycf.models.checkpoint.checkpoint_from_bytes);
    CheckpointError for anything unusable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found; pass a checkpoint file or a run directory holding one")
    return checkpoint_from_bytes(path.read_bytes(), str(path), expect_model=expect_model, expect_items=expect_items)
