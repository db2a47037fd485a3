"""Read rating files (MovieLens, CSV/TSV, Parquet) into one validated interactions frame."""

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
from pathlib import Path
from typing import NoReturn

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from raycf.errors import DataError

FORMATS = ("movielens", "ml-100k", "csv", "tsv", "parquet")
_FORMAT_HINT = f"pass --format with one of {', '.join(FORMATS)}"
_INT = re.compile(r"[+-]?\d+")
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


_MOVIELENS = {
    "movielens": ("ratings.dat", "::", "UserID::MovieID::Rating::Timestamp"),
    "ml-100k": ("u.data", "\t", "user id<TAB>item id<TAB>rating<TAB>timestamp"),
}


def read_interactions(
    path: str | Path,
    *,
    fmt: str = "auto",
    sep: str | None = None,
    user_col: str = "user_id",
    item_col: str = "item_id",
    rating_col: str | None = None,
    min_rating: float | None = None,
) -> pd.DataFrame:
    """One row per distinct (user_id, item_id), max rating kept, sorted; raises DataError on bad input."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file; check the path given with --ratings")
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r} for {path}; {_FORMAT_HINT} (or auto)")
    if sep is not None and fmt not in ("csv", "tsv"):
        raise DataError(f"--sep applies to csv and tsv files only, not to {fmt} ({path}); drop --sep")
    if fmt in _MOVIELENS:
        frame = _read_movielens(path, fmt)
    elif fmt == "parquet":
        frame = _read_parquet(path, user_col, item_col, rating_col)
    else:
        frame = _read_delimited(path, _delimiter(fmt, sep, path), user_col, item_col, rating_col)
    return _finish(frame, path, min_rating)


def detect_format(path: Path) -> str:
    """The format implied by the file name (and a zip's members)."""
    name = path.name.lower()
    if name.endswith(".zip"):
        members = _zip_names(path)
        for fmt, (member, _, _) in _MOVIELENS.items():
            if _find_member(members, member):
                return fmt
        raise DataError(f"{path} holds neither ratings.dat nor u.data; unzip it and pass the ratings file")
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
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _read_movielens(path: Path, fmt: str) -> pd.DataFrame:
    member, sep, describe = _MOVIELENS[fmt]
    source, data = _load_bytes(path, member)
    text = _decode(source, data)
    delimiter = sep if len(sep) == 1 else _UNIT_SEP
    if delimiter != sep:
        data = data.replace(sep.encode(), delimiter.encode())
        text = text.replace(sep, delimiter)
    layout = _Layout(
        delimiter=delimiter,
        quoting=False,
        header=False,
        int_ids=True,
        n_fields=4,
        ids=(("user id", 0), ("item id", 1)),
        rating=("rating", 2),
        describe=describe,
    )
    types = {"user_id": pa.int64(), "item_id": pa.int64(), "rating": pa.float64()}
    names = ["user_id", "item_id", "rating", "timestamp"]
    table = _parse(source, data, text, layout, types, names)
    if _any_bad_rating(table["rating"]):
        _diagnose(source, text, layout, "bad rating")
    return _frame(table["user_id"], table["item_id"], table["rating"])


def _read_delimited(
    path: Path, delimiter: str, user_col: str, item_col: str, rating_col: str | None
) -> pd.DataFrame:
    source, data = _load_bytes(path, None)
    text = _decode(source, data)
    header = next(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))
    columns = _pick_columns(source, header, user_col, item_col, rating_col, csv_header=True)
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
    return _frame(_ids(users), _ids(items), ratings)


def _read_parquet(path: Path, user_col: str, item_col: str, rating_col: str | None) -> pd.DataFrame:
    try:
        names = pq.ParquetFile(path).schema_arrow.names
        columns = _pick_columns(str(path), names, user_col, item_col, rating_col, csv_header=False)
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
    return _frame(ids[0], ids[1], ratings)


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
    if "rating" in frame:
        frame = frame.groupby(keys, sort=True, as_index=False)["rating"].max()
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
    source: str, data: bytes, text: str, layout: _Layout, types: dict[str, pa.DataType], names: list[str] | None
) -> pa.Table:
    """Parse with pyarrow; on failure, find the offending line in `text` and raise."""
    data = data.removeprefix(codecs.BOM_UTF8).rstrip(b"\r\n") + b"\n"
    try:
        return pcsv.read_csv(
            pa.BufferReader(data),
            read_options=pcsv.ReadOptions(column_names=names),
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
    raise DataError(f"{source}: cannot parse it ({reason}); expected {layout.describe}: fix the file or {_FORMAT_HINT}")


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


def _looks_like_header(fields: list[str]) -> bool:
    return bool(fields) and not _INT.fullmatch(fields[0].strip()) and re.search("[A-Za-z]", fields[0]) is not None


def _is_rating(value: str) -> bool:
    try:
        number = float(value)
    except ValueError:
        return False
    return math.isfinite(number) and number >= 0


def _pick_columns(
    source: str, names: list[str], user_col: str, item_col: str, rating_col: str | None, *, csv_header: bool
) -> dict[str, str]:
    """Map output column to source column, refusing names the source lacks."""
    wanted = {"user_id": (user_col, "--user-col"), "item_id": (item_col, "--item-col")}
    if rating_col is not None:
        wanted["rating"] = (rating_col, "--rating-col")
    elif "rating" in names:
        wanted["rating"] = ("rating", "--rating-col")
    for key, (column, option) in wanted.items():
        if column not in names:
            shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
            hint = "; the first line must be a header row" if csv_header and all(_is_rating(n) for n in names) else ""
            raise DataError(
                f"{source} has no column {column!r} (it has: {shown});"
                f" name the {key[:-3]} column with {option}{hint}"
            )
    return {key: column for key, (column, _) in wanted.items()}


def _ids(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """int64 when every id is an integer, otherwise strings."""
    try:
        return pc.cast(column, pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return pc.cast(column, pa.string())


def _frame(users: pa.ChunkedArray, items: pa.ChunkedArray, ratings: pa.ChunkedArray | None) -> pd.DataFrame:
    columns = {"user_id": users, "item_id": items}
    if ratings is not None:
        columns["rating"] = ratings
    return pa.table(columns).to_pandas()


def _refuse_row(path: Path, bad: pa.ChunkedArray, problem: str) -> None:
    row = _first_true(bad)
    if row is not None:
        raise DataError(f"{path} row {row + 1}: {problem}; fix the data")


def _any_bad_rating(ratings: pa.ChunkedArray) -> bool:
    return _first_true(pc.or_(pc.invert(pc.is_finite(ratings)), pc.less(ratings, 0.0))) is not None


def _first_true(mask: pa.ChunkedArray) -> int | None:
    index = pc.index(mask, True).as_py()
    return None if index < 0 else index


def _delimiter(fmt: str, sep: str | None, path: Path) -> str:
    if sep is None:
        return "," if fmt == "csv" else "\t"
    sep = "\t" if sep == "\\t" else sep
    if len(sep) != 1:
        raise DataError(f"--sep must be one character, got {sep!r} for {path}; pass e.g. --sep ';'")
    return sep


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
