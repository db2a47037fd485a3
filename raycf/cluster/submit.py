"""`--submit`: run a raycf command as a Ray Job on a cluster, follow its logs, exit with its status.

The current directory travels as the job's `working_dir` and this raycf package as a `py_module`, so the
job runs the same code and study files as the command line that sent it; the cluster's Python must hold
raycf's dependencies (cluster.yaml installs them), or `--runtime-env FILE` names a `pip:` list.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from raycf.cluster.connection import check_reachable
from raycf.cluster.ray_private import quiet_job_upload_logs
from raycf.errors import RaycfError

# Client-side options: they choose how the command is sent, so the job's own command line drops them.
SUBMIT_OPTIONS = {"--submit": True, "--runtime-env": True, "--no-wait": False}
EXCLUDES = [".git", ".venv", "venv", "runs", "**/__pycache__", ".pytest_cache", "*.egg-info"]
EXIT_STATUS = {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 130}


def job_arguments(argv: list[str]) -> list[str]:
    """The command line without the options that only the submitting side reads."""
    kept: list[str] = []
    skip_value = False
    for argument in argv:
        if skip_value:
            skip_value = False
            continue
        name = argument.split("=", 1)[0]
        if name in SUBMIT_OPTIONS:
            skip_value = SUBMIT_OPTIONS[name] and "=" not in argument
            continue
        kept.append(argument)
    return kept


def require_cluster_path(option: str, value: str) -> None:
    """Refuse a relative path for an output: the job would write it into its throw-away working_dir."""
    if "://" not in value and not Path(value).is_absolute():
        raise RaycfError(f"{option} {value}: with --submit, outputs must go to a place the cluster keeps: an "
                         "absolute path on shared storage or a URI such as s3://bucket/raycf")


def runtime_env(runtime_env_file: str | None, working_dir: Path) -> dict[str, Any]:
    """The current directory as working_dir, this raycf as a py_module, merged with `runtime_env_file`."""
    env: dict[str, Any] = {
        "working_dir": str(working_dir),
        "py_modules": [str(Path(__file__).resolve().parents[1])],
        "excludes": list(EXCLUDES),
    }
    if runtime_env_file is None:
        return env
    path = Path(runtime_env_file)
    try:
        extra = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise RaycfError(f"{path}: cannot read the runtime environment ({str(error).splitlines()[0]})") from None
    if not isinstance(extra, dict):
        raise RaycfError(f"{path}: a runtime environment is a mapping (working_dir, pip, env_vars, ...)")
    if "runtime_env" in extra and "entrypoint" in extra:  # a jobs/ spec: take its runtime_env part
        extra = extra["runtime_env"]
    if extra.get("working_dir") in (".", None):
        extra = {**extra, "working_dir": str(working_dir)}
    return {**env, **extra}


def dashboard_client(address: str) -> Any:
    """A JobSubmissionClient for http://HEAD:8265; a one-line error when nothing answers there."""
    from ray.job_submission import JobSubmissionClient

    parts = urlsplit(address)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RaycfError(f"--submit {address}: expected the dashboard's address, like http://HEAD:8265")
    check_reachable(f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}",
                    option="--submit")
    from ray.exceptions import AuthenticationError

    try:
        return JobSubmissionClient(address)
    except AuthenticationError:
        raise RaycfError(f"--submit {address}: the cluster asks for its auth token; set RAY_AUTH_TOKEN (or put it "
                         "in ~/.ray/auth_token) as on the cluster's nodes, with RAY_AUTH_MODE=token") from None
    except (ConnectionError, RuntimeError) as error:
        raise RaycfError(f"--submit {address}: no Ray job server answers there ({str(error).splitlines()[0]}); "
                         "give the head node's dashboard address (port 8265)") from None


def submit(address: str, argv: list[str], runtime_env_file: str | None, wait: bool,
           echo: Callable[[str], None]) -> int:
    """Send `raycf ARGV` as a Ray Job; follow its logs unless `wait` is off. Returns the exit status."""
    client = dashboard_client(address)
    # The job's own log is what the user follows: quiet the SDK's packaging and upload chatter, and its
    # warning that .git is now left out of a working_dir by default (raycf always left it out).
    logging.getLogger("ray").setLevel(logging.WARNING)
    quiet_job_upload_logs()
    entrypoint = shlex.join(["python", "-m", "raycf", *job_arguments(argv)])
    job_id = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env(runtime_env_file, Path.cwd()),
                               metadata={"tool": "raycf", "command": argv[0] if argv else ""})
    echo(f"submitted Ray job {job_id} to {address}: {entrypoint}")
    echo(f"Ray dashboard: {address.rstrip('/')}/#/jobs/{job_id}")
    follow = f"ray job logs --follow {job_id} --address {address}"
    if not wait:
        echo(f"follow it with: {follow}")
        return 0
    try:
        asyncio.run(print_logs(client, job_id))
    except KeyboardInterrupt:
        echo(f"detached; job {job_id} goes on. Follow it with: {follow}; stop it with: "
             f"ray job stop {job_id} --address {address}")
        return 0
    info = client.get_job_info(job_id)
    echo(f"job {job_id} {info.status}")
    if info.driver_exit_code is not None:
        return int(info.driver_exit_code)
    return EXIT_STATUS.get(str(info.status), 1)


async def print_logs(client: Any, job_id: str) -> None:
    """Stream the job's log to stdout until the job ends."""
    async for lines in client.tail_job_logs(job_id):
        sys.stdout.write(lines)
        sys.stdout.flush()
