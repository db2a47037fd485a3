"""The record split: determinism, fractions, dropped records, saving, loading and refusals."""

from __future__ import annotations

import hashlib
import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from raycf.data.schemes.records import split_interactions
from raycf.data.source import load_split
from raycf.data.split import (
    MASK_PROTOCOLS,
    PARTS,
    Split,
    content_sha256,
    save_split,
)
from raycf.data.synthetic import generate_synthetic
from raycf.errors import DataError

FILES = ("train.parquet", "valid.parquet", "test.parquet", "manifest.json")


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    """Synthetic records plus 60 single-record items, some of which miss train."""
    base = generate_synthetic(n_users=300, n_items=120, mean_interactions=25, min_interactions=10, seed=1)
    rare = pd.DataFrame({"user_id": np.arange(1, 61, dtype=np.int64), "item_id": np.arange(100_001, 100_061)})
    return pd.concat([base, rare], ignore_index=True)


@pytest.fixture(scope="module")
def split(frame: pd.DataFrame) -> Split:
    return split_interactions(frame, seed=5, source="synthetic", source_sha256="abc")


def _pairs(split: Split, name: str) -> set[tuple]:
    rows, cols = getattr(split, name).nonzero()
    return set(zip(split.user_ids[rows].tolist(), split.item_ids[cols].tolist()))


def _assert_same(a: Split, b: Split) -> None:
    for name in PARTS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.shape == y.shape and x.dtype == y.dtype == np.float32
        assert np.array_equal(x.indptr, y.indptr) and np.array_equal(x.indices, y.indices)
        assert np.array_equal(x.data, y.data)
    assert np.array_equal(a.user_ids, b.user_ids) and np.array_equal(a.item_ids, b.item_ids)
    assert a.user_ids.dtype == b.user_ids.dtype and a.item_ids.dtype == b.item_ids.dtype


def test_matrices_and_ids(frame: pd.DataFrame, split: Split) -> None:
    assert np.array_equal(split.user_ids, np.unique(frame["user_id"]))
    assert np.all(np.diff(split.item_ids) > 0)
    assert split.n_users == len(split.user_ids) and split.n_items == len(split.item_ids)
    for name in PARTS:
        matrix = getattr(split, name)
        assert matrix.shape == (split.n_users, split.n_items)
        assert matrix.dtype == np.float32 and np.all(matrix.data == 1.0)
    assert np.all(np.diff(split.train.indptr) > 0), "every user keeps a training record"
    assert set(np.unique(split.train.indices)) == set(range(split.n_items)), "items are exactly the train items"


def test_fractions_and_dropped_records(frame: pd.DataFrame, split: Split) -> None:
    manifest, n = split.manifest, len(frame)
    assert manifest["n_records"] == n
    assert manifest["counts"]["train"] == round(0.6 * n)
    assert abs(manifest["counts"]["valid"] + manifest["dropped"]["valid"] - round(0.2 * n)) <= 1
    assert abs(manifest["counts"]["test"] + manifest["dropped"]["test"] - round(0.2 * n)) <= 1
    assert manifest["dropped"]["valid"] + manifest["dropped"]["test"] > 0
    assert sum(manifest["counts"].values()) + sum(manifest["dropped"].values()) == n

    records = set(zip(frame["user_id"].tolist(), frame["item_id"].tolist()))
    parts = [_pairs(split, name) for name in PARTS]
    assert sum(map(len, parts)) == sum(manifest["counts"].values())
    assert set().union(*parts) <= records and not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    dropped = records - set().union(*parts)
    assert len(dropped) == sum(manifest["dropped"].values())
    assert not {item for _, item in dropped} & set(split.item_ids.tolist())


def test_manifest(split: Split) -> None:
    manifest = split.manifest
    assert manifest["format_version"] == 2 and manifest["seed"] == 5
    assert manifest["source"] == "synthetic" and manifest["source_sha256"] == "abc"
    assert manifest["fractions"] == [0.6, 0.2, 0.2]
    assert (manifest["n_users"], manifest["n_items"]) == (split.n_users, split.n_items)
    assert len(manifest["split_sha256"]) == 64


def test_same_seed_same_bytes(frame: pd.DataFrame, tmp_path: Path) -> None:
    save_split(split_interactions(frame, seed=5), tmp_path / "a")
    save_split(split_interactions(frame, seed=5), tmp_path / "b")
    for name in FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_different_seed_different_split(frame: pd.DataFrame, split: Split) -> None:
    other = split_interactions(frame, seed=6, source="synthetic", source_sha256="abc")
    assert other.manifest["split_sha256"] != split.manifest["split_sha256"]
    assert _pairs(other, "train") != _pairs(split, "train")


def test_save_and_load_round_trip(split: Split, tmp_path: Path) -> None:
    target = tmp_path / "nested" / "split"
    save_split(split, target)
    assert sorted(p.name for p in target.iterdir()) == sorted(FILES)
    assert [p.name for p in target.parent.iterdir()] == ["split"], "no staging directory left behind"
    loaded = load_split(target)
    _assert_same(split, loaded)
    assert loaded.manifest == split.manifest
    train = pd.read_parquet(target / "train.parquet")
    assert list(train.columns) == ["user_id", "item_id"]
    assert set(zip(train["user_id"].tolist(), train["item_id"].tolist())) == _pairs(split, "train")
    _assert_same(split, pickle.loads(pickle.dumps(split)))


def test_string_ids_round_trip(frame: pd.DataFrame, tmp_path: Path) -> None:
    named = pd.DataFrame({"user_id": "u" + frame["user_id"].astype(str), "item_id": "i" + frame["item_id"].astype(str)})
    split = split_interactions(named, seed=5)
    assert isinstance(split.user_ids[0], str) and list(split.user_ids) == sorted(split.user_ids)
    save_split(split, tmp_path / "s")
    loaded = load_split(tmp_path / "s")
    _assert_same(split, loaded)
    assert _pairs(loaded, "test") == _pairs(split, "test")
    assert _pairs(loaded, "test") <= set(zip(named["user_id"], named["item_id"]))


def test_save_is_idempotent_and_refuses_another_split(frame: pd.DataFrame, split: Split, tmp_path: Path) -> None:
    target = tmp_path / "split"
    save_split(split, target)
    before = {name: (target / name).read_bytes() for name in FILES}
    save_split(split, target)
    assert {name: (target / name).read_bytes() for name in FILES} == before
    with pytest.raises(DataError, match="different split"):
        save_split(split_interactions(frame, seed=9), target)
    (tmp_path / "empty").mkdir()
    save_split(split, tmp_path / "empty")
    _assert_same(split, load_split(tmp_path / "empty"))


def test_load_refuses_tampered_or_missing_files(split: Split, tmp_path: Path) -> None:
    target = tmp_path / "split"
    save_split(split, target)
    data = (target / "test.parquet").read_bytes()
    (target / "test.parquet").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(DataError, match="test.parquet"):
        load_split(target)
    (target / "test.parquet").unlink()
    with pytest.raises(DataError, match="test.parquet"):
        load_split(target)
    with pytest.raises(DataError, match="manifest.json"):
        load_split(tmp_path / "nowhere")


@pytest.mark.parametrize("fractions", [(0.5, 0.5), (0.6, 0.3, 0.2), (0.8, 0.2, 0.0), (-0.2, 0.6, 0.6), "abc"])
def test_bad_fractions(frame: pd.DataFrame, fractions: object) -> None:
    with pytest.raises(DataError, match="split: fractions") as caught:
        split_interactions(frame, fractions=fractions)  # type: ignore[arg-type]
    assert "\n" not in str(caught.value)


def test_empty_part() -> None:
    tiny = pd.DataFrame({"user_id": [1, 1, 1, 1, 1], "item_id": [1, 2, 3, 4, 5]})
    with pytest.raises(DataError, match="valid part is empty"):
        split_interactions(tiny, fractions=(0.8, 0.1, 0.1))


def test_user_without_training_record() -> None:
    lonely = pd.DataFrame({"user_id": np.arange(100), "item_id": np.zeros(100, dtype=np.int64)})
    with pytest.raises(DataError, match=r"users have no training record \(e\.g\. user \d+\).*--split"):
        split_interactions(lonely)
    named = lonely.assign(user_id="u" + lonely["user_id"].astype(str))
    with pytest.raises(DataError, match="e.g. user 'u"):
        split_interactions(named)


def test_bad_records() -> None:
    with pytest.raises(DataError, match=r"1 duplicate .*user 3 item 7"):
        split_interactions(pd.DataFrame({"user_id": [*range(10), 3], "item_id": [*range(4, 14), 7]}))
    with pytest.raises(DataError, match="item_id"):
        split_interactions(pd.DataFrame({"user_id": [1, 2], "item_id": [1.5, 2.5]}))
    with pytest.raises(DataError, match="user_id"):
        split_interactions(pd.DataFrame({"user": [1, 2], "item_id": [1, 2]}))


# The split's identity: split_sha256 hashes the content (raw ids, index pairs), never the Parquet bytes.

FIXED = pd.DataFrame([(u, (u * k) % 11) for u in range(1, 9) for k in range(1, 6)], columns=["user_id", "item_id"])
"""40 records of 8 users: a split small enough to pin its hash."""


def _documented_sha256(split: Split) -> str:
    """split_sha256 written out from content_sha256's docstring, in plain Python."""

    def u64(n: int) -> bytes:
        return struct.pack("<Q", n)

    def label(text: str) -> bytes:
        return u64(len(text.encode())) + text.encode()

    out = b"raycf-split-content/1"
    for name, ids in (("user_ids", split.user_ids.tolist()), ("item_ids", split.item_ids.tolist())):
        strings = isinstance(ids[0], str)
        out += label(name) + label("utf8" if strings else "int64") + u64(len(ids))
        out += b"".join(label(i) if strings else struct.pack("<q", i) for i in ids)
    for name in PARTS:
        rows, cols = getattr(split, name).nonzero()
        pairs = sorted(zip(rows.tolist(), cols.tolist()))
        out += label(name) + u64(len(pairs)) + b"".join(struct.pack("<qq", r, c) for r, c in pairs)
    return hashlib.sha256(out).hexdigest()


def test_split_sha256_is_pinned_and_follows_the_documented_encoding() -> None:
    numbered = split_interactions(FIXED, seed=0)
    named = split_interactions(FIXED.assign(user_id="u" + FIXED["user_id"].astype(str),
                                            item_id="é" + FIXED["item_id"].astype(str)), seed=0)
    assert numbered.manifest["split_sha256"] == "9940d929068a49c5750da32ac0a8b54dbcdcb9fcd696533bf55b2175ccbe4f26"
    assert named.manifest["split_sha256"] == "9325fb93047ae0548054b7b2559b5e78267b008f35dfc75bfda686ef0f8049bf"
    for split in (numbered, named):
        assert split.manifest["split_sha256"] == _documented_sha256(split)


def _parts(split: Split) -> dict:
    return {name: getattr(split, name) for name in PARTS}


def test_split_sha256_changes_with_the_content_only(split: Split) -> None:
    same = content_sha256(_parts(split), split.user_ids.astype(np.int32), split.item_ids.astype(np.uint32))
    assert same == split.manifest["split_sha256"], "the ids' dtype is not content"
    shuffled = {**_parts(split), "train": split.train.tocsc().tocsr()}
    assert content_sha256(shuffled, split.user_ids, split.item_ids) == split.manifest["split_sha256"]

    test = split.test.copy()
    test.data[0] = 0  # one test pair fewer
    test.eliminate_zeros()
    fewer = {**_parts(split), "test": test}
    swapped = {**_parts(split), "valid": split.test, "test": split.valid}
    as_text = np.array([str(i) for i in split.user_ids], dtype=object)
    others = [
        content_sha256(fewer, split.user_ids, split.item_ids),
        content_sha256(swapped, split.user_ids, split.item_ids),
        content_sha256(_parts(split), as_text, split.item_ids),
        content_sha256(_parts(split), split.user_ids + 1, split.item_ids),
    ]
    assert len({split.manifest["split_sha256"], *others}) == 5


def _rewrite(path: Path, table, **options) -> None:
    """Write `table` to `path` and record the new file's sha256 in the manifest beside it."""
    pq.write_table(table, path, **options)
    manifest_path = path.parent / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["file_sha256"][path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest_path.write_text(json.dumps(manifest))


def test_split_sha256_survives_parquet_written_differently(split: Split, tmp_path: Path) -> None:
    target = tmp_path / "split"
    save_split(split, target)
    before = (target / "train.parquet").read_bytes()
    _rewrite(target / "train.parquet", pq.read_table(target / "train.parquet"), compression="snappy",
             row_group_size=100, use_dictionary=False)
    assert (target / "train.parquet").read_bytes() != before
    loaded = load_split(target)
    _assert_same(split, loaded)
    assert loaded.manifest["split_sha256"] == split.manifest["split_sha256"]


def test_load_refuses_content_that_is_not_split_sha256(split: Split, tmp_path: Path) -> None:
    target = tmp_path / "split"
    save_split(split, target)
    table = pq.read_table(target / "test.parquet")
    _rewrite(target / "test.parquet", table.slice(1), compression="zstd")  # a record lost, file hash made to fit
    refused = r"split_sha256 \w{12} in .*manifest.json does not match the split in its Parquet .*split again"
    with pytest.raises(DataError, match=refused) as caught:
        load_split(target)
    assert "\n" not in str(caught.value) and str(target) in str(caught.value)


def test_format_1_split_with_its_bytes_hash_still_loads(split: Split, tmp_path: Path) -> None:
    """Runs saved before split_sha256 hashed the content keep their hash, so their checkpoints still match."""
    target = tmp_path / "split"
    save_split(split, target)
    manifest = json.loads((target / "manifest.json").read_text())
    old = hashlib.sha256(b"".join((target / f"{name}.parquet").read_bytes() for name in PARTS)).hexdigest()
    (target / "manifest.json").write_text(json.dumps({**manifest, "format_version": 1, "split_sha256": old}))
    loaded = load_split(target)
    _assert_same(split, loaded)
    assert loaded.manifest["split_sha256"] == old
    (target / "manifest.json").write_text(json.dumps({**manifest, "format_version": 1}))
    with pytest.raises(DataError, match="split_sha256 in .*manifest.json does not match the Parquet files"):
        load_split(target)


def test_known_items_of_each_mask_protocol(small_split: Split) -> None:
    """Test ranks exclude the train items ("train") or the train and validation items ("train+valid");
    validation ranks exclude the train items."""
    train, valid = (small_split.train.toarray() > 0), (small_split.valid.toarray() > 0)
    assert MASK_PROTOCOLS == ("train", "train+valid")
    assert np.array_equal(small_split.known("valid").toarray() > 0, train)
    assert np.array_equal(small_split.known("test", "train").toarray() > 0, train)
    assert np.array_equal(small_split.known("test", "train+valid").toarray() > 0, train | valid)
    assert (small_split.known("test", "train+valid").data == 1).all()
    with pytest.raises(ValueError, match="unknown mask protocol 'valid'"):
        small_split.known("test", "valid")
