"""raycf's last line after a study: what became of the dashboard."""

from __future__ import annotations


def closing_lines(local_ray: bool) -> list[str]:
    """Where to look now: a local Ray that raycf started ends with the command, and its dashboard and metrics
    endpoint with it (the study's final metrics are in Prometheus where RAY_PROMETHEUS_HOST named one:
    raycf.tune.monitoring)."""
    if not local_ray:
        return []
    return ["the Ray dashboard and metrics endpoint above close with this command's local Ray; to keep them, "
            "start a Ray that outlives the study (`ray start --head`) and give --address 127.0.0.1:6379 (or "
            "RAY_ADDRESS); `raycf report RUN_DIR` shows the study afterwards"]
