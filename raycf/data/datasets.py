"""Named MovieLens datasets: where they come from and a checked download cache.

Every dataset's frame has user_id, item_id, rating and timestamp (int64 seconds since the epoch, UTC).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pandas as pd

from raycf.data.loaders import read_interactions
from raycf.errors import DataError
from raycf.storage.atomic import staged_file


@dataclass(frozen=True)
class DatasetInfo:
    """Where a named dataset's zip lives and how to read the ratings inside it."""

    url: str
    md5: str
    zip_name: str
    member: str
    fmt: str


DATASETS = {
    "ml-1m": DatasetInfo(
        url="https://files.grouplens.org/datasets/movielens/ml-1m.zip",
        md5="c4d9eecfca2ab87c1945afe126590906",
        zip_name="ml-1m.zip",
        member="ml-1m/ratings.dat",
        fmt="movielens",
    ),
    "ml-100k": DatasetInfo(
        url="https://files.grouplens.org/datasets/movielens/ml-100k.zip",
        md5="0e33842e24a9c977be4e0107933c0723",
        zip_name="ml-100k.zip",
        member="ml-100k/u.data",
        fmt="ml-100k",
    ),
    # The md5 values of ml-10m and ml-20m are those of GroupLens' sidecar files next to the zips
    # (https://files.grouplens.org/datasets/movielens/ml-10m.zip.md5 and .../ml-20m.zip.md5), as
    # quoted by several public projects that verify their downloads with them (e.g.
    # eli-osherovich/papers_with_code datasets/movielens/dl_config.py, which has the same ml-1m and
    # ml-100k values as above). They could not be fetched from here: no network.
    "ml-10m": DatasetInfo(
        url="https://files.grouplens.org/datasets/movielens/ml-10m.zip",
        md5="ce571fd55effeba0271552578f2648bd",
        zip_name="ml-10m.zip",
        member="ml-10M100K/ratings.dat",  # the zip's folder is not named after the zip
        fmt="movielens",
    ),
    "ml-20m": DatasetInfo(
        url="https://files.grouplens.org/datasets/movielens/ml-20m.zip",
        md5="cd245b17a1ae2cc31bb14903e1204af3",
        zip_name="ml-20m.zip",
        member="ml-20m/ratings.csv",
        fmt="ml-20m",
    ),
}


def data_home() -> Path:
    """The download cache: `$RAYCF_DATA_HOME`, default `~/.cache/raycf`."""
    return Path(os.environ.get("RAYCF_DATA_HOME") or "~/.cache/raycf").expanduser()


def fetch_dataset(
    name: str,
    *,
    home: Path | None = None,
    url: str | None = None,
    md5: str | None = None,
    timeout: float = 10.0,
) -> Path:
    """The path of the dataset's zip in the cache, downloaded and checked when not there yet."""
    info = _info(name)
    home = Path(home) if home is not None else data_home()
    url = url or info.url
    md5 = md5 or info.md5
    target = home / info.zip_name
    if target.is_file():
        got = _md5_of(target)
        if got != md5:
            raise DataError(f"cached {target} is corrupted (md5 {got}, expected {md5}); delete it to download it again")
        return target
    way_out = f"pass --ratings PATH, or put {info.zip_name} into {home}"
    try:
        with staged_file(target) as part, open(part, "wb") as handle:
            got = _download(url, handle, timeout, way_out)
            if got != md5:
                raise DataError(f"download of {url} is corrupted (expected md5 {md5}, got {got}); try again, or "
                                f"{way_out}")
    except OSError as err:  # the data home cannot be written (downloading's own errors are DataErrors)
        raise DataError(
            f"cannot write to the data home {home} ({err.strerror or err});"
            f" set RAYCF_DATA_HOME or {way_out}"
        ) from err
    return target


def load_dataset(name: str, **fetch_kwargs) -> pd.DataFrame:
    """Fetch a named dataset and read its ratings."""
    return read_interactions(fetch_dataset(name, **fetch_kwargs), fmt=_info(name).fmt)


def _info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}, synthetic")
    return DATASETS[name]


def _download(url: str, handle: IO[bytes], timeout: float, way_out: str) -> str:
    """Stream `url` into `handle`; return the md5 of what was written."""
    digest = hashlib.md5()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                handle.write(chunk)
    except urllib.error.HTTPError as err:
        raise DataError(f"cannot download {url} (HTTP {err.code} {err.reason}); {way_out}") from err
    except urllib.error.URLError as err:
        raise DataError(f"cannot download {url} ({_one_line(err.reason)}); offline? {way_out}") from err
    except (OSError, http.client.HTTPException) as err:
        raise DataError(f"cannot download {url} ({_one_line(err)}); {way_out}") from err
    return digest.hexdigest()


def _md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _one_line(reason: object) -> str:
    return " ".join(str(reason).split()) or type(reason).__name__
