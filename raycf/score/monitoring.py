"""A scoring job's metrics through `ray.util.metrics` (dashboard, Prometheus as `ray_raycf_users_scored_total`,
`ray_raycf_users_per_second`)."""

from __future__ import annotations

import time

from ray.util.metrics import Counter, Gauge


class ScoringMetrics:
    """Users scored so far and the rate, for one `raycf score` output."""

    def __init__(self, output: str) -> None:
        self.tags = {"output": output}
        self.users = Counter("raycf_users_scored", "Users scored.", ("output",))
        self.rate = Gauge("raycf_users_per_second", "Users scored per second since scoring started.", ("output",))
        self.started = time.monotonic()
        self.total = 0

    def add(self, users: int) -> None:
        self.total += users
        self.users.inc(users, tags=self.tags)
        self.rate.set(self.total / max(time.monotonic() - self.started, 1e-9), tags=self.tags)
