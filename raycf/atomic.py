"""Directories that appear whole or not at all: filled under a temporary name, renamed at the end."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def staged_directory(final: Path) -> Iterator[Path]:
    """Yield an empty sibling of `final` to fill; it is renamed to `final` if the block succeeds.

    The rename replaces `final` only when that is absent or an empty directory (OSError otherwise); on
    any failure the staging directory is removed, so `final` never holds half an output.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        os.chmod(staging, 0o777 & ~_umask())
        yield staging
        os.rename(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
