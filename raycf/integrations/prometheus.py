"""Reading a Prometheus server over its HTTP API (no client library): instant and range queries, and the wait
for a study's final values at its end (`RAY_PROMETHEUS_HOST`, the variable that points Ray's dashboard at
Prometheus, names the server)."""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

from raycf.errors import RaycfError

PROMETHEUS_ENV = "RAY_PROMETHEUS_HOST"
"""Ray's variable for the Prometheus its dashboard reads (`http://127.0.0.1:9090`); raycf reads it too."""
BEST_METRIC = "ray_raycf_best_valid_metric"
"""The gauge of each model's best validation value of the study's metric (raycf.tune.monitoring)."""


def query(prometheus: str, expression: str, timeout: float = 10.0, **window: float) -> list[dict[str, Any]]:
    """The series `expression` returns: an instant query, or a range query given `start`, `end` and `step`
    (seconds). RaycfError (one line) for a server that does not answer and for an expression it rejects."""
    endpoint = "query_range" if window else "query"
    arguments = urllib.parse.urlencode({"query": expression, **{key: str(value) for key, value in window.items()}})
    url = f"{prometheus.rstrip('/')}/api/v1/{endpoint}?{arguments}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            answer = json.load(response)
    except urllib.error.HTTPError as error:
        detail = json.loads(error.read() or b"{}").get("error", error.reason)
        raise RaycfError(f"Prometheus at {prometheus} rejects {expression!r}: {detail}") from None
    except (OSError, ValueError) as error:
        raise RaycfError(f"cannot reach Prometheus at {prometheus} ({getattr(error, 'reason', error)}); is it "
                         f"running (README.md, Watching a run), and is {PROMETHEUS_ENV} right?") from None
    return list(answer["data"]["result"])


def best_by_model(prometheus: str, study: str, **window: float) -> dict[str, float]:
    """Each model's best validation value of study `study` as Prometheus holds it now (or at the end of a
    window)."""
    series = query(prometheus, f'max by (model) ({BEST_METRIC}{{study="{study}"}})', **window)
    return {item["metric"]["model"]: float((item.get("values") or [item.get("value")])[-1][1]) for item in series}


def wait_for_values(prometheus: str, study: str, expected: Mapping[str, float], seconds: float,
                    each_poll: Callable[[], None]) -> bool:
    """Whether Prometheus comes to hold `expected` (model -> best validation value) for `study` within
    `seconds` (Ray exports a driver's metrics every few seconds, and Prometheus scrapes them after);
    `each_poll` runs before each look (to set the values again)."""
    deadline = time.monotonic() + seconds
    while True:
        each_poll()
        held = best_by_model(prometheus, study)
        if held.keys() == expected.keys() and all(math.isclose(held[model], value, rel_tol=1e-9)
                                                  for model, value in expected.items()):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(1.0)
