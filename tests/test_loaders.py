"""read_interactions: every format gives the same frame, and bad input gives one clear line."""

from __future__ import annotations

import gzip
import hashlib
import re
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
# (1, 10) keeps the earliest timestamp 978300761 beside its max rating 5 (which came at 978300764).
EXPECTED_TIMES = EXPECTED.assign(timestamp=np.array([978300761, 978300762, 978300765, 978300760, 978300763]))
ML20M_HEADER = "userId,movieId,rating,timestamp\n"


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


def _error(path: Path, match: str | None = None, **kwargs) -> str:
    """The one-line DataError that reading `path` raises; `match`: a regex it must contain (re.search)."""
    with pytest.raises(DataError, match=match) as info:
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
    "ml-10m.zip": lambda d: _zip(d / "ml-10m.zip", "ml-10M100K/ratings.dat", _lines("::")),
    "ml-20m.zip": lambda d: _zip(d / "ml-20m.zip", "ml-20m/ratings.csv", ML20M_HEADER + _lines(",")),
    "r.csv": lambda d: _write(d / "r.csv", _csv()),
    "r.csv.gz": lambda d: _write(d / "r.csv.gz", gzip.compress(_csv().encode())),
    "r.tsv": lambda d: _write(d / "r.tsv", _csv("\t")),
    "r.parquet": lambda d: _parquet(d / "r.parquet"),
}


def _parquet(path: Path, **columns) -> Path:
    columns = columns or {name: list(values) for name, values in zip(("user_id", "item_id", "rating"), zip(*RECORDS))}
    pq.write_table(pa.table(columns), path)
    return path


# The MovieLens layouts always keep their timestamps; csv, tsv and parquet only with time_col.
TIMED = {"ratings.dat", "ratings.dat.gz", "ml-1m.zip", "u.data", "ml-100k.zip", "ml-10m.zip", "ml-20m.zip"}


@pytest.mark.parametrize("name", MAKERS)
def test_every_format_gives_the_same_frame(tmp_path, name):
    frame = read_interactions(MAKERS[name](tmp_path))
    pd.testing.assert_frame_equal(frame, EXPECTED_TIMES if name in TIMED else EXPECTED)


def test_explicit_format_overrides_the_name(tmp_path):
    path = _write(tmp_path / "export.txt", _lines("::"))
    pd.testing.assert_frame_equal(read_interactions(path, fmt="movielens"), EXPECTED_TIMES)
    path = _write(tmp_path / "ratings.csv", ML20M_HEADER + _lines(","))
    pd.testing.assert_frame_equal(read_interactions(path, fmt="ml-20m"), EXPECTED_TIMES)


def test_csv_column_options(tmp_path):
    path = _write(tmp_path / "r.csv", _csv(",", header=("uid", "movieId", "score", "ts")))
    frame = read_interactions(path, user_col="uid", item_col="movieId", rating_col="score")
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
    assert frame.values.tolist() == [[1, 10, 5.0, 978300761], [2, 30, 4.0, 978300760], [3, 10, 2.0, 978300763]]


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
        ("ratings.dat", "1::2::3::4\n2::3::4::x\n", 2, "timestamp 'x' is not integer seconds since the epoch"),
        ("ratings.dat", "1::2::3::4\n2::3::4::99999999999999999999\n", 2, "timestamp '99999999999999999999'"),
        ("u.data", "1\t2\t3\t4\n2\t3\t4\t5\n2\t4\t4\t1.5\n", 3, "timestamp '1.5'"),
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


# --- timestamps ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["r.csv", "r.csv.gz", "r.tsv"])
def test_time_col_keeps_integer_seconds(tmp_path, name):
    frame = read_interactions(MAKERS[name](tmp_path), time_col="timestamp")
    pd.testing.assert_frame_equal(frame, EXPECTED_TIMES)
    assert frame["timestamp"].dtype == np.int64


def test_time_col_in_parquet(tmp_path):
    columns = dict(zip(("user_id", "item_id", "rating", "ts"), map(list, zip(*RECORDS))))
    frame = read_interactions(_parquet(tmp_path / "r.parquet", **columns), time_col="ts")
    pd.testing.assert_frame_equal(frame, EXPECTED_TIMES)


ISO = [
    ("2000-12-31", 978220800),
    ("2000-12-31T23:59:59Z", 978307199),
    ("2001-01-01T01:00:00+01:00", 978307200),  # the same second as 2001-01-01T00:00:00Z
    ("2000-12-31 12:00:00", 978264000),  # no zone: read as UTC
    (" 978300760 ", 978300760),  # integer seconds may sit beside ISO text
]


def test_time_col_parses_iso_dates(tmp_path):
    text = "user_id,item_id,when\n" + "".join(f"{k},{k + 10},{value}\n" for k, (value, _) in enumerate(ISO))
    frame = read_interactions(_write(tmp_path / "r.csv", text), time_col="when")
    assert list(frame.columns) == ["user_id", "item_id", "timestamp"]
    assert frame["timestamp"].tolist() == [seconds for _, seconds in ISO]
    assert frame["timestamp"].dtype == np.int64


def test_duplicates_keep_the_earliest_timestamp_without_ratings(tmp_path):
    text = "u,i,t\n1,2,2001-01-01\n1,2,2000-12-31\n1,2,2001-02-01\n2,3,5\n"
    frame = read_interactions(_write(tmp_path / "r.csv", text), user_col="u", item_col="i", time_col="t")
    assert frame.values.tolist() == [[1, 2, 978220800], [2, 3, 5]]


def test_iso_strings_and_typed_times_in_parquet(tmp_path):
    stamps = pa.array([978307199000, 978220800500, 0], pa.timestamp("ms", tz="UTC"))
    for times, expected in [
        (pa.array(["2000-12-31T23:59:59Z", "2000-12-31", "1970-01-01"]), [978307199, 978220800, 0]),
        (stamps, [978307199, 978220800, 0]),
        (pa.array([11322, 11322, 0], pa.date32()), [978220800, 978220800, 0]),
        (pa.array([5.0, 6.0, 7.0]), [5, 6, 7]),
    ]:
        table = pa.table({"user_id": [1, 2, 3], "item_id": [1, 2, 3], "t": times})
        pq.write_table(table, tmp_path / "r.parquet")
        assert read_interactions(tmp_path / "r.parquet", time_col="t")["timestamp"].tolist() == expected


def test_frames_without_time_col_have_no_timestamp(tmp_path):
    for name in ("r.csv", "r.tsv", "r.parquet"):
        assert "timestamp" not in read_interactions(MAKERS[name](tmp_path))


@pytest.mark.parametrize(
    ("value", "line"),
    [("yesterday", 3), ("now", 3), ("", 3), ("2000-13-45", 3), ("1.5", 3), ("99999999999999999999", 3)],
)
def test_bad_csv_timestamp_names_the_line(tmp_path, value, line):
    path = _write(tmp_path / "r.csv", f"user_id,item_id,when\n1,2,2000-12-31\n1,3,{value}\n2,3,5\n")
    words = f"{path} line {line}: when {value!r} is neither integer seconds since the epoch nor an ISO date"
    _error(path, match=f"^{re.escape(words)}.*; fix or remove that line, or pick another --time-col$", time_col="when")


def test_bad_csv_timestamp_after_a_quoted_line_break(tmp_path):
    path = _write(tmp_path / "r.csv", 'user_id,item_id,when\n"a\nb",2,1\n1,3,soon\n')
    _error(path, match=re.escape(f"{path} line 4: when 'soon'"), time_col="when")


@pytest.mark.parametrize(
    ("times", "words"),
    [
        (pa.array(["2000-12-31", "later", "1"]), "row 2: t 'later' is neither integer seconds"),
        (pa.array([1, None, 3]), "row 2: t is missing"),
        (pa.array([1.0, 2.5, 3.0]), "row 2: t is not a whole number of seconds"),
        (pa.array([True, False, True]), "column 't' has type bool"),
    ],
)
def test_bad_parquet_timestamp_names_the_row(tmp_path, times, words):
    path = tmp_path / "r.parquet"
    pq.write_table(pa.table({"user_id": [1, 2, 3], "item_id": [1, 2, 3], "t": times}), path)
    _error(path, match=f"^{re.escape(str(path))}.*{re.escape(words)}.*--time-col$", time_col="t")


@pytest.mark.parametrize("name", ["r.csv", "r.parquet"])
def test_missing_time_column_is_named(tmp_path, name):
    _error(MAKERS[name](tmp_path), match=r"no column 'when' .*; name the timestamp column with --time-col$",
           time_col="when")


def test_time_col_on_fixed_layouts_is_refused(tmp_path):
    _error(MAKERS["ratings.dat"](tmp_path), match=r"^--time-col applies to csv, tsv and parquet files only; movielens",
           time_col="timestamp")


def test_ml20m_header_is_checked(tmp_path):
    path = _zip(tmp_path / "ml-20m.zip", "ml-20m/ratings.csv", "user,movie,rating,ts\n1,2,3,4\n")
    words = f"{path}:ml-20m/ratings.csv line 1: header 'user,movie,rating,ts'"
    _error(path, match=f"^{re.escape(words)}.*; for another CSV file use --format csv$")


def test_ml20m_bad_line_is_named(tmp_path):
    path = _zip(tmp_path / "ml-20m.zip", "ml-20m/ratings.csv", ML20M_HEADER + "1,2,3.5,4\n1,3,4,2015-01-01\n")
    _error(path, match=re.escape(f"{path}:ml-20m/ratings.csv line 3: timestamp '2015-01-01' is not integer seconds"))


# --- Netflix Prize ------------------------------------------------------------------------------


def _netflix(directory: Path, movies: dict[int, str]) -> Path:
    directory.mkdir(exist_ok=True)
    for movie, body in movies.items():
        _write(directory / f"mv_{movie:07d}.txt", f"{movie}:\n{body}")
    return directory


NETFLIX = {
    1: "6,3,2005-09-06\n7,5,2005-09-07\n6,4,2004-01-01\n",  # customer 6 rated movie 1 twice
    2: "7,1,2000-12-31\r\n8,2,2001-01-01\r\n",  # Windows line ends
    3: "",  # a movie without ratings
}


@pytest.mark.parametrize("fmt", ["auto", "netflix"])
def test_netflix_directory(tmp_path, fmt):
    directory = _netflix(tmp_path / "training_set", NETFLIX)
    _write(directory / "README", "not a ratings file")
    frame = read_interactions(directory, fmt=fmt)
    assert list(frame.columns) == ["user_id", "item_id", "rating", "timestamp"]
    assert frame.values.tolist() == [
        [6, 1, 4.0, 1072915200],  # max rating 4 (2004-01-01) and earliest date 2004-01-01
        [7, 1, 5.0, 1126051200],
        [7, 2, 1.0, 978220800],
        [8, 2, 2.0, 978307200],
    ]
    assert [str(t) for t in frame.dtypes] == ["int64", "int64", "float64", "int64"]


def test_netflix_batches_give_the_same_frame(tmp_path, monkeypatch):
    import raycf.data.loaders as loaders

    directory = _netflix(tmp_path / "training_set", NETFLIX)
    whole = read_interactions(directory)
    monkeypatch.setattr(loaders, "_NETFLIX_BATCH", 1)
    pd.testing.assert_frame_equal(read_interactions(directory), whole)


@pytest.mark.parametrize("batch", [1, 1 << 20])
@pytest.mark.parametrize(
    ("body", "line", "words"),
    [
        ("6,3,2005-09-06\n7,5\n", 3, "2 fields, expected 3"),
        ("6,3,2005-09-06\n7,5,2005-02-30\n", 3, "date '2005-02-30' is not a date YYYY-MM-DD"),
        ("6,3,2005-09-06\n7,5,20050906\n", 3, "date '20050906'"),
        ("6,3,2005-09-06\nx,5,2005-09-06\n", 3, "customer id 'x' is not an integer"),
        ("6,-3,2005-09-06\n", 2, "rating '-3' is not a non-negative number"),
        ("6,3,2005-09-06\n\n7,3,2005-09-06\n", 3, "0 fields"),
    ],
)
def test_netflix_bad_line_names_file_and_line(tmp_path, monkeypatch, batch, body, line, words):
    import raycf.data.loaders as loaders

    monkeypatch.setattr(loaders, "_NETFLIX_BATCH", batch)
    directory = _netflix(tmp_path / "training_set", {1: "6,3,2005-09-06\n", 2: body, 3: "7,1,2005-09-06\n"})
    where = f"{directory / 'mv_0000002.txt'} line {line}"
    _error(directory, match=f"^{re.escape(where)}.*{re.escape(words)}.*; fix (or remove )?that line")


@pytest.mark.parametrize("head", ["", "MovieID\n", "12\n", "x:\n", "1,3,2005-09-06\n"])
def test_netflix_bad_first_line(tmp_path, head):
    directory = _netflix(tmp_path / "training_set", {1: "6,3,2005-09-06\n"})
    _write(directory / "mv_0000002.txt", head + "7,3,2005-09-06\n")
    where = re.escape(f"{directory / 'mv_0000002.txt'} line 1")
    _error(directory, match=f"^{where}: .* is not the MovieID: line of a Netflix Prize mv_\\*.txt file; fix that file")


def test_netflix_directory_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    _error(empty, match=re.escape(f"{empty} is a directory without mv_*.txt files; pass a ratings file"))
    _error(empty, match=re.escape(f"{empty} holds no mv_*.txt files; pass the Netflix"), fmt="netflix")
    _error(empty, match=re.escape(f"{empty} is a directory, but --format csv reads one file"), fmt="csv")
    _error(tmp_path / "nothing", match="no such file", fmt="netflix")
    directory = _netflix(tmp_path / "only_empty_movies", {1: "", 2: "\n"})
    _error(directory, match="holds no rating records")
    directory = _netflix(tmp_path / "one_customer", {1: "6,3,2005-09-06\n", 2: "6,3,2005-09-06\n"})
    _error(directory, match="has only one distinct user")
    _error(directory, match="^--time-col applies to csv, tsv and parquet files only; netflix", time_col="date")


def test_netflix_format_reads_a_directory(tmp_path):
    path = _write(tmp_path / "mv_0000009.txt", "9:\n6,3,2005-09-06\n7,5,2005-09-07\n")
    _error(path, match=re.escape("is a file, but --format netflix reads a directory of mv_*.txt files"), fmt="netflix")


def test_sha256_of_a_netflix_directory(tmp_path):
    directory = _netflix(tmp_path / "training_set", NETFLIX)
    digest = sha256_of(directory)
    _write(directory / "README", "ignored")
    assert sha256_of(directory) == digest and len(digest) == 64
    _write(directory / "mv_0000003.txt", "3:\n9,1,2005-01-01\n")
    assert sha256_of(directory) != digest
