"""A real Prometheus (Debian's `prometheus`, installed by .ci/run) started on 127.0.0.1 with the shipped
monitoring/prometheus.yml scrapes the local Ray of a quickstart study; after `raycf tune` returns, every PromQL
expression of the shipped Grafana dashboard returns the study's series, and each model's best validation value
in Prometheus is the leaderboard's.

Without the `prometheus` binary the test is skipped, naming it, except where $CI is set (a skip there would go
unnoticed).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from conftest import free_ports

from raycf.errors import RaycfError
from raycf.integrations.prometheus import PROMETHEUS_ENV, best_by_model, query
from raycf.runs.layout import LEADERBOARD_FILE

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "monitoring" / "prometheus.yml"
DASHBOARD = ROOT / "monitoring" / "grafana-dashboard.json"
RAY_DISCOVERY_FILE = "/tmp/ray/prom_metrics_service_discovery.json"
"""The one path of the shipped configuration that depends on Ray's temp dir."""


def shipped(path: Path) -> str:
    """A shipped monitoring file's text; a test failure in one line where it is missing."""
    if not path.is_file():
        pytest.fail(f"{path}: missing; monitoring/ ships prometheus.yml and grafana-dashboard.json", pytrace=False)
    return path.read_text()


def dashboard_expressions(path: Path = DASHBOARD) -> list[tuple[str, str]]:
    """(panel title, PromQL expression) of every target of the Grafana dashboard."""
    panels = json.loads(shipped(path))["panels"]
    return [(panel["title"], target["expr"]) for panel in panels for target in panel["targets"]]


@dataclass
class Prometheus:
    url: str
    ray_tmpdir: Path
    """$RAY_TMPDIR for the Ray this Prometheus scrapes (the shipped config, pointed at its discovery file)."""


@pytest.fixture()
def prometheus() -> Iterator[Prometheus]:
    """Prometheus on a free loopback port with the shipped configuration, its storage in a temp dir. Ray's temp
    dir is a short one of this test's own ($RAY_TMPDIR: other Rays on the machine keep theirs)."""
    binary = shutil.which("prometheus")
    if binary is None:
        message = "no prometheus binary; on Debian: apt-get install prometheus"
        if os.environ.get("CI"):
            pytest.fail(f"{message} -- CI must have it (.ci/run installs it)")
        pytest.skip(message)
    base = Path(tempfile.mkdtemp(prefix="rcf", dir="/tmp"))  # short: Ray's socket paths live under it
    config = shipped(CONFIG)
    assert config.count(RAY_DISCOVERY_FILE) == 1, f"{CONFIG} should name {RAY_DISCOVERY_FILE} once"
    (base / "prometheus.yml").write_text(config.replace(RAY_DISCOVERY_FILE,
                                                        str(base / "ray" / "prom_metrics_service_discovery.json")))
    (port,) = free_ports(1)
    url = f"http://127.0.0.1:{port}"
    log = (base / "prometheus.log").open("w")
    command = [binary, f"--config.file={base / 'prometheus.yml'}", f"--storage.tsdb.path={base / 'data'}",
               f"--web.listen-address=127.0.0.1:{port}"]
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/-/ready", timeout=2).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"Prometheus did not start on {url}; its log: {base / 'prometheus.log'}", pytrace=False)
                time.sleep(0.5)
        yield Prometheus(url, base)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        log.close()
        shutil.rmtree(base, ignore_errors=True)


def test_prometheus_keeps_a_studys_final_values_for_the_shipped_dashboard(prometheus: Prometheus,
                                                                           tmp_path: Path) -> None:
    name = f"prom-{os.getpid()}"  # the metrics' `study` label: this run's alone
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    env.update({"RAY_TMPDIR": str(prometheus.ray_tmpdir), PROMETHEUS_ENV: prometheus.url})
    started = time.time()
    done = subprocess.run([sys.executable, "-m", "raycf", "tune", str(ROOT / "studies" / "quickstart.yaml"),
                           "--storage", str(tmp_path), "--name", name], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"metrics: Prometheus at {prometheus.url} holds them" in done.stdout, done.stdout[-3000:]
    assert "close with this command's local Ray" in done.stdout  # where to look now that the dashboard closed

    window = {"start": started, "end": time.time(), "step": 2.0}  # what Grafana asks for, after the study
    for title, expression in dashboard_expressions():
        series = query(prometheus.url, expression.replace("$study", name), **window)
        if "$study" in expression:
            assert series and all(item["metric"].get("study") == name for item in series), (title, expression, series)

    leaderboard = pd.read_parquet(tmp_path / name / LEADERBOARD_FILE)
    held = best_by_model(prometheus.url, name, **window)
    assert held == pytest.approx(dict(zip(leaderboard["model"], leaderboard["valid_ndcg"], strict=True)), rel=1e-9)

    with pytest.raises(RaycfError, match=r"^Prometheus at http://127\.0\.0\.1:\d+ rejects 'sum by \(\(': "):
        query(prometheus.url, "sum by ((")


def test_an_unreachable_prometheus_is_one_line() -> None:
    (port,) = free_ports(1)
    with pytest.raises(RaycfError, match=rf"^cannot reach Prometheus at http://127\.0\.0\.1:{port} \(.+\); is it "):
        query(f"http://127.0.0.1:{port}", "up")
