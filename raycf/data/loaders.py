"""Read rating files (MovieLens, CSV/TSV, Parquet, Netflix Prize) into one validated interactions frame.

Columns: user_id, item_id, then rating when the source has one, then timestamp (int64 seconds since
the epoch, UTC) when the source has one: always for the MovieLens and Netflix layouts, for csv, tsv
and parquet only when `time_col` names the column.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import hashlib
import io
import math
import re
import zipfile
import zlib
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import NoReturn

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from raycf.errors import DataError

FORMATS = ("movielens", "ml-100k", "ml-20m", "netflix", "csv", "tsv", "parquet")
_FORMAT_HINT = f"pass --format with one of {', '.join(FORMATS)}"
_INT = re.compile(r"[+-]?\d+")
_INT64 = (-(2**63), 2**63 - 1)
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_ISO_START = r"^\d{4}-\d{2}-\d{2}"
"""An ISO date or date-time starts with a dashed date (this also keeps out pandas' `now` and `today`)."""
_TIME_WORDS = "neither integer seconds since the epoch nor an ISO date or date-time (e.g. 2005-09-06T10:00:00Z)"
_NETFLIX_HEAD = re.compile(r"\s*(\d+)\s*:\s*")
_NETFLIX_FILES = "mv_*.txt"
_NETFLIX_BATCH = 64 << 20
"""Bytes of mv_*.txt bodies parsed in one pyarrow call."""
_UNIT_SEP = "\x1f"
"""Stands in for MovieLens' two-character `::` so that the CSV reader sees one character."""


@dataclass(frozen=True)
class _Layout:
    """The shape of a delimited file, used to find the line that breaks it."""

    delimiter: str
    quoting: bool
    header: bool
    int_ids: bool
    n_fields: int
    ids: tuple[tuple[str, int], ...]
    rating: tuple[str, int] | None
    describe: str
    time: tuple[str, int] | None = None
    """The timestamp field checked line by line: integer seconds ("int") or a YYYY-MM-DD date ("date")."""
    time_kind: str = "int"


_MOVIELENS = {
    # format: (file, or member of the official zip; separator; header line or None; layout in words)
    "movielens": ("ratings.dat", "::", None, "UserID::MovieID::Rating::Timestamp"),
    "ml-100k": ("u.data", "\t", None, "user id<TAB>item id<TAB>rating<TAB>timestamp"),
    "ml-20m": (
        "ratings.csv",
        ",",
        "userId,movieId,rating,timestamp",
        "the header userId,movieId,rating,timestamp, then userId,movieId,rating,timestamp lines",
    ),
}
"""Fixed MovieLens layouts; their timestamp (integer seconds) is always kept. `movielens` also reads
ML-10M's ratings.dat; `ml-20m` also fits ML-25M and ml-latest's ratings.csv."""


def read_interactions(
    path: str | Path,
    *,
    fmt: str = "auto",
    user_col: str = "user_id",
    item_col: str = "item_id",
    rating_col: str | None = None,
    min_rating: float | None = None,
    time_col: str | None = None,
) -> pd.DataFrame:
    """One row per distinct (user_id, item_id), sorted, max rating and earliest timestamp kept.

    `path` is a ratings file, or for `fmt="netflix"` the Netflix Prize training_set directory of
    mv_*.txt files (also detected by `auto`). `time_col` names the timestamp column of a csv, tsv or
    parquet file (integer seconds since the epoch or ISO dates/date-times, read as int64 seconds UTC);
    the MovieLens and Netflix layouts always keep theirs. Raises DataError on bad input.
    """
    path = Path(path)
    if path.is_dir():
        fmt = detect_format(path) if fmt == "auto" else fmt
        if fmt in FORMATS and fmt != "netflix":
            raise DataError(f"{path} is a directory, but --format {fmt} reads one file; pass the ratings file")
    elif not path.is_file():
        raise DataError(f"{path}: no such file; check the path given with --ratings")
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r} for {path}; {_FORMAT_HINT} (or auto)")
    if time_col is not None and fmt not in ("csv", "tsv", "parquet"):
        raise DataError(
            f"--time-col applies to csv, tsv and parquet files only; {fmt} ({path}) always keeps its"
            " timestamp: drop --time-col"
        )
    if fmt in _MOVIELENS:
        frame = _read_movielens(path, fmt)
    elif fmt == "netflix":
        frame = _read_netflix(path)
    elif fmt == "parquet":
        frame = _read_parquet(path, user_col, item_col, rating_col, time_col)
    else:
        frame = _read_delimited(path, "," if fmt == "csv" else "\t", user_col, item_col, rating_col, time_col)
    return _finish(frame, path, min_rating)


def detect_format(path: Path) -> str:
    """The format implied by the file name (and a zip's members), or `netflix` for a directory of mv_*.txt."""
    if path.is_dir():
        if next(path.glob(_NETFLIX_FILES), None) is None:
            raise DataError(
                f"{path} is a directory without {_NETFLIX_FILES} files; pass a ratings file,"
                " or the Netflix Prize training_set directory"
            )
        return "netflix"
    name = path.name.lower()
    if name.endswith(".zip"):
        members = _zip_names(path)
        for fmt, (member, *_) in _MOVIELENS.items():
            if _find_member(members, member):
                return fmt
        raise DataError(
            f"{path} holds none of ratings.dat, u.data, ratings.csv; unzip it and pass the ratings file"
        )
    base = name.removesuffix(".gz")
    if base.endswith(".dat"):
        return "movielens"
    if base == "u.data":
        return "ml-100k"
    for suffix in ("csv", "tsv", "parquet"):
        if base.endswith(f".{suffix}"):
            return suffix
    raise DataError(f"{path}: cannot tell the format from the file name; {_FORMAT_HINT}")


def sha256_of(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks; of a (Netflix) directory: of its mv_*.txt files' names and sha256s."""
    path = Path(path)
    if path.is_dir():
        listing = "".join(f"{file.name}\t{sha256_of(file, chunk_size)}\n" for file in sorted(path.glob(_NETFLIX_FILES)))
        return hashlib.sha256(listing.encode()).hexdigest()
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _read_movielens(path: Path, fmt: str) -> pd.DataFrame:
    member, sep, header, describe = _MOVIELENS[fmt]
    source, data = _load_bytes(path, member)
    text = _decode(source, data)
    if header is not None:
        first = _first_line_of(text).rstrip("\r")
        if first.strip() != header:
            raise DataError(
                f"{source} line 1: header {first[:80]!r} is not {header!r} ({fmt} layout);"
                f" for another CSV file use --format csv"
            )
    delimiter = sep if len(sep) == 1 else _UNIT_SEP
    if delimiter != sep:
        data = data.replace(sep.encode(), delimiter.encode())
        text = text.replace(sep, delimiter)
    layout = _Layout(
        delimiter=delimiter,
        quoting=False,
        header=header is not None,
        int_ids=True,
        n_fields=4,
        ids=(("user id", 0), ("item id", 1)),
        rating=("rating", 2),
        describe=describe,
        time=("timestamp", 3),
    )
    types = {"user_id": pa.int64(), "item_id": pa.int64(), "rating": pa.float64(), "timestamp": pa.int64()}
    names = ["user_id", "item_id", "rating", "timestamp"]
    table = _parse(source, data, text, layout, types, names, skip_rows=int(header is not None))
    if _any_bad_rating(table["rating"]):
        _diagnose(source, text, layout, "bad rating")
    return _frame(table["user_id"], table["item_id"], table["rating"], table["timestamp"])


def _read_netflix(path: Path) -> pd.DataFrame:
    """A directory of Netflix Prize mv_*.txt files: a line `MovieID:`, then CustomerID,Rating,YYYY-MM-DD lines."""
    if not path.is_dir():
        raise DataError(
            f"{path} is a file, but --format netflix reads a directory of {_NETFLIX_FILES} files;"
            " pass the Netflix Prize training_set directory"
        )
    files = sorted(path.glob(_NETFLIX_FILES))
    if not files:
        raise DataError(f"{path} holds no {_NETFLIX_FILES} files; pass the Netflix Prize training_set directory")
    layout = _Layout(
        delimiter=",",
        quoting=False,
        header=True,
        int_ids=True,
        n_fields=3,
        ids=(("customer id", 0),),
        rating=("rating", 1),
        describe="a first line MovieID: then CustomerID,Rating,YYYY-MM-DD lines",
        time=("date", 2),
        time_kind="date",
    )
    tables, movies, counts = [], [], []
    batch: list[tuple[Path, bytes]] = []
    size = 0
    for file in files:
        source, data = _load_bytes(file, None)
        head, _, body = data.partition(b"\n")
        match = _NETFLIX_HEAD.fullmatch(head.decode("utf-8", "replace"))
        if match is None:
            raise DataError(
                f"{source} line 1: {head[:40].decode('utf-8', 'replace')!r} is not the MovieID: line of a"
                f" Netflix Prize {_NETFLIX_FILES} file; fix that file or move it out of {path}"
            )
        body = body.rstrip(b"\r\n")
        if not body:
            continue
        movies.append(int(match.group(1)))
        counts.append(body.count(b"\n") + 1)
        batch.append((file, body + b"\n"))
        size += len(body)
        if size >= _NETFLIX_BATCH:
            tables.append(_netflix_batch(batch, layout))
            batch, size = [], 0
    if batch:
        tables.append(_netflix_batch(batch, layout))
    if not tables:
        return pd.DataFrame({"user_id": [], "item_id": []})
    table = pa.concat_tables(tables)
    items = pa.chunked_array([np.repeat(np.asarray(movies, dtype=np.int64), counts)])
    days = pc.cast(pc.cast(table["date"], pa.int32()), pa.int64())
    return _frame(table["user_id"], items, table["rating"], pc.multiply(days, 86400))


def _netflix_batch(batch: list[tuple[Path, bytes]], layout: _Layout) -> pa.Table:
    """Parse the bodies of some mv_*.txt files at once; on bad input, name the file and line."""
    types = {"user_id": pa.int64(), "rating": pa.float64(), "date": pa.date32()}
    data = b"".join(body for _, body in batch)
    expected = sum(body.count(b"\n") for _, body in batch)
    try:
        table = pcsv.read_csv(
            pa.BufferReader(data),
            read_options=pcsv.ReadOptions(column_names=list(types)),
            parse_options=pcsv.ParseOptions(delimiter=",", quote_char=False, ignore_empty_lines=False),
            convert_options=pcsv.ConvertOptions(column_types=types, null_values=[], strings_can_be_null=False),
        )
        reason = None if table.num_rows == expected else "a line break inside a line"
        if reason is None and _any_bad_rating(table["rating"]):
            reason = "bad rating"
    except pa.ArrowInvalid as err:
        reason = _first_line(err)
    if reason is None:
        return table
    for file, _ in batch:
        source, data = _load_bytes(file, None)
        _check_lines(source, _decode(source, data), layout)
    shown = f"{batch[0][0]} .. {batch[-1][0].name}" if len(batch) > 1 else str(batch[0][0])
    raise DataError(f"{shown}: cannot parse it ({reason}); expected {layout.describe}: fix the file")


def _read_delimited(
    path: Path, delimiter: str, user_col: str, item_col: str, rating_col: str | None, time_col: str | None
) -> pd.DataFrame:
    source, data = _load_bytes(path, None)
    text = _decode(source, data)
    header = next(csv.reader(io.StringIO(_first_line_of(text), newline=""), delimiter=delimiter))
    columns = _pick_columns(source, header, user_col, item_col, rating_col, time_col, csv_header=True)
    rating = columns.get("rating")
    layout = _Layout(
        delimiter=delimiter,
        quoting=True,
        header=True,
        int_ids=False,
        n_fields=len(header),
        ids=tuple((columns[key], header.index(columns[key])) for key in ("user_id", "item_id")),
        rating=(rating, header.index(rating)) if rating else None,
        describe=f"{len(header)} fields as in the header",
    )
    table = _parse(source, data, text, layout, {name: pa.string() for name in columns.values()}, None)
    users, items = (pc.utf8_trim_whitespace(table[columns[key]]) for key in ("user_id", "item_id"))
    if _first_true(pc.or_(pc.equal(users, ""), pc.equal(items, ""))) is not None:
        _diagnose(source, text, layout, "empty id")
    ratings = None
    if rating:
        try:
            ratings = pc.cast(pc.utf8_trim_whitespace(table[rating]), pa.float64())
        except pa.ArrowInvalid:
            _diagnose(source, text, layout, "bad rating")
        if _any_bad_rating(ratings):
            _diagnose(source, text, layout, "bad rating")
    times = None
    if "timestamp" in columns:
        times, bad = _parse_times(table[columns["timestamp"]])
        if bad is not None:
            line = _line_of_row(text, layout, bad)
            value = pc.utf8_trim_whitespace(table[columns["timestamp"]])[bad].as_py()
            raise DataError(
                f"{source} line {line}: {columns['timestamp']} {value!r} is {_TIME_WORDS};"
                " fix or remove that line, or pick another --time-col"
            )
    return _frame(_ids(users), _ids(items), ratings, times)


def _read_parquet(
    path: Path, user_col: str, item_col: str, rating_col: str | None, time_col: str | None
) -> pd.DataFrame:
    try:
        names = pq.ParquetFile(path).schema_arrow.names
        columns = _pick_columns(str(path), names, user_col, item_col, rating_col, time_col, csv_header=False)
        table = pq.read_table(path, columns=list(dict.fromkeys(columns.values())))
    except (pa.ArrowException, OSError) as err:
        raise DataError(
            f"{path} is not a readable Parquet file ({_first_line(err)});"
            f" check it or {_FORMAT_HINT}"
        ) from err
    ids = []
    for key in ("user_id", "item_id"):
        column = table[columns[key]]
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            column = pc.utf8_trim_whitespace(column)
            bad = pc.or_kleene(pc.is_null(column), pc.equal(column, ""))
        else:
            bad = pc.is_null(column)
        _refuse_row(path, bad, f"{columns[key]} is missing")
        ids.append(_ids(column))
    ratings = None
    if "rating" in columns:
        column = table[columns["rating"]]
        if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
            raise DataError(
                f"{path}: column {columns['rating']!r} has type {column.type}, not a number;"
                " fix it or pick another --rating-col"
            )
        ratings = pc.cast(column, pa.float64())
        bad = pc.or_kleene(pc.is_null(ratings), pc.or_(pc.invert(pc.is_finite(ratings)), pc.less(ratings, 0.0)))
        _refuse_row(path, bad, f"{columns['rating']} is not a non-negative number")
    times = _parquet_times(path, table[columns["timestamp"]], columns["timestamp"]) if "timestamp" in columns else None
    return _frame(ids[0], ids[1], ratings, times)


def _parquet_times(path: Path, column: pa.ChunkedArray, name: str) -> pa.ChunkedArray:
    """int64 seconds UTC from integer seconds, whole float seconds, timestamps, dates or ISO strings."""
    kind = column.type
    way_out = "fix the data or pick another --time-col"
    _refuse_row(path, pc.is_null(column), f"{name} is missing", way_out)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        seconds, bad = _parse_times(column)
        if bad is not None:
            value = pc.utf8_trim_whitespace(column)[bad].as_py()
            raise DataError(f"{path} row {bad + 1}: {name} {value!r} is {_TIME_WORDS}; {way_out}")
        return seconds
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        if pa.types.is_floating(kind):
            whole = pc.and_(pc.is_finite(column), pc.equal(pc.floor(column), column))
            _refuse_row(path, pc.invert(whole), f"{name} is not a whole number of seconds since the epoch", way_out)
        try:
            return pc.cast(column, pa.int64())
        except pa.ArrowInvalid as err:
            raise DataError(
                f"{path}: column {name!r} holds numbers beyond int64 ({_first_line(err)}); {way_out}"
            ) from err
    if pa.types.is_timestamp(kind):
        per_second = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}[kind.unit]
        return _floor_divide(pc.cast(column, pa.int64()), per_second)
    if pa.types.is_date32(kind):
        return pc.multiply(pc.cast(pc.cast(column, pa.int32()), pa.int64()), 86400)
    if pa.types.is_date64(kind):
        return _floor_divide(pc.cast(column, pa.int64()), 1000)
    raise DataError(
        f"{path}: column {name!r} has type {kind}, not seconds since the epoch, a timestamp, a date or ISO text;"
        " fix it or pick another --time-col"
    )


def _floor_divide(values: pa.ChunkedArray, divisor: int) -> pa.ChunkedArray:
    numbers = values.to_numpy()
    return pa.chunked_array([np.floor_divide(numbers, divisor)])


def _parse_times(column: pa.ChunkedArray) -> tuple[pa.ChunkedArray, int | None]:
    """int64 seconds UTC from integer-seconds or ISO date(-time) text; also the first row that is neither."""
    values = pc.utf8_trim_whitespace(column)
    is_int = pc.match_substring_regex(values, r"^[+-]?[0-9]+$")
    try:
        unsigned = pc.replace_substring_regex(values, r"^\+", "")
        seconds = pc.cast(pc.if_else(is_int, unsigned, "0"), pa.int64()).to_numpy().copy()
    except pa.ArrowInvalid:
        flags, texts = is_int.to_pylist(), values.to_pylist()
        return pa.chunked_array([], pa.int64()), next(
            (row for row, (flag, text) in enumerate(zip(flags, texts)) if flag and not _is_int64(text)), 0
        )
    is_int = is_int.to_numpy(zero_copy_only=False)
    others = np.flatnonzero(~is_int)
    if others.size:
        text = values.take(pa.array(others)).to_pandas()
        iso = pd.Series(text).str.match(_ISO_START).to_numpy(dtype=bool)
        parsed = pd.to_datetime(pd.Series(text).where(iso), format="ISO8601", utc=True, errors="coerce")
        missing = parsed.isna().to_numpy()
        if missing.any():
            return pa.chunked_array([], pa.int64()), int(others[np.argmax(missing)])
        seconds[others] = ((parsed - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy(dtype=np.int64)
    return pa.chunked_array([seconds]), None


def _line_of_row(text: str, layout: _Layout, row: int) -> int:
    """The line on which data row `row` (0-based, header not counted) of a delimited text starts."""
    rows = csv.reader(
        io.StringIO(text, newline=""),
        delimiter=layout.delimiter,
        quoting=csv.QUOTE_MINIMAL if layout.quoting else csv.QUOTE_NONE,
    )
    start, index = 1, -1 if layout.header else 0
    for _ in rows:
        if index == row:
            return start
        start, index = rows.line_num + 1, index + 1
    return start


def _finish(frame: pd.DataFrame, path: Path, min_rating: float | None) -> pd.DataFrame:
    if frame.empty:
        raise DataError(f"{path} holds no rating records; pass a file with at least one rating")
    keys = ["user_id", "item_id"]
    if min_rating is not None:
        if "rating" not in frame:
            raise DataError(
                f"{path} has no ratings, so --min-rating cannot apply;"
                " drop it or name the column with --rating-col"
            )
        frame = frame[frame["rating"] >= min_rating]
        if frame.empty:
            raise DataError(f"{path}: no ratings >= {min_rating}; lower --min-rating")
    keep = {column: how for column, how in (("rating", "max"), ("timestamp", "min")) if column in frame}
    if keep:
        frame = frame.groupby(keys, sort=True, as_index=False).agg(keep)
    else:
        frame = frame.drop_duplicates(keys).sort_values(keys)
    for key, what in (("user_id", "user"), ("item_id", "item")):
        if frame[key].nunique() < 2:
            raise DataError(
                f"{path} has only one distinct {what}, so there is nothing to recommend;"
                " pass data with at least two users and two items"
            )
    return frame.reset_index(drop=True)


def _load_bytes(path: Path, member: str | None) -> tuple[str, bytes]:
    """A label for messages and the bytes of the file, or of `member` inside a zip, gunzipped."""
    try:
        with path.open("rb") as handle:
            head = handle.read(4)
        if head in (b"PK\x03\x04", b"PK\x05\x06"):
            if member is None:
                raise DataError(f"{path} is a zip archive; unzip it and pass the ratings file inside")
            with zipfile.ZipFile(path) as archive:
                name = _find_member(archive.namelist(), member)
                if name is None:
                    shown = ", ".join(archive.namelist()[:5]) or "nothing"
                    raise DataError(
                        f"{path} holds no {member} (it holds {shown});"
                        f" pass the {member} file itself or the official zip"
                    )
                return f"{path}:{name}", archive.read(name)
        data = path.read_bytes()
        if head[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        return str(path), data
    except (zipfile.BadZipFile, EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise DataError(f"{path} is a corrupted or truncated archive ({_first_line(err)}); fetch it again") from err
    except OSError as err:
        raise DataError(f"{path}: cannot read it ({err.strerror or err}); check the file and its permissions") from err


def _decode(source: str, data: bytes) -> str:
    if b"\x00" in data:
        raise DataError(f"{source} is binary, not a text ratings file; check the path or {_FORMAT_HINT}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(
            f"{source} is not UTF-8 text (bad byte at offset {err.start});"
            f" check the path or {_FORMAT_HINT}"
        ) from err
    text = text.removeprefix(codecs.BOM_UTF8.decode()).rstrip("\r\n")
    if not text.strip():
        raise DataError(f"{source} is empty; pass a file with at least one rating")
    return text


def _parse(
    source: str,
    data: bytes,
    text: str,
    layout: _Layout,
    types: dict[str, pa.DataType],
    names: list[str] | None,
    skip_rows: int = 0,
) -> pa.Table:
    """Parse with pyarrow; on failure, find the offending line in `text` and raise."""
    data = data.removeprefix(codecs.BOM_UTF8).rstrip(b"\r\n") + b"\n"
    try:
        return pcsv.read_csv(
            pa.BufferReader(data),
            read_options=pcsv.ReadOptions(column_names=names, skip_rows=skip_rows),
            parse_options=pcsv.ParseOptions(
                delimiter=layout.delimiter, quote_char='"' if layout.quoting else False, ignore_empty_lines=False
            ),
            convert_options=pcsv.ConvertOptions(
                column_types=types,
                include_columns=list(types),
                null_values=[],
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except pa.ArrowInvalid as err:
        _diagnose(source, text, layout, _first_line(err))


def _diagnose(source: str, text: str, layout: _Layout, reason: str) -> NoReturn:
    """Raise a DataError naming the first line of `text` that does not fit `layout`."""
    _check_lines(source, text, layout)
    raise DataError(f"{source}: cannot parse it ({reason}); expected {layout.describe}: fix the file or {_FORMAT_HINT}")


def _check_lines(source: str, text: str, layout: _Layout) -> None:
    """Raise a DataError naming the first line of `text` that does not fit `layout`, if any."""
    rows = csv.reader(
        io.StringIO(text, newline=""),
        delimiter=layout.delimiter,
        quoting=csv.QUOTE_MINIMAL if layout.quoting else csv.QUOTE_NONE,
    )
    start = 1
    for fields in rows:
        line, start = start, rows.line_num + 1
        if layout.header and line == 1:
            continue
        _check_fields(source, line, fields, layout)


def _check_fields(source: str, line: int, fields: list[str], layout: _Layout) -> None:
    where = f"{source} line {line}"
    if not layout.header and line == 1 and _looks_like_header(fields):
        raise DataError(
            f"{where} looks like a header, but this format has none ({layout.describe});"
            " for a file with a header use --format csv"
        )
    if len(fields) != layout.n_fields:
        raise DataError(
            f"{where} has {len(fields)} fields, expected {layout.n_fields} ({layout.describe});"
            f" fix that line, or if the file has another layout {_FORMAT_HINT}"
        )
    for name, position in layout.ids:
        value = fields[position].strip()
        if not value:
            raise DataError(f"{where}: {name} is empty; fix or remove that line")
        if layout.int_ids and not _INT.fullmatch(value):
            raise DataError(
                f"{where}: {name} {value!r} is not an integer ({layout.describe}); fix or remove that line"
            )
    if layout.rating is not None:
        name, position = layout.rating
        if not _is_rating(fields[position]):
            raise DataError(
                f"{where}: {name} {fields[position]!r} is not a non-negative number; fix or remove that line"
            )
    if layout.time is not None:
        name, position = layout.time
        value = fields[position]
        if layout.time_kind == "date" and not _is_date(value):
            raise DataError(f"{where}: {name} {value!r} is not a date YYYY-MM-DD; fix or remove that line")
        if layout.time_kind == "int" and not _is_int64(value):
            raise DataError(
                f"{where}: {name} {value!r} is not integer seconds since the epoch; fix or remove that line"
            )


def _first_line_of(text: str) -> str:
    """The text up to its first line break (without copying the rest of a large file)."""
    end = text.find("\n")
    return text if end < 0 else text[:end]


def _looks_like_header(fields: list[str]) -> bool:
    return bool(fields) and not _INT.fullmatch(fields[0].strip()) and re.search("[A-Za-z]", fields[0]) is not None


def _is_int64(value: str) -> bool:
    return _INT.fullmatch(value) is not None and _INT64[0] <= int(value) <= _INT64[1]


def _is_date(value: str) -> bool:
    try:
        return _DATE.fullmatch(value) is not None and date.fromisoformat(value) is not None
    except ValueError:
        return False


def _is_rating(value: str) -> bool:
    try:
        number = float(value)
    except ValueError:
        return False
    return math.isfinite(number) and number >= 0


def _pick_columns(
    source: str,
    names: list[str],
    user_col: str,
    item_col: str,
    rating_col: str | None,
    time_col: str | None,
    *,
    csv_header: bool,
) -> dict[str, str]:
    """Map output column to source column, refusing names the source lacks."""
    wanted = {"user_id": (user_col, "--user-col"), "item_id": (item_col, "--item-col")}
    if rating_col is not None:
        wanted["rating"] = (rating_col, "--rating-col")
    elif "rating" in names:
        wanted["rating"] = ("rating", "--rating-col")
    if time_col is not None:
        wanted["timestamp"] = (time_col, "--time-col")
    for key, (column, option) in wanted.items():
        if column not in names:
            shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
            hint = "; the first line must be a header row" if csv_header and all(_is_rating(n) for n in names) else ""
            what = "timestamp" if key == "timestamp" else key.removesuffix("_id")
            raise DataError(
                f"{source} has no column {column!r} (it has: {shown});"
                f" name the {what} column with {option}{hint}"
            )
    return {key: column for key, (column, _) in wanted.items()}


def _ids(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """int64 when every id is an integer, otherwise strings."""
    try:
        return pc.cast(column, pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return pc.cast(column, pa.string())


def _frame(
    users: pa.ChunkedArray,
    items: pa.ChunkedArray,
    ratings: pa.ChunkedArray | None,
    times: pa.ChunkedArray | None = None,
) -> pd.DataFrame:
    columns = {"user_id": users, "item_id": items}
    if ratings is not None:
        columns["rating"] = ratings
    if times is not None:
        columns["timestamp"] = times
    return pa.table(columns).to_pandas()


def _refuse_row(path: Path, bad: pa.ChunkedArray, problem: str, way_out: str = "fix the data") -> None:
    row = _first_true(bad)
    if row is not None:
        raise DataError(f"{path} row {row + 1}: {problem}; {way_out}")


def _any_bad_rating(ratings: pa.ChunkedArray) -> bool:
    return _first_true(pc.or_(pc.invert(pc.is_finite(ratings)), pc.less(ratings, 0.0))) is not None


def _first_true(mask: pa.ChunkedArray) -> int | None:
    index = pc.index(mask, True).as_py()
    return None if index < 0 else index


def _zip_names(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    except (zipfile.BadZipFile, OSError) as err:
        raise DataError(f"{path} is not a readable zip ({_first_line(err)}); fetch it again") from err


def _find_member(names: list[str], member: str) -> str | None:
    return next((name for name in names if name == member or name.endswith(f"/{member}")), None)


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__
