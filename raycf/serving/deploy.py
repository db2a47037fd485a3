"""Deploying the application: every check first (Ray Serve installed, the run's checkpoint against its split, the
options, the port, the cluster's address), then Serve started on HOST:PORT and the application run (or rolled
over to the new run when it already runs there); or, instead, a Serve config file for `serve deploy`."""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from raycf.cluster.connection import check_reachable, connect, joins_a_cluster
from raycf.errors import RaycfError
from raycf.runs.loading import RunModel, load_run_model

SERVE_MODULES = ("ray.serve", "starlette", "uvicorn")
"""What `ray[serve]` brings that raycf's serving imports."""


APP_NAME = "raycf"


@dataclass(frozen=True)
class AppArgs:
    """What the application serves and how: its arguments, also as a Serve config file's `args`."""

    run: str
    model: str | None = None
    trial: str | None = None
    replicas: int = 1
    max_batch_size: int = 32
    """Queries a replica ranks together at most; 1 turns dynamic batching off."""
    cpus_per_replica: float = 1.0


@dataclass(frozen=True)
class ServeOptions:
    """Where the application listens and on which Ray; `host` and `port` apply when Serve starts on the cluster
    (a running Serve keeps its own)."""

    host: str = "127.0.0.1"
    port: int = 8000
    address: str | None = None


@dataclass(frozen=True)
class Serving:
    """A running application: its URL, a user of its run (for examples), and where to watch the Ray it runs on
    (the dashboard, Prometheus: lines to show; none when this process had joined Ray before)."""

    url: str
    example_user: Any
    watch: list[str] = field(default_factory=list)

    def curl_example(self) -> str:
        body = json.dumps({"user_id": self.example_user, "k": 10})
        return f"curl -s -X POST {self.url}/recommend -H 'Content-Type: application/json' -d '{body}'"


def importable(name: str) -> bool:
    """Whether module `name` imports (a missing dependency of it counts as missing)."""
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def check_serve_installed() -> None:
    """RaycfError in one line, saying what to install, when Ray Serve or its HTTP stack is missing."""
    missing = [name for name in SERVE_MODULES if not importable(name)]
    if missing:
        raise RaycfError(f"raycf serve needs Ray Serve ({', '.join(missing)} not installed); install it with "
                         f"pip install 'raycf[serve]' (or 'ray[serve]=={importlib.metadata.version('ray')}')")


def check_options(args: AppArgs, options: ServeOptions) -> None:
    """RaycfError naming the first option out of range."""
    if not 1 <= options.port <= 65535:
        raise RaycfError(f"--port must be from 1 to 65535, got {options.port}")
    for name, value in (("--replicas", args.replicas), ("--max-batch-size", args.max_batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise RaycfError(f"{name} must be an integer >= 1, got {value!r}")
    if not args.cpus_per_replica > 0:
        raise RaycfError(f"--cpus-per-replica must be > 0, got {args.cpus_per_replica!r}")


def check_port_free(options: ServeOptions) -> None:
    """RaycfError when something already listens on HOST:PORT (Serve's proxy would fail to start there)."""
    with socket.socket() as probe:
        try:
            probe.bind((options.host, options.port))
        except OSError as error:
            raise RaycfError(f"{options.host}:{options.port} is not free ({error.strerror or error}); choose another "
                             "--port or --host") from None


def prepare(args: AppArgs, options: ServeOptions) -> RunModel:
    """Every check before Ray starts: Ray Serve installed, the options, the run (its checkpoint against its
    split), the cluster's address reachable, and the port free where raycf starts a local Ray."""
    check_serve_installed()
    check_options(args, options)
    run = load_run_model(args.run, args.model, args.trial, verb="serve")
    if options.address not in (None, "local", "auto"):
        check_reachable(options.address)
    import ray

    if not ray.is_initialized() and not joins_a_cluster(options.address):
        check_port_free(options)
    return run


def deploy(args: AppArgs, options: ServeOptions, logging_level: str = "WARNING") -> Serving:
    """Check everything (`prepare`), join or start Ray, start Serve on HOST:PORT unless it runs there already,
    and run the application; a running one is rolled over to `args` replica by replica, answering throughout."""
    run = prepare(args, options)
    from ray import serve

    from raycf.serving.app import application

    connection = connect(options.address, logging_level=logging_level)
    if not serve.status().proxies:
        check_port_free(options)
        serve.start(proxy_location="HeadOnly", http_options={"host": options.host, "port": options.port})
    try:
        serve.run(application(args), name=APP_NAME, route_prefix="/")
    except RuntimeError as error:
        raise RaycfError(f"the application did not start: {str(error).splitlines()[0]}") from None
    return Serving(f"http://{options.host}:{options.port}", run.split.user_ids[:1].tolist()[0], connection.describe())


def shutdown() -> None:
    """Stop the application and Serve on the cluster."""
    from ray import serve

    serve.shutdown()


def write_config(path: str, args: AppArgs, options: ServeOptions) -> Path:
    """A Serve config file for `serve deploy PATH` (run on the cluster, with raycf installed there)."""
    check_options(args, options)
    load_run_model(args.run, args.model, args.trial, verb="serve")
    config = {
        "proxy_location": "HeadOnly",
        "http_options": {"host": options.host, "port": options.port},
        "applications": [{"name": APP_NAME, "route_prefix": "/", "import_path": "raycf.serving.app:build",
                          "args": asdict(args)}],
    }
    target = Path(path)
    try:
        target.write_text(yaml.safe_dump(config, sort_keys=False))
    except OSError as error:
        raise RaycfError(f"{path}: cannot write the Serve config ({error.strerror or error}); choose another "
                         "--config") from None
    return target


def serve(run: str, model: str | None = None, trial: str | None = None, *, host: str = "127.0.0.1",
          port: int = 8000, replicas: int = 1, max_batch_size: int = 32, cpus_per_replica: float = 1.0,
          address: str | None = None) -> Serving:
    """`raycf serve` from Python: deploy `run`'s checkpoint (its best trial, `model`'s best or `trial`) as a Ray
    Serve application on the Ray this process is connected to (or `address`, or a new local one) and return its
    URL; serving another run later rolls the replicas over. RaycfError in one line before anything is deployed."""
    return deploy(AppArgs(str(run), model, trial, replicas, max_batch_size, cpus_per_replica),
                  ServeOptions(host, port, address))
