"""Memory guard: a model whose fit would not fit in this machine's memory is refused before anything runs."""

from __future__ import annotations

import os
from pathlib import Path

from raycf.errors import RaycfError
from raycf.models import MODELS
from raycf.models.config import TrainConfig

GIB = 2**30


def available_bytes() -> int:
    """Memory available to a new process here: MemAvailable of /proc/meminfo, else the physical memory."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_fit_memory(config: TrainConfig, n_users: int, n_items: int, where: str, available: int | None = None) -> None:
    """RaycfError naming the item count and the bytes needed when fitting `config` needs more than `available`
    (default: what this machine has available now)."""
    needed = MODELS[config.model].fit_bytes(n_users, n_items, config)
    available = available_bytes() if available is None else available
    if needed > available:
        raise RaycfError(
            f"{where}: {config.model} on {n_items:,} items needs {needed / GIB:.1f} GiB ({needed:,} bytes) for its "
            f"items x items matrices, but {available / GIB:.1f} GiB is available here; use a machine with more "
            "memory, or fewer items (filter rare items), or another model"
        )
