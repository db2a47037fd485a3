"""Joining Ray: a local Ray of our own or a cluster's, fast failure on a bad address, shared-storage check."""

from __future__ import annotations

import logging
import os
import socket
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs

from raycf.errors import RaycfError
from raycf.storage.location import Location

DASHBOARD_HOST = "127.0.0.1"


def check_reachable(address: str, option: str = "--address", timeout: float = 3.0) -> None:
    """Fail fast on a HOST:PORT no one answers at (ray.init would wait for minutes)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise RaycfError(f"{option} {address}: expected HOST:PORT (e.g. 10.0.0.1:6379), 'auto' or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as error:
        raise RaycfError(f"cannot reach a Ray cluster at {address} ({error.strerror or error}); check {option} / "
                         "RAY_ADDRESS and that the head node runs `ray start --head`, or unset both to start a "
                         "local Ray") from None


def joins_a_cluster(address: str | None) -> bool:
    """Whether `connect(address)` joins a running Ray (--address, $RAY_ADDRESS) rather than starting one here."""
    return (address or os.environ.get("RAY_ADDRESS") or "local") != "local"


def check_local_gpus(gpus: float, address: str | None, *, asked: str, what: str, way_out: str) -> None:
    """Before Ray starts: refuse `gpus` GPUs per `what` (a trial, a scorer actor; `asked` names where that was
    asked) when raycf would start a local Ray on a machine with fewer GPUs that torch can use.

    That local Ray would never place the work (Ray waits for a GPU that never comes) or a scorer would fail
    on `cuda`. A cluster's GPUs may be on other nodes, or come with its autoscaler: with --address or
    $RAY_ADDRESS nothing is checked here (as for any other resource a cluster may lack).
    """
    if gpus <= 0 or joins_a_cluster(address):
        return
    import torch

    visible = torch.cuda.device_count()
    if gpus > visible:
        raise RaycfError(
            f"{asked}: torch sees {visible} CUDA GPU(s) on this machine, so the local Ray that raycf starts "
            f"could never run a {what} that needs {gpus:g}; use {way_out} to run on the CPU, or --address a "
            "Ray cluster with GPU nodes"
        )


@dataclass(frozen=True)
class Connection:
    """Where to watch the Ray this process joined: the dashboard (and whether it asks for Ray's token) and this
    node's Prometheus endpoint."""

    dashboard: str | None
    metrics: str | None
    token_required: bool = False

    def describe(self) -> list[str]:
        lines = [f"Ray dashboard: {self.dashboard}"] if self.dashboard else []
        if self.dashboard and self.token_required:
            lines.append("  it asks for Ray's authentication token: paste the output of `ray get-auth-token` (run on "
                         "this machine, or the cluster's head) into its sign-in page")
        if self.metrics:
            lines.append(f"Prometheus metrics (raycf_* beside Ray's): {self.metrics}")
        return lines


def asks_for_token(dashboard: str, timeout: float = 5.0) -> bool:
    """Whether the dashboard answers an unauthenticated API request with 401 (Ray's token authentication)."""
    try:
        urllib.request.urlopen(f"{dashboard}/api/version", timeout=timeout).close()
    except urllib.error.HTTPError as error:
        return error.code == 401
    except OSError:
        return False
    return False


def joining(address: str | None) -> str:
    """What `connect(address)` is about to do, in words (it takes seconds)."""
    if joins_a_cluster(address):
        return f"joining the Ray cluster at {address or os.environ.get('RAY_ADDRESS')}"
    return "starting a local Ray on this machine"


def connect(address: str | None, dashboard_host: str = DASHBOARD_HOST, logging_level: str = "WARNING",
            job_name: str | None = None) -> Connection:
    """Join the cluster at `address` (or $RAY_ADDRESS), else start a local Ray sized to this machine.

    A local Ray's dashboard listens on `dashboard_host` only (loopback unless asked otherwise); Ray's own
    Python loggers speak from `logging_level` up (raycf.tune.console.quiet). `job_name` names this driver's
    job on the dashboard's Jobs page (the `job_name` of its job metadata).
    """
    import ray
    from ray.job_config import JobConfig

    if ray.is_initialized():
        return Connection(None, None)
    # "local" starts a Ray of our own even when another Ray runs on this machine: without it, ray.init()
    # joins the latest local cluster it finds, however unrelated.
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    options: dict[str, Any] = {"dashboard_host": dashboard_host} if address == "local" else {}
    if address not in ("local", "auto"):
        check_reachable(address)
    try:
        context = ray.init(address=address, logging_level=getattr(logging, logging_level),
                           job_config=JobConfig(metadata={"job_name": job_name} if job_name else {}), **options)
    except ConnectionError as error:
        raise RaycfError(
            f"cannot reach a Ray cluster at {address}: "
            f"{str(error).splitlines()[0]}; check --address / RAY_ADDRESS, or unset both to start a local Ray"
        ) from None
    here = ray.get_runtime_context().get_node_id()
    node: dict[str, Any] = next((node for node in ray.nodes() if node["NodeID"] == here), {})
    port = node.get("MetricsExportPort")
    dashboard = f"http://{context.dashboard_url}" if context.dashboard_url else None
    return Connection(
        dashboard=dashboard,
        metrics=f"http://{node['NodeManagerAddress']}:{port}/metrics" if port else None,
        token_required=dashboard is not None and asks_for_token(dashboard),
    )


def read_marker(path: str) -> str | None:
    """The text of a marker file, None when this node cannot read it."""
    try:
        with open(path, encoding="utf-8") as marker:
            return marker.read()
    except OSError:
        return None


def check_shared_storage(location: Location, option: str = "--storage", timeout: float = 60.0) -> None:
    """On a cluster of several nodes, refuse a local path that not every node can see.

    A marker file is written here and read back by a zero-CPU task pinned to each alive node; object
    store URIs (s3://, gs://...) are shared by nature and not checked.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [node for node in ray.nodes() if node["Alive"]]
    if len(nodes) < 2 or not isinstance(location.filesystem, pafs.LocalFileSystem):
        return
    location.filesystem.create_dir(location.path, recursive=True)
    token = uuid.uuid4().hex
    name = f".raycf-shared-{token}"
    marker = f"{location.path}/{name}"
    location.write_bytes(name, token.encode())
    reader = ray.remote(num_cpus=0)(read_marker)
    try:
        reads = [
            reader.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False))
            .remote(marker)
            for node in nodes
        ]
        seen = ray.get(reads, timeout=timeout)
    except ray.exceptions.GetTimeoutError:
        raise RaycfError(f"{option} {location.uri}: could not check within {timeout:.0f} s that every node sees it; "
                         "are all nodes alive? (ray status)") from None
    finally:
        location.filesystem.delete_file(marker)
    blind = [node for node, text in zip(nodes, seen, strict=True) if text != token]
    if blind:
        raise RaycfError(
            f"{option} {location.uri}: node {blind[0]['NodeManagerAddress']} ({blind[0]['NodeID'][:8]}) of this "
            f"{len(nodes)}-node cluster cannot see it; give a path every node mounts (NFS, ...) or an object "
            "store URI (s3://bucket/raycf)"
        )
