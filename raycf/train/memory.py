"""Memory guard: a model whose fit would not fit in memory is refused before anything is allocated, on the
machine that would fit it (before Ray starts, and again inside each trial on its node)."""

from __future__ import annotations

import math
import os
from pathlib import Path

from raycf.errors import RaycfError
from raycf.models import MODELS
from raycf.models.config import TrainConfig

GIB = 2**30
MEMORY_LIMIT_ENV = "RAYCF_MEMORY_LIMIT_GIB"
"""GiB: a cap on the memory the guard counts as available in the process that reads it (a node's trials read
their raylet's environment)."""


def memory_limit_bytes() -> int | None:
    """MEMORY_LIMIT_ENV in bytes; None when unset."""
    value = os.environ.get(MEMORY_LIMIT_ENV, "").strip()
    if not value:
        return None
    try:
        limit = float(value)
    except ValueError:
        limit = math.nan
    if not (math.isfinite(limit) and limit > 0):
        raise RaycfError(f"{MEMORY_LIMIT_ENV}={value!r}: expected a number of GiB > 0 (e.g. 16); unset it to "
                         "count all the memory available")
    return int(limit * GIB)


def available_bytes() -> int:
    """Memory available to a new process here: MemAvailable of /proc/meminfo, else the physical memory; at most
    MEMORY_LIMIT_ENV when it is set."""
    limit = memory_limit_bytes()
    available = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if available is None:
        available = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return available if limit is None else min(available, limit)


def check_fit_memory(config: TrainConfig, n_users: int, n_items: int, where: str, available: int | None = None) -> None:
    """RaycfError naming the item count and the bytes needed when fitting `config` needs more than `available`
    (default: what this machine has available now)."""
    needed = MODELS[config.model].fit_bytes(n_users, n_items, config)
    available = available_bytes() if available is None else available
    if needed > available:
        raise RaycfError(
            f"{where}: {config.model} on {n_items:,} items needs {needed / GIB:.1f} GiB ({needed:,} bytes) for its "
            f"items x items matrices, but {available / GIB:.1f} GiB is available here; use a machine with more memory "
            f"(or a higher {MEMORY_LIMIT_ENV}), or fewer items (filter rare items), or another model"
        )
