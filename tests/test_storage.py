"""Outputs committed whole on a local filesystem, and the pointer that object-store outputs are read through
(the object-store side runs against a real S3 server in test_cluster_object_store.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raycf.errors import RaycfError
from raycf.storage.atomic import PendingOutput
from raycf.storage.location import POINTER_FILE, Location


def write(output: PendingOutput, name: str, text: str) -> None:
    output.staged.write_bytes(name, text.encode())


def test_local_commit_replaces_the_whole_output_and_discard_keeps_the_old(tmp_path: Path) -> None:
    final = Location.of(str(tmp_path / "out"), "")
    first = PendingOutput.begin(final)
    write(first, "a.txt", "first")
    write(first, "only-in-first.txt", "x")
    first.commit()
    first.discard()  # after a commit: nothing to remove
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["a.txt", "only-in-first.txt"]
    second = PendingOutput.begin(final)
    write(second, "a.txt", "second")
    second.discard()  # a run that failed: the first output stays as it was, no staging left
    assert (tmp_path / "out" / "a.txt").read_text() == "first"
    third = PendingOutput.begin(final)
    write(third, "a.txt", "third")
    third.commit()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["a.txt"]


def test_readers_follow_a_pointer_and_refuse_a_broken_one(tmp_path: Path) -> None:
    out = tmp_path / "scores"
    (out / "v-1-abc").mkdir(parents=True)
    (out / "v-1-abc" / "summary.json").write_text("{}")
    assert Location.of(str(out), "").current().path == str(out)  # no pointer: the directory itself
    (out / POINTER_FILE).write_text(json.dumps({"version": "v-1-abc"}))
    assert Location.of(str(out), "").current().path == str(out / "v-1-abc")  # a run copied from S3
    for broken in ("{not json", json.dumps({"version": "../elsewhere"}), json.dumps({"version": "v-2-gone"})):
        (out / POINTER_FILE).write_text(broken)
        with pytest.raises(RaycfError, match=r"current\.json: names .*, which is not an output version there"):
            Location.of(str(out), "").current()


def test_json_outputs_write_missing_values_as_null() -> None:
    from raycf.storage.json_text import json_text

    text = json_text({"ndcg": float("nan"), "history": [{"loss": float("inf")}, (1.5, float("-inf"))], "k": 5})
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"history": [{"loss": None}, [1.5, None]], "k": 5, "ndcg": None}
