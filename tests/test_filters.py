"""filter_interactions: per-user and per-item minimums, the k-core at its fixpoint, and what the manifest records."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from raycf.data.filters import filter_interactions
from raycf.errors import DataError

# A chain that one pass cannot settle at k=2: D has one item (3), so once D goes item 3 has only C,
# then C has only item 2. The 2-core is users A, B x items 1, 2, reached after three pruning passes.
CHAIN = pd.DataFrame({"user_id": list("AABBCCD"), "item_id": [1, 2, 1, 2, 2, 3, 3]})


def _pairs(frame: pd.DataFrame) -> list[tuple]:
    return sorted(zip(frame["user_id"], frame["item_id"]))


def _error(frame: pd.DataFrame, match: str, **settings) -> None:
    """filter_interactions refuses `settings` with a one-line DataError that matches `match` (re.search)."""
    with pytest.raises(DataError, match=match) as info:
        filter_interactions(frame, **settings)
    assert "\n" not in str(info.value)


def test_k_core_reaches_its_fixpoint():
    frame, info = filter_interactions(CHAIN, k_core=2)
    assert _pairs(frame) == [("A", 1), ("A", 2), ("B", 1), ("B", 2)]
    assert frame.groupby("user_id").size().min() >= 2 and frame.groupby("item_id").size().min() >= 2
    assert info["k_core_iterations"] == 3
    assert info["before"] == {"records": 7, "users": 4, "items": 3}
    assert info["after"] == {"records": 4, "users": 2, "items": 2}
    assert info["order"] == ["k_core"] and info["k_core"] == 2
    assert info["min_user_items"] is None and info["min_item_users"] is None


def test_one_pass_of_each_minimum_is_not_a_k_core():
    frame, info = filter_interactions(CHAIN, min_user_items=2, min_item_users=2)
    # items first: every item has 2+ users, nothing goes; then users: D goes, which leaves item 3 with C only.
    assert _pairs(frame) == [("A", 1), ("A", 2), ("B", 1), ("B", 2), ("C", 2), ("C", 3)]
    assert frame.groupby("item_id").size().min() == 1
    assert info["order"] == ["min_item_users", "min_user_items"] and info["k_core_iterations"] == 0
    assert [(step["filter"], step["value"], step["records"]) for step in info["steps"]] == [
        ("min_item_users", 2, 7),
        ("min_user_items", 2, 6),
    ]


# U2's only other item c has one user: dropping items first leaves U2 with one item, which the user filter drops.
ORDER = pd.DataFrame({"user_id": ["U1", "U1", "U2", "U2", "U3", "U3"], "item_id": ["a", "b", "a", "c", "a", "b"]})


def test_items_are_filtered_before_users():
    frame, info = filter_interactions(ORDER, min_user_items=2, min_item_users=2)
    assert _pairs(frame) == [("U1", "a"), ("U1", "b"), ("U3", "a"), ("U3", "b")]
    assert frame.groupby("user_id").size().min() >= 2
    assert info["after"] == {"records": 4, "users": 2, "items": 2}


@pytest.mark.parametrize(
    ("settings", "pairs"),
    [
        ({"min_item_users": 2}, [("U1", "a"), ("U1", "b"), ("U2", "a"), ("U3", "a"), ("U3", "b")]),
        ({"min_user_items": 2}, [("U1", "a"), ("U1", "b"), ("U2", "a"), ("U2", "c"), ("U3", "a"), ("U3", "b")]),
        ({"min_item_users": 3, "min_user_items": 1}, None),
    ],
)
def test_each_minimum_alone(settings, pairs):
    if pairs is None:  # only item a has 3 users: one item is too few
        _error(ORDER, r"^--min-item-users 3 leaves 3 user\(s\) and 1 item\(s\), too few to recommend", **settings)
        return
    frame, info = filter_interactions(ORDER, **settings)
    assert _pairs(frame) == pairs
    assert info["order"] == list(settings)


def test_no_filter_returns_the_frame_as_it_is():
    frame = CHAIN.set_axis(range(10, 17))
    out, info = filter_interactions(frame)
    assert _pairs(out) == _pairs(frame) and list(out.index) == list(range(7))
    assert info["before"] == info["after"] == {"records": 7, "users": 4, "items": 3}
    assert info["steps"] == [] and info["order"] == [] and info["k_core_iterations"] == 0


def test_other_columns_and_dtypes_are_kept():
    frame = CHAIN.assign(
        rating=np.arange(7, dtype=np.float64), timestamp=np.arange(100, 107, dtype=np.int64)
    ).set_axis(range(50, 57))
    out, _ = filter_interactions(frame, k_core=2)
    assert list(out.columns) == ["user_id", "item_id", "rating", "timestamp"]
    assert out["rating"].tolist() == [0.0, 1.0, 2.0, 3.0] and out["timestamp"].tolist() == [100, 101, 102, 103]
    assert out.dtypes.equals(frame.dtypes) and list(out.index) == [0, 1, 2, 3]


def test_info_is_json_ready():
    _, info = filter_interactions(CHAIN, min_user_items=np.int64(1), min_item_users=1, k_core=2)
    assert json.loads(json.dumps(info)) == info
    assert info["min_user_items"] == 1 and type(info["min_user_items"]) is int


def _naive_k_core(frame: pd.DataFrame, k: int) -> pd.DataFrame:
    """Alternately drop users, then items, below k until nothing changes."""
    while True:
        users = frame.groupby("user_id")["item_id"].transform("size")
        frame = frame[users >= k]
        items = frame.groupby("item_id")["user_id"].transform("size")
        if (items >= k).all() and (users >= k).all():
            return frame
        frame = frame[items >= k]


@pytest.mark.parametrize("k", [2, 3, 4, 5])
def test_k_core_matches_a_naive_pruning(k):
    rng = np.random.default_rng(k)
    user_activity, item_popularity = rng.uniform(0.02, 0.8, 80), rng.uniform(0.02, 0.8, 50)
    users, items = np.nonzero(rng.random((80, 50)) < np.outer(user_activity, item_popularity))
    frame = pd.DataFrame({"user_id": users, "item_id": items})
    out, info = filter_interactions(frame, k_core=k)
    assert _pairs(out) == _pairs(_naive_k_core(frame, k))
    assert out.groupby("user_id").size().min() >= k and out.groupby("item_id").size().min() >= k
    assert info["after"]["records"] == len(out) and info["k_core_iterations"] >= 1


@pytest.mark.parametrize("name", ["min_user_items", "min_item_users", "k_core"])
@pytest.mark.parametrize("value", [0, -3, 2.5, True, "5"])
def test_bad_settings_name_the_option(name, value):
    option = "--" + name.replace("_", "-")
    _error(CHAIN, f"^{option} must be an integer >= 1, got {re.escape(repr(value))}; pass e.g. {option} 5$",
           **{name: value})


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"k_core": 50}, r"^--k-core 50 leaves no interactions \(7 records, 4 users, 3 items before filtering\); "
                         r"lower it$"),
        ({"k_core": 3}, r"^--k-core 3 leaves no interactions"),
        ({"min_user_items": 3}, r"^--min-user-items 3 leaves no interactions"),
        ({"min_item_users": 3}, r"^--min-item-users 3 leaves 3 user\(s\) and 1 item\(s\), too few to recommend"),
        ({"min_item_users": 4}, r"^--min-item-users 4 leaves no interactions"),
        # the minimums pass, then the k-core takes everything
        ({"min_item_users": 1, "min_user_items": 2, "k_core": 4}, r"^--k-core 4 leaves no interactions"),
    ],
)
def test_filters_leaving_too_little_are_refused(settings, words):
    _error(CHAIN, words, **settings)


def test_one_user_left_is_refused():
    frame = pd.DataFrame({"user_id": [1, 1, 1, 2], "item_id": [1, 2, 3, 1]})
    _error(frame, r"^--min-user-items 2 leaves 1 user\(s\) and 3 item\(s\)", min_user_items=2)


def test_missing_column():
    _error(pd.DataFrame({"user_id": [1, 2]}), r"^interactions: no item_id column", k_core=1)
