"""A split of interaction records into train / validation / test matrices (and the fold-in inputs of held-out
users), saved as Parquet; the seeded random split of the records (scheme `records`) is made here, the other
schemes in raycf.data.schemes."""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

from raycf.atomic import staged_directory
from raycf.errors import DataError
from raycf.layout import MASK_PROTOCOLS

FORMAT_VERSION = 2
"""2: split_sha256 hashes the split's content (`content_sha256`); 1: it hashed the Parquet files' bytes."""
PARTS = ("train", "valid", "test")
FOLD_IN_PARTS = ("valid_fold_in", "test_fold_in")
"""The `users` scheme's inputs of held-out users: given to the model, never predicted."""
SCHEMES = ("records", "users", "time")
MANIFEST = "manifest.json"
CONTENT_HEADER = b"raycf-split-content/1"


@dataclass(frozen=True, eq=False)
class Split:
    """User x item 0/1 matrices; rows follow `user_ids`, columns follow `item_ids` (train items).

    `valid` and `test` hold the items to predict. What a model is given as a user's input depends on the
    scheme (`manifest["scheme"]`): `records`, the user's train row; `users`, the held-out user's fold-in
    items (`valid_fold_in`, `test_fold_in`; held-out users have no train row); `time`, the user's items
    before the part's cut (train, and validation items for test).
    """

    train: sp.csr_matrix
    valid: sp.csr_matrix
    test: sp.csr_matrix
    user_ids: np.ndarray
    item_ids: np.ndarray
    manifest: dict[str, Any]
    valid_fold_in: sp.csr_matrix | None = None
    test_fold_in: sp.csr_matrix | None = None

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
        """The matrices this split holds (and saves): train, valid, test, and the fold-in inputs if any."""
        return (*PARTS, *FOLD_IN_PARTS) if self.valid_fold_in is not None else PARTS

    def matrices(self) -> dict[str, sp.csr_matrix]:
        return {name: getattr(self, name) for name in self.parts}

    def inputs(self, part: str) -> sp.csr_matrix:
        """Every user's input when ranking for `part`: "valid", "test", or "score" (what `raycf score` gives
        each user: everything known before the test part except validation targets)."""
        if part not in ("valid", "test", "score"):
            raise ValueError(f"part must be valid, test or score, got {part!r}")
        if self.scheme == "time" and part != "valid":
            return _union(self.train, self.valid)
        folded = {"valid": ("valid_fold_in",), "test": ("test_fold_in",), "score": FOLD_IN_PARTS}[part]
        inputs = self.train
        for name in folded:
            if getattr(self, name) is not None:
                inputs = _union(inputs, getattr(self, name))
        return inputs

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


def split_interactions(
    interactions: pd.DataFrame,
    *,
    fractions: Sequence[float] = (0.6, 0.2, 0.2),
    seed: int = 0,
    source: str = "",
    source_sha256: str = "",
    extra: dict[str, Any] | None = None,
) -> Split:
    """Shuffle the records with `seed` and cut them by `fractions` into train, valid and test (`extra`: more
    manifest entries, e.g. the filters applied before).

    Valid/test records whose item is not in train are dropped and counted in the manifest.
    """
    shares = _check_fractions(fractions)
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise DataError(f"split: seed must be an integer >= 0, got {seed!r}")
    users_raw = _raw_ids(interactions, "user_id")
    items_raw = _raw_ids(interactions, "item_id")
    n_records = len(users_raw)
    where = f"split of {source}" if source else "split"
    order = np.random.default_rng(seed).permutation(n_records)
    n_train = round(shares[0] * n_records)
    n_valid = round(shares[1] * n_records)
    rows = dict(zip(PARTS, np.split(order, [n_train, n_train + n_valid])))
    for name in PARTS:
        if rows[name].size == 0:
            raise DataError(
                f"{where}: the {name} part is empty ({n_records} records, fractions {shares}); "
                f"use more interactions or a larger {name} fraction in --split"
            )

    user_codes, user_ids = pd.factorize(users_raw, sort=True)
    _refuse_duplicates(user_codes, items_raw, user_ids)
    item_ids = pd.factorize(items_raw[rows["train"]], sort=True)[1]
    item_codes = pd.Index(item_ids).get_indexer(items_raw)
    _refuse_users_without_train(user_codes[rows["train"]], user_ids, where)

    shape = (len(user_ids), len(item_ids))
    matrices = {"train": _matrix(user_codes[rows["train"]], item_codes[rows["train"]], shape)}
    dropped = {}
    for name in PARTS[1:]:
        part = rows[name][item_codes[rows[name]] >= 0]
        dropped[name] = int(rows[name].size - part.size)
        if part.size == 0:
            raise DataError(
                f"{where}: no {name} record is left after dropping {dropped[name]} whose item is not in train; "
                f"use more interactions or a larger {name} fraction in --split"
            )
        matrices[name] = _matrix(user_codes[part], item_codes[part], shape)

    manifest = {
        "format_version": FORMAT_VERSION,
        "scheme": "records",
        "source": source,
        "source_sha256": source_sha256,
        "seed": int(seed),
        "fractions": list(shares),
        "n_users": shape[0],
        "n_items": shape[1],
        "counts": {name: int(matrices[name].nnz) for name in PARTS},
        "dropped": dropped,
        "n_records": n_records,
        **(extra or {}),
    }
    return finish_split(matrices, user_ids, item_ids, manifest)


def finish_split(matrices: dict[str, sp.csr_matrix], user_ids: np.ndarray, item_ids: np.ndarray,
                 manifest: dict[str, Any]) -> Split:
    """The Split of `matrices` (train, valid, test, and the fold-in inputs if any), its manifest completed
    with the content hash and the Parquet files' digests."""
    manifest = {**manifest, "split_sha256": content_sha256(matrices, user_ids, item_ids)}
    manifest["file_sha256"] = _file_digests(_parquet_files(matrices, user_ids, item_ids))
    return Split(**matrices, user_ids=user_ids, item_ids=item_ids, manifest=manifest)


def save_split(split: Split, directory: Path) -> None:
    """Write the three Parquet parts and manifest.json atomically; refuse to replace a different split."""
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


def load_split(directory: Path) -> Split:
    """Read a saved split back, checking every file against its sha256 in the manifest and the decoded
    split against the manifest's split_sha256 (`content_sha256`; over the files' bytes for format 1)."""
    directory = Path(directory)
    manifest = _read_manifest(directory)
    blobs = {}
    for name in (*PARTS, *FOLD_IN_PARTS) if manifest.get("scheme") == "users" else PARTS:
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
        matrices[name] = _matrix(rows, cols, shape)
    found = content_sha256(matrices, user_ids, item_ids)
    if not legacy and manifest["split_sha256"] != found:
        raise DataError(
            f"split: split_sha256 {str(manifest['split_sha256'])[:12]} in {directory / MANIFEST} does not match "
            f"the split in its Parquet files ({found[:12]}); delete {directory} and split again"
        )
    return Split(**matrices, user_ids=user_ids, item_ids=item_ids, manifest=manifest)


def content_sha256(matrices: dict[str, sp.csr_matrix], user_ids: np.ndarray, item_ids: np.ndarray) -> str:
    """The split's identity: sha256 of a canonical encoding of its content, whatever wrote its files.

    The same raw ids and (user, item) pairs give the same hex digest under any pyarrow, numpy or scipy
    version and whatever the id arrays' dtypes. The encoding hashed, integers little-endian:

    1. the ASCII header ``raycf-split-content/1``;
    2. ``user_ids`` then ``item_ids`` (sorted, as in `Split`), each as: label(field name),
       label(``int64`` or ``utf8``), the id count as uint64, then every id: an integer id as int64; a
       string id as the uint64 length of its UTF-8 bytes, then those bytes;
    3. ``train``, ``valid`` then ``test`` (then ``valid_fold_in`` and ``test_fold_in``, in a split that has
       them), each as: label(part name), the number of pairs as uint64, then every stored (row, column)
       index pair as two int64, sorted by row then column.

    label(s) is the uint64 length of s's UTF-8 bytes, then those bytes. Matrix values (all 1) and the
    manifest's other fields (seed, source, ...) are not hashed.
    """
    digest = hashlib.sha256(CONTENT_HEADER)
    for name, ids in (("user_ids", user_ids), ("item_ids", item_ids)):
        kind, encoded = _encode_ids(ids, name)
        digest.update(_label(name) + _label(kind) + struct.pack("<Q", len(ids)))
        digest.update(encoded)
    for name in (*PARTS, *FOLD_IN_PARTS):
        if name not in matrices:
            continue
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


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """Three finite numbers > 0 that sum to 1, else DataError naming the split field."""
    numbers = (
        isinstance(fractions, (list, tuple, np.ndarray))
        and len(fractions) == 3
        and all(isinstance(f, (int, float, np.number)) and not isinstance(f, bool) for f in fractions)
    )
    if not numbers or not all(math.isfinite(f) and f > 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise DataError(
            f"split: fractions must be three numbers > 0 (train, valid, test) that sum to 1, got {fractions!r}; "
            "e.g. --split 0.6,0.2,0.2"
        )
    train, valid, test = (float(f) for f in fractions)
    return train, valid, test


def _raw_ids(interactions: pd.DataFrame, column: str) -> np.ndarray:
    """The column as int64, or as an object array of str; DataError for anything else."""
    if column not in interactions.columns:
        raise DataError(f"interactions: no {column} column (found {list(interactions.columns)}); name the id columns")
    values = interactions[column]
    missing = int(values.isna().sum())
    if missing:
        raise DataError(f"interactions: {missing} rows have no {column}; drop them or fix the ratings file")
    kind = pd.api.types.infer_dtype(values, skipna=False)
    if kind == "integer":
        return values.to_numpy(dtype=np.int64)
    if kind == "string":
        return values.to_numpy(dtype=object)
    raise DataError(f"interactions: {column} must hold integer or string ids, found {kind} values; "
                    "convert the column to one id type")


def _refuse_duplicates(user_codes: np.ndarray, items_raw: np.ndarray, user_ids: np.ndarray) -> None:
    """DataError when a (user, item) pair occurs twice: the split would leak it across parts."""
    item_codes, all_items = pd.factorize(items_raw)
    pairs = pd.Index(user_codes.astype(np.int64) * len(all_items) + item_codes)
    if not pairs.is_unique:
        duplicated = pairs.duplicated()
        first = int(np.flatnonzero(duplicated)[0])
        raise DataError(
            f"interactions: {int(duplicated.sum())} duplicate (user_id, item_id) rows, e.g. user "
            f"{_show(user_ids[user_codes[first]])} item {_show(items_raw[first])}; keep one row per pair"
        )


def _refuse_users_without_train(train_user_codes: np.ndarray, user_ids: np.ndarray, where: str) -> None:
    """DataError when some user has no training record."""
    lacking = np.flatnonzero(np.bincount(train_user_codes, minlength=len(user_ids)) == 0)
    if lacking.size:
        raise DataError(
            f"{where}: {lacking.size} of {len(user_ids)} users have no training record (e.g. user "
            f"{_show(user_ids[lacking[0]])}); hold out fewer records (e.g. --split 0.8,0.1,0.1) "
            "or drop users with few interactions"
        )


def _show(raw: object) -> str:
    """A raw id as the user wrote it: strings quoted, numbers plain."""
    return repr(raw) if isinstance(raw, str) else str(raw)


def _matrix(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
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
