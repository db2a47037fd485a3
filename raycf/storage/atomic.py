"""Local files and directories that appear whole or not at all: written under a temporary sibling name and
renamed into place at the end (raycf.storage.location.PendingOutput does the same for a Location, local or on an
object store); and one writer at a time for a local output directory."""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from raycf.errors import RaycfError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def staged_file(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling path of `final` to write; it replaces `final` if the block succeeds, and is
    removed otherwise, so `final` is never half written."""
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.with_name(f".{final.name}.tmp{os.getpid()}")
    try:
        yield staging
        os.replace(staging, final)
    finally:
        staging.unlink(missing_ok=True)


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


class DirectoryLock:
    """`<directory>.lock` beside a local output directory: one writer at a time.

    The writer holds an exclusive `flock` on the file, which names its pid and host. The kernel drops the
    flock when the writer ends, however it ends, so the file left by a killed writer is simply taken
    over, and a reused pid never passes for a live writer. The file is removed by `release`. Local (and
    NFS) paths only: an object store (s3://, gs://) has no exclusive create or lock, so two writers of
    the same URI are not kept apart; the last one to move its output into place wins.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory.with_name(f"{directory.name}.lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or RaycfError naming the lock file, its holder and the way out."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 256).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise RaycfError(f"{self.directory}: {holder} is writing it now (lock file {self.path}); wait for "
                                 "that run to end, or choose another --out") from None
            if _same_file(fd, self.path):
                break
            os.close(fd)  # its holder removed the file between our open and flock: open the new one
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
        self._fd = fd

    def release(self) -> None:
        """Remove the lock file and let go (nothing when not held)."""
        if self._fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False
