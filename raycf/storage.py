"""Run directories on a local path or behind any URI pyarrow understands (s3://, gs://, file://...)."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

from raycf.errors import RaycfError


def parse_results(text: str) -> list[dict]:
    """The results in the text of a trial's result.json, one JSON object a line; a last line cut short
    (a driver killed while writing it) ends the list."""
    results = []
    for line in filter(str.strip, text.splitlines()):
        try:
            results.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return results


@dataclass(frozen=True)
class Location:
    """One run directory: `uri` is what Ray Tune is given, `path` the same place on `filesystem`."""

    uri: str
    filesystem: pafs.FileSystem
    path: str

    @classmethod
    def of(cls, storage: str, name: str) -> Location:
        """`storage`/`name`; a plain path is made absolute so that every process sees the same place."""
        if "://" not in storage:
            storage = str(Path(storage).expanduser().resolve())
        uri = f"{storage.rstrip('/')}/{name}" if name else storage.rstrip("/")
        try:
            filesystem, path = pafs.FileSystem.from_uri(uri if "://" in uri else Path(uri).as_uri())
        except (pafs.ArrowInvalid, ValueError, OSError) as error:  # type: ignore[attr-defined]
            raise RaycfError(f"--storage {storage}: not a path or URI pyarrow can open ({error})") from None
        return cls(uri=uri, filesystem=filesystem, path=path)

    @property
    def parent_uri(self) -> str:
        return self.uri.rsplit("/", 1)[0]

    def uri_of(self, path: str) -> str:
        """The URI (or local path) of a `path` on this location's filesystem."""
        return path if "://" not in self.uri else f"{self.uri.split('://', 1)[0]}://{path}"

    def is_used(self) -> bool:
        """True when the directory exists and holds anything."""
        info = self.filesystem.get_file_info(self.path)
        if info.type == pafs.FileType.NotFound:
            return False
        return bool(self.filesystem.get_file_info(pafs.FileSelector(self.path, recursive=False)))

    def has(self, name: str) -> bool:
        return self.filesystem.get_file_info(f"{self.path}/{name}").type != pafs.FileType.NotFound

    def put_directory(self, local: Path) -> None:
        """Copy the contents of a local directory into this location."""
        self.filesystem.create_dir(self.path, recursive=True)
        pafs.copy_files(str(local), self.path, source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=self.filesystem)

    def get_directory(self, name: str, local: Path) -> Path:
        """Copy `name` (a sub-directory) of this location into `local`/`name`."""
        (local / name).mkdir(parents=True, exist_ok=True)
        pafs.copy_files(f"{self.path}/{name}", str(local / name), source_filesystem=self.filesystem,
                        destination_filesystem=pafs.LocalFileSystem())
        return local / name

    def write_bytes(self, name: str, data: bytes) -> None:
        with self.filesystem.open_output_stream(f"{self.path}/{name}") as stream:
            stream.write(data)

    def read_bytes(self, name: str) -> bytes:
        with self.filesystem.open_input_stream(f"{self.path}/{name}") as stream:
            return stream.read()


def parquet_bytes(frame) -> bytes:
    """A DataFrame as Parquet bytes (no index)."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()
