"""Outputs that appear whole or not at all, the one way raycf writes them: staged under a temporary name beside
the final one and moved into place at the end (`staged_file`, `staged_directory` on local paths; `PendingOutput`
for a Location, local or on an object store, where a pointer object commits a version); and one writer at a
time for a local output directory (`DirectoryLock`)."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

from raycf.errors import RaycfError
from raycf.storage.location import POINTER_FILE, VERSION_PREFIX, Location


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


@dataclass
class PendingOutput:
    """An output being written into `staged`; `commit` makes it `final`'s content whole, `discard` drops it
    unless it was committed."""

    final: Location
    staged: Location
    committed: bool = False

    @classmethod
    def begin(cls, final: Location) -> PendingOutput:
        """A fresh place to write: a sibling `<final>.tmp-<id>` locally, a version prefix on an object store."""
        suffix = uuid.uuid4().hex[:8]
        if final.is_object_store:
            staged = final.child(f"{VERSION_PREFIX}{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{suffix}")
        else:
            staged = Location(f"{final.uri}.tmp-{suffix}", final.filesystem, f"{final.path}.tmp-{suffix}")
        final.filesystem.create_dir(staged.path, recursive=True)
        return cls(final, staged)

    def commit(self) -> None:
        """Make the staged content the output. Locally: rename (the older output moved aside first, moved
        back if the rename fails, deleted after). On an object store: write the pointer, then delete the
        superseded versions."""
        filesystem, final = self.final.filesystem, self.final.path
        if self.final.is_object_store:
            version = self.staged.path.rsplit("/", 1)[1]
            self.final.write_bytes(POINTER_FILE, (json.dumps({"version": version}) + "\n").encode())
            self.committed = True
            for entry in filesystem.get_file_info(pafs.FileSelector(final)):
                if entry.base_name.startswith(VERSION_PREFIX) and entry.base_name != version:
                    filesystem.delete_dir(entry.path)
            return
        old = None
        if filesystem.get_file_info(final).type != pafs.FileType.NotFound:
            old = f"{final}.old-{uuid.uuid4().hex[:8]}"
            filesystem.move(final, old)
        try:
            filesystem.move(self.staged.path, final)
        except BaseException:
            if old is not None:
                filesystem.move(old, final)
            raise
        self.committed = True
        if old is not None:
            filesystem.delete_dir(old)

    def discard(self) -> None:
        """Remove the staged content of an output that was not committed."""
        if not self.committed and self.final.filesystem.get_file_info(self.staged.path).type != pafs.FileType.NotFound:
            self.final.filesystem.delete_dir(self.staged.path)

    @classmethod
    def write(cls, final: Location, files: dict[str, bytes] | Path) -> None:
        """Stage `files` (name -> bytes, or a local directory's whole content) and commit them into `final`
        together; nothing is left behind when it fails (OSError)."""
        output = cls.begin(final)
        try:
            if isinstance(files, Path):
                output.staged.put_directory(files)
            else:
                for name, data in files.items():
                    output.staged.write_bytes(name, data)
            output.commit()
        finally:
            output.discard()
