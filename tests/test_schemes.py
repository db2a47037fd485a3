"""The `users` (strong generalization, fold-in) and `time` (global cut) split schemes, against hand-worked
expectations on tiny frames, saved and loaded, and used by evaluation (held-out users ranked from their fold-in)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import evaluate_scores

from raycf.data.schemes.time import split_time
from raycf.data.schemes.users import split_users
from raycf.data.source import load_split
from raycf.data.split import save_split
from raycf.errors import DataError
from raycf.eval.evaluation import evaluate_model
from raycf.models.config import TrainConfig
from raycf.train.trainer import train


def pairs(split, part: str) -> set[tuple]:
    """The (raw user, raw item) pairs of one part."""
    rows, cols = getattr(split, part).nonzero()
    return {(split.user_ids[r], split.item_ids[c]) for r, c in zip(rows, cols)}


def frame_of(records: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(records, columns=["user_id", "item_id", "timestamp"][: len(records[0])])


# 8 users: u0..u5 have items 0..9 (u0 also the rare item 99, seen by nobody else); u6 and u7 have 10 items each.
USERS = frame_of([(u, i) for u in range(6) for i in range(10)] + [(0, 99)]
                 + [(u, i) for u in (6, 7) for i in range(10)])


def test_users_scheme_holds_whole_users_out_and_folds_in_their_items() -> None:
    split = split_users(USERS, heldout_users=2, fold_in=0.8, seed=3)
    manifest = split.manifest
    train_users = {u for u, _ in pairs(split, "train")}
    valid_users = {u for u, _ in pairs(split, "valid") | pairs(split, "valid_fold_in")}
    test_users = {u for u, _ in pairs(split, "test") | pairs(split, "test_fold_in")}
    assert len(valid_users) == len(test_users) == 2 and len(train_users) == 4
    assert not (train_users & valid_users) and not (train_users & test_users) and not (valid_users & test_users)
    for part in ("valid", "test"):  # 10 items each (if 99 was held out, it is dropped: not a train item)
        for user in valid_users if part == "valid" else test_users:
            predicted = [i for u, i in pairs(split, part) if u == user]
            folded = [i for u, i in pairs(split, f"{part}_fold_in") if u == user]
            assert (len(predicted), len(folded)) == (2, 8)  # floor(0.2 * 10) predicted, the rest folded in
            assert set(predicted) | set(folded) == set(range(10))
    held_99 = 0 in valid_users | test_users
    assert manifest["dropped"]["valid"] + manifest["dropped"]["test"] == int(held_99)
    assert (99 in split.item_ids) == (not held_99)
    assert manifest["scheme"] == "users" and manifest["heldout_users"] == 2 and manifest["fold_in"] == 0.8
    assert manifest["users"] == {"train": 4, "valid": 2, "test": 2}
    # held-out users have no train row; their inputs are their fold-in items
    rows = [int(np.searchsorted(split.user_ids, user)) for user in sorted(valid_users)]
    assert split.train[rows].nnz == 0
    assert (split.inputs("valid")[rows] != split.valid_fold_in[rows]).nnz == 0
    assert sorted(split.user_ids[split.train_users]) == sorted(train_users)
    again = split_users(USERS, heldout_users=2, fold_in=0.8, seed=3)
    assert again.manifest["split_sha256"] == manifest["split_sha256"]
    other = split_users(USERS, heldout_users=2, fold_in=0.8, seed=4)
    assert other.manifest["split_sha256"] != manifest["split_sha256"]


def test_users_split_round_trips_through_its_parquet_files(tmp_path) -> None:
    split = split_users(USERS, heldout_users=0.25, fold_in=0.5, seed=0)  # a fraction: 2 of 8 users
    save_split(split, tmp_path / "split")
    assert sorted(path.name for path in (tmp_path / "split").iterdir()) == [
        "manifest.json", "test.parquet", "test_fold_in.parquet", "train.parquet", "valid.parquet",
        "valid_fold_in.parquet"]
    loaded = load_split(tmp_path / "split")
    assert loaded.manifest["split_sha256"] == split.manifest["split_sha256"]
    assert list(loaded.user_ids) == list(split.user_ids)
    for part in split.parts:
        assert pairs(loaded, part) == pairs(split, part)


def test_a_held_out_user_without_a_training_item_is_left_out_and_the_split_reloads(tmp_path) -> None:
    """u8's only item, 55, is nobody else's: held out, u8 has no record left; the split leaves u8 out (the Parquet
    parts could not keep a user without records) and reloads to the same content."""
    frame = pd.concat([USERS, frame_of([(8, 55)])], ignore_index=True)
    seed = next(seed for seed in range(100)
                if 55 not in split_users(frame, heldout_users=2, fold_in=0.8, seed=seed).item_ids)
    split = split_users(frame, heldout_users=2, fold_in=0.8, seed=seed)
    assert 8 not in split.user_ids and split.n_users == split.manifest["n_users"] == 8
    assert split.manifest["users_without_records"] == 1
    save_split(split, tmp_path / "split")
    loaded = load_split(tmp_path / "split")
    assert loaded.manifest["split_sha256"] == split.manifest["split_sha256"]
    assert list(loaded.user_ids) == list(split.user_ids)
    # a split whose every user keeps a record has no such field: existing splits keep their content hash
    assert "users_without_records" not in split_users(USERS, heldout_users=2, fold_in=0.8, seed=seed).manifest


@pytest.mark.parametrize(("fold_in", "test_prop"), [(0.8, 0.2), (0.9, 0.1)])
def test_users_scheme_predicts_as_many_items_as_the_papers_preprocessing(fold_in: float, test_prop: float) -> None:
    """Liang et al.'s public preprocessing (split_train_test_proportion, also Steck's EASE) predicts
    int(test_prop * n) of a held-out user's n items (those the training users have) and folds in the rest."""
    # user u has items 0 .. u % 40: every size from 1 to 40, and training users that have all 40 items
    records = [(u, i) for u in range(200) for i in range(u % 40 + 1)]
    split = split_users(frame_of(records), heldout_users=50, fold_in=fold_in, seed=5)
    assert sum(split.manifest["dropped"].values()) == 0
    sizes = set()
    for part in ("valid", "test"):
        predicted = np.diff(getattr(split, part).indptr)
        folded = np.diff(getattr(split, f"{part}_fold_in").indptr)
        held_out = (predicted + folded) > 0
        assert held_out.sum() == 50
        for n, count in zip(predicted[held_out] + folded[held_out], predicted[held_out]):
            assert count == int(test_prop * n), (part, n)
        sizes |= set((predicted + folded)[held_out].tolist())
    assert len(sizes) > 30  # most sizes from 1 to 40 occur among the held-out users


@pytest.mark.parametrize(("heldout", "fold_in", "message"), [
    (4, 0.8, r"4 validation \+ 4 test users held out of 8 users leaves no training user; hold out fewer users"),
    (0.5, 0.8, r"4 validation \+ 4 test users held out of 8 users"),
    (0, 0.8, r"heldout_users must be a count >= 1 or a fraction in \(0, 0\.5\), got 0"),
    (2, 1.0, r"fold_in must be in \(0, 1\), got 1\.0; e\.g\. --fold-in 0\.8"),
    (2, 0.0, r"fold_in must be in \(0, 1\), got 0\.0"),
])
def test_users_scheme_refuses_impossible_settings(heldout: float, fold_in: float, message: str) -> None:
    with pytest.raises(DataError, match=message):
        split_users(USERS, heldout_users=heldout, fold_in=fold_in, seed=0)


# user 0 from t=0, user 1 from t=10, user 2 only after t=20 (a new user), item 9 only after t=20 (a new item)
TIMED = frame_of([(0, i, i) for i in range(8)] + [(1, i, 10 + i) for i in range(8)]
                 + [(2, 0, 25), (2, 1, 26), (0, 9, 27)])


def test_time_scheme_has_no_held_out_record_before_its_cut() -> None:
    split = split_time(TIMED, cuts=(12, 16))
    stamps = dict(zip(zip(TIMED["user_id"], TIMED["item_id"]), TIMED["timestamp"]))
    assert all(stamps[pair] < 12 for pair in pairs(split, "train"))
    assert all(12 <= stamps[pair] < 16 for pair in pairs(split, "valid"))
    assert all(stamps[pair] >= 16 for pair in pairs(split, "test"))
    assert pairs(split, "valid") == {(1, 2), (1, 3), (1, 4), (1, 5)}
    assert pairs(split, "test") == {(1, 6), (1, 7)}  # user 2 (new) and item 9 (new) dropped
    assert split.manifest["dropped"] == {"valid": {"new_user": 0, "new_item": 0},
                                         "test": {"new_user": 2, "new_item": 1}}
    assert split.manifest["cuts"] == [12, 16] and split.manifest["cuts_utc"][0] == "1970-01-01T00:00:12"
    # test users are ranked from everything before the test cut: their train and validation items
    row = int(np.searchsorted(split.user_ids, 1))
    assert set(split.inputs("test")[row].indices) == set(split.inputs("valid")[row].indices) | {2, 3, 4, 5}


def test_time_scheme_cuts_at_fractions_of_the_records_in_time_order() -> None:
    # user u's i-th record at time 4i + u, items rotated per user so that every item occurs in train
    frame = frame_of([(u, (i + 3 * u) % 10, 4 * i + u) for u in range(4) for i in range(10)])
    split = split_time(frame, fractions=(0.5, 0.25, 0.25))
    assert split.manifest["cuts"] == [20, 30]  # the times of the 21st and 31st of 40 records in time order
    assert split.manifest["counts"] == {"train": 20, "valid": 10, "test": 10}


@pytest.mark.parametrize(("frame", "cuts", "message"), [
    (USERS, (1, 2), r"the time scheme needs a timestamp per record .* name the column with --time-col"),
    (TIMED, (16, 12), r"time cuts must increase, got \[16, 12\]"),
    (TIMED, (-5, 12), r"no record before the first time cut; move the cut later"),
])
def test_time_scheme_refuses_what_it_cannot_cut(frame: pd.DataFrame, cuts: tuple, message: str) -> None:
    with pytest.raises(DataError, match=message):
        split_time(frame, cuts=cuts)


def test_held_out_users_are_ranked_from_their_fold_in_items() -> None:
    """Validation of an EASE fit on a users split equals ranking each held-out user's fold-in row by hand."""
    rng = np.random.default_rng(0)
    records = sorted({(int(u), int(i)) for u, i in zip(rng.integers(0, 120, 3000), rng.integers(0, 60, 3000))})
    split = split_users(frame_of(records), heldout_users=20, fold_in=0.5, seed=1)
    model = train(split, TrainConfig.for_model("ease", l2=10.0)).model
    weights = model.weights.numpy()
    by_hand = evaluate_scores(lambda users: split.valid_fold_in[users] @ weights, split.valid_fold_in, split.valid)
    through = evaluate_model(model, split, "valid")
    assert np.array_equal(by_hand["hits"], through["hits"]) and int((by_hand["n_heldout"] > 0).sum()) == 20
