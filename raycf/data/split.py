"""A split of interaction records into train / validation / test matrices (and its scheme's further parts),
saved as Parquet with a manifest and a content hash. The schemes that make splits (raycf.data.schemes) hand each
Split the rules it follows; this module knows none of them."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import reduce
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

from raycf.errors import DataError
from raycf.storage.atomic import staged_directory

FORMAT_VERSION = 2
"""2: split_sha256 hashes the split's content (`content_sha256`); 1: it hashed the Parquet files' bytes."""
PARTS = ("train", "valid", "test")
MASK_PROTOCOLS = ("train", "train+valid")
"""What test ranks never include: the user's inputs ("train"), or those and the validation items."""
MANIFEST = "manifest.json"
CONTENT_HEADER = b"raycf-split-content/1"


class SplitRules(Protocol):
    """What a split's scheme decides: the matrices it holds beyond train, valid and test (in the order they are
    hashed and saved), and the matrices whose union is a user's input when ranking a part."""

    @property
    def extra_parts(self) -> tuple[str, ...]: ...

    def input_parts(self, part: str) -> tuple[str, ...]: ...


@dataclass(frozen=True, eq=False)
class Split:
    """User x item 0/1 matrices; rows follow `user_ids`, columns follow `item_ids` (train items).

    `valid` and `test` hold the items to predict. Its scheme's `rules` say which further parts the split holds
    (the `users` scheme's `valid_fold_in` and `test_fold_in`, else None) and what a model is given as a user's
    input for each part (`inputs`).
    """

    train: sp.csr_matrix
    valid: sp.csr_matrix
    test: sp.csr_matrix
    user_ids: np.ndarray
    item_ids: np.ndarray
    manifest: dict[str, Any]
    valid_fold_in: sp.csr_matrix | None = None
    test_fold_in: sp.csr_matrix | None = None
    rules: SplitRules = field(kw_only=True, repr=False)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def scheme(self) -> str:
        return self.manifest.get("scheme", "records")

    @property
    def parts(self) -> tuple[str, ...]:
        """The matrices this split holds (and saves): train, valid, test, and its scheme's further parts."""
        return (*PARTS, *self.rules.extra_parts)

    def matrices(self) -> dict[str, sp.csr_matrix]:
        return {name: getattr(self, name) for name in self.parts}

    def inputs(self, part: str) -> sp.csr_matrix:
        """Every user's input when ranking for `part`: "valid", "test", or "score" (what `raycf score` gives
        each user: everything known before the test part except validation targets)."""
        if part not in ("valid", "test", "score"):
            raise ValueError(f"part must be valid, test or score, got {part!r}")
        return reduce(_union, (getattr(self, name) for name in self.rules.input_parts(part)))

    def known(self, part: str, mask: str = "train") -> sp.csr_matrix:
        """The items never ranked for `part`: its inputs, and for test with mask "train+valid" the validation
        items too."""
        if mask not in MASK_PROTOCOLS:
            raise ValueError(f"unknown mask protocol {mask!r}; expected one of {MASK_PROTOCOLS}")
        inputs = self.inputs(part)
        return _union(inputs, self.valid) if part == "test" and mask == "train+valid" else inputs

    @property
    def train_users(self) -> np.ndarray:
        """Rows with a train record (all users but the held-out ones of the `users` scheme)."""
        return np.flatnonzero(np.diff(self.train.indptr))


def _union(first: sp.csr_matrix, second: sp.csr_matrix) -> sp.csr_matrix:
    """A canonical CSR of ones at the entries of either matrix."""
    both = (first + second).tocsr()
    both.data[:] = 1.0
    both.sort_indices()
    return both


def finish_split(matrices: dict[str, sp.csr_matrix], user_ids: np.ndarray, item_ids: np.ndarray,
                 manifest: dict[str, Any], rules: SplitRules) -> Split:
    """The Split of `matrices` (train, valid, test, and the scheme's further parts), its manifest completed
    with the content hash and the Parquet files' digests.

    A user left without any record (all of them on items no training user has, dropped) is left out, as the
    Parquet parts, which hold records, could not keep them: the manifest counts them (`users_without_records`)."""
    matrices = {name: matrices[name] for name in (*PARTS, *rules.extra_parts)}
    kept = np.flatnonzero(sum(np.diff(matrix.indptr) for matrix in matrices.values()))
    if len(kept) < len(user_ids):
        matrices = {name: matrix[kept] for name, matrix in matrices.items()}
        manifest = {**manifest, "n_users": len(kept), "users_without_records": len(user_ids) - len(kept)}
        user_ids = user_ids[kept]
    manifest = {**manifest, "split_sha256": content_sha256(matrices, user_ids, item_ids)}
    manifest["file_sha256"] = _file_digests(_parquet_files(matrices, user_ids, item_ids))
    return Split(**matrices, user_ids=user_ids, item_ids=item_ids, manifest=manifest, rules=rules)


def save_split(split: Split, directory: Path) -> None:
    """Write the Parquet parts and manifest.json atomically; refuse to replace a different split."""
    directory = Path(directory)
    files = _parquet_files(split.matrices(), split.user_ids, split.item_ids)
    manifest = {**split.manifest, "file_sha256": _file_digests(files)}
    files[MANIFEST] = (json.dumps(manifest, sort_keys=True, indent=2) + "\n").encode()
    if directory.exists():
        if not directory.is_dir():
            raise DataError(f"split: {directory} exists and is not a directory; choose another split directory")
        if any(directory.iterdir()):
            _refuse_other_split(directory, manifest["split_sha256"])
            return
    try:
        with staged_directory(directory) as staging:
            for name, data in files.items():
                with open(staging / name, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
    except OSError as err:
        if directory.is_dir() and any(directory.iterdir()):  # another process saved first
            _refuse_other_split(directory, manifest["split_sha256"])
            return
        raise DataError(f"split: cannot write {directory}: {err.strerror}; choose a writable split directory") from err


def read_split(directory: Path, rules_of: Callable[[str], SplitRules]) -> Split:
    """Read a saved split back, checking every file against its sha256 in the manifest and the decoded
    split against the manifest's split_sha256 (`content_sha256`; over the files' bytes for format 1).
    `rules_of(scheme)`: the rules of the manifest's scheme (raycf.data.source.load_split asks the registry)."""
    directory = Path(directory)
    manifest = _read_manifest(directory)
    rules = rules_of(manifest.get("scheme", "records"))
    blobs = {}
    for name in (*PARTS, *rules.extra_parts):
        path = directory / f"{name}.parquet"
        try:
            blobs[name] = path.read_bytes()
        except OSError as err:
            raise DataError(f"split: cannot read {path}: {err.strerror}; save the split again") from err
    for file_name, digest in _file_digests({f"{name}.parquet": blob for name, blob in blobs.items()}).items():
        if manifest["file_sha256"].get(file_name) != digest:
            raise DataError(
                f"split: {directory / file_name} does not match its sha256 in {MANIFEST} "
                f"(modified or truncated); delete {directory} and split again"
            )
    legacy = manifest.get("format_version") == 1  # split_sha256 over the files' bytes, kept for older runs
    if legacy and manifest["split_sha256"] != hashlib.sha256(b"".join(blobs[name] for name in PARTS)).hexdigest():
        raise DataError(f"split: split_sha256 in {directory / MANIFEST} does not match the Parquet files; "
                        f"delete {directory} and split again")

    columns = {name: _read_part(directory / f"{name}.parquet", blob) for name, blob in blobs.items()}
    every_user = np.concatenate([users for users, _ in columns.values()])  # held-out users have no train row
    user_ids = pd.factorize(every_user, sort=True)[1]
    item_ids = pd.factorize(columns["train"][1], sort=True)[1]
    users, items = pd.Index(user_ids), pd.Index(item_ids)
    shape = (len(user_ids), len(item_ids))
    matrices = {}
    for name, (user_col, item_col) in columns.items():
        rows, cols = users.get_indexer(user_col), items.get_indexer(item_col)
        if (rows < 0).any() or (cols < 0).any():
            raise DataError(f"split: {directory / name}.parquet holds items absent from train.parquet; "
                            f"delete {directory} and split again")
        matrices[name] = ones_matrix(rows, cols, shape)
    found = content_sha256(matrices, user_ids, item_ids)
    if not legacy and manifest["split_sha256"] != found:
        raise DataError(
            f"split: split_sha256 {str(manifest['split_sha256'])[:12]} in {directory / MANIFEST} does not match "
            f"the split in its Parquet files ({found[:12]}); delete {directory} and split again"
        )
    return Split(**matrices, user_ids=user_ids, item_ids=item_ids, manifest=manifest, rules=rules)


def content_sha256(matrices: dict[str, sp.csr_matrix], user_ids: np.ndarray, item_ids: np.ndarray) -> str:
    """The split's identity: sha256 of a canonical encoding of its content, whatever wrote its files.

    The same raw ids and (user, item) pairs give the same hex digest under any pyarrow, numpy or scipy
    version and whatever the id arrays' dtypes. The encoding hashed, integers little-endian:

    1. the ASCII header ``raycf-split-content/1``;
    2. ``user_ids`` then ``item_ids`` (sorted, as in `Split`), each as: label(field name),
       label(``int64`` or ``utf8``), the id count as uint64, then every id: an integer id as int64; a
       string id as the uint64 length of its UTF-8 bytes, then those bytes;
    3. ``train``, ``valid`` then ``test``, then any further parts in the order of `matrices` (a split's:
       its scheme's order, e.g. ``valid_fold_in`` then ``test_fold_in``), each as: label(part name), the
       number of pairs as uint64, then every stored (row, column) index pair as two int64, sorted by row
       then column.

    label(s) is the uint64 length of s's UTF-8 bytes, then those bytes. Matrix values (all 1) and the
    manifest's other fields (seed, source, ...) are not hashed.
    """
    digest = hashlib.sha256(CONTENT_HEADER)
    for name, ids in (("user_ids", user_ids), ("item_ids", item_ids)):
        kind, encoded = _encode_ids(ids, name)
        digest.update(_label(name) + _label(kind) + struct.pack("<Q", len(ids)))
        digest.update(encoded)
    further = [name for name in matrices if name not in PARTS]
    for name in (*(name for name in PARTS if name in matrices), *further):
        rows, cols = matrices[name].nonzero()
        order = np.lexsort((cols, rows))
        pairs = np.column_stack((rows[order], cols[order])).astype("<i8")
        digest.update(_label(name) + struct.pack("<Q", len(pairs)))
        digest.update(pairs.tobytes())
    return digest.hexdigest()


def _label(text: str) -> bytes:
    """A name in the content encoding: uint64 length of its UTF-8 bytes, then them."""
    data = text.encode()
    return struct.pack("<Q", len(data)) + data


def _encode_ids(ids: np.ndarray, name: str) -> tuple[str, bytes]:
    """("int64", the ids as little-endian int64) or ("utf8", each id length-prefixed); DataError otherwise."""
    values = np.asarray(ids)
    if values.dtype.kind in "iu":
        return "int64", values.astype("<i8").tobytes()
    if values.dtype.kind in "OU" and all(isinstance(value, str) for value in values.tolist()):
        return "utf8", b"".join(_label(value) for value in values.tolist())
    raise DataError(f"split: {name} must hold integer or string ids, found {values.dtype}; convert them to one id type")


def ones_matrix(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    """A canonical (sorted, duplicate-free) float32 CSR matrix of ones."""
    order = np.lexsort((cols, rows))
    indptr = np.concatenate(([0], np.cumsum(np.bincount(rows, minlength=shape[0]))))
    data = np.ones(len(rows), dtype=np.float32)
    return sp.csr_matrix((data, cols[order].astype(np.int32), indptr.astype(np.int64)), shape=shape)


def _parquet_files(
    matrices: dict[str, sp.csr_matrix], user_ids: np.ndarray, item_ids: np.ndarray
) -> dict[str, bytes]:
    """The Parquet bytes of each part: raw ids, rows sorted by (user index, item index)."""
    files = {}
    for name, matrix in matrices.items():
        rows = np.repeat(np.arange(len(user_ids)), np.diff(matrix.indptr))
        table = pa.table({"user_id": pa.array(user_ids[rows]), "item_id": pa.array(item_ids[matrix.indices])})
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        files[f"{name}.parquet"] = sink.getvalue().to_pybytes()
    return files


def _file_digests(files: dict[str, bytes]) -> dict[str, str]:
    """Each file's own sha256 (to tell a damaged file); the split's identity is `content_sha256`."""
    return {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}


def _read_manifest(directory: Path) -> dict[str, Any]:
    """manifest.json with its digests, else DataError naming the file."""
    path = directory / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except OSError as err:
        raise DataError(f"split: cannot read {path}: {err.strerror}; save the split again") from err
    except ValueError as err:
        raise DataError(f"split: {path} is not valid JSON ({err}); save the split again") from err
    complete = isinstance(manifest, dict) and "split_sha256" in manifest
    if not (complete and isinstance(manifest.get("file_sha256"), dict)):
        raise DataError(f"split: {path} lacks split_sha256/file_sha256; save the split again")
    return manifest


def _read_part(path: Path, blob: bytes) -> tuple[np.ndarray, np.ndarray]:
    """The raw user and item id columns of one Parquet part."""
    try:
        table = pq.read_table(pa.BufferReader(blob), columns=["user_id", "item_id"])
    except (pa.ArrowException, KeyError) as err:
        raise DataError(f"split: cannot read {path}: {err}; delete the split and split again") from err
    users, items = (table.column(name).to_numpy(zero_copy_only=False) for name in ("user_id", "item_id"))
    return users, items


def _refuse_other_split(directory: Path, split_sha256: str) -> None:
    """Return quietly if `directory` holds this very split, else DataError."""
    try:
        existing = json.loads((directory / MANIFEST).read_text()).get("split_sha256")
    except (OSError, ValueError, AttributeError):
        existing = None
    if existing != split_sha256:
        raise DataError(
            f"split: {directory} already holds other files or a different split; "
            "choose another split directory or delete it"
        )
