"""read_interactions: every format gives the same frame, and bad input gives one clear line."""

from __future__ import annotations

import gzip
import hashlib
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raycf.data.loaders import read_interactions, sha256_of
from raycf.errors import DataError

# (user, item, rating, timestamp); (1, 10) appears twice and keeps its max rating 5.
RECORDS = [
    (2, 30, 4, 978300760),
    (1, 10, 3, 978300761),
    (1, 20, 1, 978300762),
    (3, 10, 2, 978300763),
    (1, 10, 5, 978300764),
    (2, 10, 0, 978300765),
]
EXPECTED = pd.DataFrame(
    {
        "user_id": [1, 1, 2, 2, 3],
        "item_id": [10, 20, 10, 30, 10],
        "rating": [5.0, 1.0, 0.0, 4.0, 2.0],
    }
)


def _lines(sep: str, records=RECORDS) -> str:
    return "".join(sep.join(str(v) for v in record) + "\n" for record in records)


def _csv(sep: str = ",", header=("user_id", "item_id", "rating", "timestamp")) -> str:
    return sep.join(header) + "\n" + _lines(sep)


def _zip(path: Path, member: str, text: str) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(member, text)
    return path


def _write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def _error(path: Path, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        read_interactions(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


MAKERS = {
    "ratings.dat": lambda d: _write(d / "ratings.dat", _lines("::")),
    "ratings.dat.gz": lambda d: _write(d / "ratings.dat.gz", gzip.compress(_lines("::").encode())),
    "ml-1m.zip": lambda d: _zip(d / "ml-1m.zip", "ml-1m/ratings.dat", _lines("::")),
    "u.data": lambda d: _write(d / "u.data", _lines("\t")),
    "ml-100k.zip": lambda d: _zip(d / "ml-100k.zip", "ml-100k/u.data", _lines("\t")),
    "r.csv": lambda d: _write(d / "r.csv", _csv()),
    "r.csv.gz": lambda d: _write(d / "r.csv.gz", gzip.compress(_csv().encode())),
    "r.tsv": lambda d: _write(d / "r.tsv", _csv("\t")),
    "r.parquet": lambda d: _parquet(d / "r.parquet"),
}


def _parquet(path: Path, **columns) -> Path:
    columns = columns or {name: list(values) for name, values in zip(("user_id", "item_id", "rating"), zip(*RECORDS))}
    pq.write_table(pa.table(columns), path)
    return path


@pytest.mark.parametrize("name", MAKERS)
def test_every_format_gives_the_same_frame(tmp_path, name):
    frame = read_interactions(MAKERS[name](tmp_path))
    pd.testing.assert_frame_equal(frame, EXPECTED)


def test_explicit_format_overrides_the_name(tmp_path):
    path = _write(tmp_path / "export.txt", _lines("::"))
    pd.testing.assert_frame_equal(read_interactions(path, fmt="movielens"), EXPECTED)


def test_csv_column_options_and_separator(tmp_path):
    path = _write(tmp_path / "r.csv", _csv(";", header=("uid", "movieId", "score", "ts")))
    frame = read_interactions(path, sep=";", user_col="uid", item_col="movieId", rating_col="score")
    pd.testing.assert_frame_equal(frame, EXPECTED)


def test_csv_without_ratings_dedupes_and_sorts(tmp_path):
    path = _write(tmp_path / "r.csv", "user_id,item_id\nb,2\na,1\nb,2\na,3\n")
    frame = read_interactions(path)
    assert list(frame.columns) == ["user_id", "item_id"]
    assert frame.values.tolist() == [["a", 1], ["a", 3], ["b", 2]]
    assert frame["item_id"].dtype == np.int64
    assert frame["user_id"].dtype != np.int64


def test_integer_strings_in_parquet_become_int64(tmp_path):
    path = _parquet(tmp_path / "r.parquet", user_id=["1", "2", "3"], item_id=["x", "y", "x"])
    frame = read_interactions(path)
    assert frame["user_id"].dtype == np.int64
    assert frame["item_id"].tolist() == ["x", "y", "x"]


def test_min_rating_keeps_ratings_at_or_above(tmp_path):
    frame = read_interactions(MAKERS["ratings.dat"](tmp_path), min_rating=2)
    assert frame.values.tolist() == [[1, 10, 5.0], [2, 30, 4.0], [3, 10, 2.0]]


def test_min_rating_leaving_nothing(tmp_path):
    path = MAKERS["ratings.dat"](tmp_path)
    assert "--min-rating" in _error(path, min_rating=6)


def test_min_rating_without_ratings(tmp_path):
    path = _write(tmp_path / "r.csv", "user_id,item_id\n1,2\n2,3\n")
    message = _error(path, min_rating=3)
    assert str(path) in message and "--min-rating" in message and "--rating-col" in message


def test_sha256_of(tmp_path):
    path = _write(tmp_path / "x.bin", b"abc" * 1000)
    assert sha256_of(path) == hashlib.sha256(b"abc" * 1000).hexdigest()


# --- errors -------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    path = tmp_path / "nope.dat"
    assert str(path) in _error(path)


@pytest.mark.parametrize("content", [b"", b"\n\n", b"  \n"])
def test_empty_file(tmp_path, content):
    path = _write(tmp_path / "ratings.dat", content)
    message = _error(path)
    assert str(path) in message and "empty" in message


def test_csv_with_only_a_header(tmp_path):
    path = _write(tmp_path / "r.csv", "user_id,item_id\n")
    assert "no rating records" in _error(path)


@pytest.mark.parametrize(
    ("name", "text", "line", "words"),
    [
        ("ratings.dat", "1::2::3::4\n1::3::4::5\n2::5::1\n", 3, "3 fields, expected 4"),
        ("ratings.dat", "1::2::3::4\n\n2::5::1::4\n", 2, "0 fields"),
        ("u.data", "1\t2\t3\t4\n1\t3\t4\t5\t6\n", 2, "5 fields, expected 4"),
        ("ratings.dat", "1::2::3::4\nx1::3::4::5\n", 2, "'x1' is not an integer"),
        ("ratings.dat", "1::2::3::4\n1::2.5::4::5\n", 2, "'2.5' is not an integer"),
        ("ratings.dat", "1::2::3::4\n2::3::good::5\n", 2, "rating 'good'"),
        ("ratings.dat", "1::2::3::4\n2::3::-1::5\n", 2, "rating '-1'"),
        ("ratings.dat", "1::2::3::4\n2::3::4::5\n2::4::nan::5\n", 3, "rating 'nan'"),
        ("ratings.dat", "UserID::MovieID::Rating::Timestamp\n1::2::3::4\n", 1, "--format csv"),
        ("u.data", "user\titem\trating\tts\n1\t2\t3\t4\n", 1, "--format csv"),
        ("r.csv", "user_id,item_id,rating\n1,2,3\n1,3,4,9\n", 3, "4 fields, expected 3"),
        ("r.csv", "user_id,item_id,rating\n1,2,3\n,3,4\n", 3, "user_id is empty"),
        ("r.csv", "user_id,item_id,rating\n1,2,3\n2,3,lots\n", 3, "rating 'lots'"),
        ("r.tsv", "user_id\titem_id\trating\n1\t2\t3\n2\t3\tNaN\n", 3, "rating 'NaN'"),
    ],
)
def test_bad_line_is_named(tmp_path, name, text, line, words):
    path = _write(tmp_path / name, text)
    message = _error(path)
    assert f"{path} line {line}" in message
    assert words in message


def test_bad_line_inside_a_zip_names_archive_and_member(tmp_path):
    path = _zip(tmp_path / "ml-1m.zip", "ml-1m/ratings.dat", "1::2::3::4\n1::2::3\n")
    assert f"{path}:ml-1m/ratings.dat line 2" in _error(path)


@pytest.mark.parametrize("content", [bytes(range(256)) * 4, b"1::2::3::4\n\xff\xfe::1::2::3\n"])
def test_binary_or_undecodable_file(tmp_path, content):
    path = _write(tmp_path / "ratings.dat", content)
    message = _error(path)
    assert str(path) in message and ("binary" in message or "UTF-8" in message)


def test_zip_without_the_member(tmp_path):
    path = _zip(tmp_path / "ml-1m.zip", "ml-1m/movies.dat", "1::Toy Story::Animation\n")
    message = _error(path)
    assert str(path) in message and "ratings.dat" in message
    message = _error(path, fmt="movielens")
    assert str(path) in message and "ml-1m/movies.dat" in message


@pytest.mark.parametrize("name", ["ml-1m.zip", "ratings.dat.gz"])
def test_corrupted_archive(tmp_path, name):
    good = MAKERS[name](tmp_path).read_bytes()
    path = _write(tmp_path / name, good[: len(good) // 2])
    message = _error(path, fmt="movielens")
    assert str(path) in message and "corrupted" in message


def test_unknown_format(tmp_path):
    path = MAKERS["r.csv"](tmp_path)
    message = _error(path, fmt="excel")
    assert "'excel'" in message and "parquet" in message


def test_undetectable_name(tmp_path):
    path = _write(tmp_path / "ratings.json", "{}")
    message = _error(path)
    assert str(path) in message and "--format" in message and "ml-100k" in message


@pytest.mark.parametrize(
    ("options", "missing", "option"),
    [
        ({"user_col": "uid"}, "'uid'", "--user-col"),
        ({"item_col": "movieId"}, "'movieId'", "--item-col"),
        ({"rating_col": "stars"}, "'stars'", "--rating-col"),
    ],
)
@pytest.mark.parametrize("name", ["r.csv", "r.parquet"])
def test_missing_columns_are_listed(tmp_path, name, options, missing, option):
    path = MAKERS[name](tmp_path)
    message = _error(path, **options)
    assert str(path) in message and missing in message and option in message
    assert "user_id, item_id, rating" in message


def test_csv_without_header_is_told_to_add_one(tmp_path):
    path = _write(tmp_path / "r.csv", _lines(","))
    assert "header row" in _error(path)


def test_parquet_bad_rating_names_the_row(tmp_path):
    path = _parquet(tmp_path / "r.parquet", user_id=[1, 2, 3], item_id=[1, 2, 3], rating=[1.0, float("nan"), 2.0])
    assert f"{path} row 2" in _error(path)


def test_parquet_garbage(tmp_path):
    path = _write(tmp_path / "r.parquet", b"not parquet at all")
    assert str(path) in _error(path)


@pytest.mark.parametrize(
    ("text", "what"),
    [("user_id,item_id\n1,2\n1,3\n", "one distinct user"), ("user_id,item_id\n1,2\n3,2\n", "one distinct item")],
)
def test_one_user_or_one_item_is_refused(tmp_path, text, what):
    path = _write(tmp_path / "r.csv", text)
    message = _error(path)
    assert str(path) in message and what in message


def test_sep_on_movielens_is_refused(tmp_path):
    assert "--sep" in _error(MAKERS["ratings.dat"](tmp_path), sep=";")
