"""Run directories on a local path or behind any URI pyarrow understands (s3://, gs://, file://...), and
outputs that appear whole or not at all on both.

An output directory is committed by the means its storage really has. A local filesystem renames a
staged sibling into place. An object store has no rename of a prefix (pyarrow copies object by object,
and fails on S3), so there the output is written under a fresh version prefix, `<out>/v-<time>-<id>/`,
and becomes visible when the small pointer object `<out>/current.json` naming that prefix is written
last; a single object's write is atomic on S3, GCS and Azure. Readers follow the pointer
(`Location.current`). Superseded version prefixes are deleted after the pointer moves; a writer killed
before its pointer leaves the previous output, pointer and all, as it was.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

from raycf.errors import RaycfError

POINTER_FILE = "current.json"
"""On an object store: `{"version": "v-..."}`, the prefix under an output directory that holds its content."""
VERSION_PREFIX = "v-"
BUCKET_SCHEMES = ("s3", "gs", "gcs")
"""URI schemes whose first path part is a bucket."""
URI_FORMS = "give a local path, or a URI such as s3://BUCKET/PATH, gs://BUCKET/PATH or file:///PATH"
CREDENTIAL_SOURCES = ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE",
                      "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI")


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
        """`storage`/`name`; a plain path is made absolute so that every process sees the same place.

        A URI without a bucket (`s3://`, `s3:///x`), of a scheme pyarrow has no filesystem for (`foo://x`), or
        whose store cannot be reached is a RaycfError naming it."""
        if "://" not in storage:
            storage = str(Path(storage).expanduser().resolve())
        else:
            check_uri(storage)
        uri = f"{storage.rstrip('/')}/{name}" if name else storage.rstrip("/")
        try:
            filesystem, path = pafs.FileSystem.from_uri(uri if "://" in uri else Path(uri).as_uri())
        except ValueError as error:  # pyarrow's ArrowInvalid is a ValueError
            raise RaycfError(f"{storage}: not a path or URI raycf can open ({str(error).splitlines()[0]}); "
                             f"{URI_FORMS}") from None
        except OSError as error:
            raise RaycfError(f"{storage}: {describe_store_error(str(error))}") from None
        return cls(uri=uri, filesystem=filesystem, path=path)

    @property
    def is_object_store(self) -> bool:
        """True for S3, GCS and the like: no directory rename, single-object writes are atomic."""
        return not isinstance(self.filesystem, pafs.LocalFileSystem)

    def child(self, name: str) -> Location:
        """The location `name` below this one (a relative path, '/'-separated)."""
        return Location(f"{self.uri.rstrip('/')}/{name}", self.filesystem, f"{self.path.rstrip('/')}/{name}")

    def current(self) -> Location:
        """Where this output's content is: the version prefix its pointer names, else this location itself."""
        if not self.has(POINTER_FILE):
            return self
        try:
            version = str(json.loads(self.read_bytes(POINTER_FILE)).get("version", ""))
        except (ValueError, AttributeError):
            version = ""
        if not version.startswith(VERSION_PREFIX) or "/" in version or not self.has(version):
            raise RaycfError(f"{self.uri}/{POINTER_FILE}: names {version!r}, which is not an output version "
                             f"there; write the output again")
        return self.child(version)

    def check_access(self, option: str) -> None:
        """On an object store, a bucket lookup and a listing that turn a missing bucket, refused credentials
        or an unreachable endpoint into a one-line RaycfError naming the URI (nothing on a local path)."""
        if not self.is_object_store:
            return
        bucket = self.path.split("/", 1)[0]
        try:
            missing = self.filesystem.get_file_info(bucket).type == pafs.FileType.NotFound
            if not missing:
                self.filesystem.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))
        except OSError as error:
            raise RaycfError(f"{option} {self.uri}: {describe_store_error(str(error))}") from None
        if missing:
            raise RaycfError(f"{option} {self.uri}: bucket {bucket!r} does not exist; create it, or give an "
                             "existing bucket")

    @property
    def parent_uri(self) -> str:
        return self.uri.rsplit("/", 1)[0]

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


def check_uri(uri: str) -> None:
    """RaycfError naming `uri` when it has no scheme before `://`, or is an object store's URI without a
    bucket (`s3://`, `s3:///x`, `gs://`)."""
    scheme, rest = uri.split("://", 1)
    if not scheme:
        raise RaycfError(f"{uri}: no scheme before '://'; {URI_FORMS}")
    if scheme in BUCKET_SCHEMES and not rest.split("/", 1)[0]:
        raise RaycfError(f"{uri}: no bucket in the URI; give it as {scheme}://BUCKET/PATH")


def parquet_bytes(frame) -> bytes:
    """A DataFrame as Parquet bytes (no index)."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def describe_store_error(message: str) -> str:
    """What an object store's refusal means for the user, and the way out, from pyarrow's message."""
    first = message.splitlines()[0]
    if "NETWORK_CONNECTION" in first or "Could not connect" in first or "resolve host" in first.lower():
        endpoint = os.environ.get("AWS_ENDPOINT_URL", "the default AWS endpoint")
        return f"cannot reach the object store at {endpoint}; check AWS_ENDPOINT_URL and the network"
    credentials = [name for name in CREDENTIAL_SOURCES if os.environ.get(name)]
    if not credentials and not Path("~/.aws/credentials").expanduser().is_file():
        return (f"access refused and no credentials found ({first}); set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)")
    if any(code in first for code in ("ACCESS_DENIED", "INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH",
                                      "AccessDenied", "Forbidden", "403")):
        return (f"the credentials were refused ({first}); check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY "
                f"(from {', '.join(credentials) or '~/.aws/credentials'}) and the bucket's permissions")
    return f"the object store refused the request ({first})"
