"""Named datasets: the download cache against a real local HTTP server."""

from __future__ import annotations

import hashlib
import io
import re
import socket
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from raycf.data.datasets import DATASETS, data_home, fetch_dataset, load_dataset
from raycf.errors import DataError

RATINGS = [(1, 10, 4), (1, 20, 2), (2, 10, 5), (3, 30, 1)]


def _zip_bytes(name: str) -> bytes:
    info = DATASETS[name]
    sep = {"movielens": "::", "ml-100k": "\t", "ml-20m": ","}[info.fmt]
    header = "userId,movieId,rating,timestamp\n" if info.fmt == "ml-20m" else ""
    text = header + "".join(f"{u}{sep}{i}{sep}{r}{sep}978300760\n" for u, i, r in RATINGS)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(info.member, text)
    return buffer.getvalue()


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


class _Server:
    """Serves `files` (URL path -> bytes) on 127.0.0.1 and counts the requests."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests += 1
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def server():
    served = _Server()
    yield served
    served.close()


def _leftovers(home: Path) -> list[str]:
    return sorted(p.name for p in home.iterdir()) if home.exists() else []


def _fetch_error(**kwargs) -> str:
    with pytest.raises(DataError) as info:
        fetch_dataset("ml-100k", **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("name", list(DATASETS))
def test_download_is_cached_and_loads(server, tmp_path, name):
    data = _zip_bytes(name)
    server.files[f"/{name}.zip"] = data
    url, md5 = f"{server.base}/{name}.zip", _md5(data)
    path = fetch_dataset(name, home=tmp_path, url=url, md5=md5)
    assert path == tmp_path / DATASETS[name].zip_name
    assert path.read_bytes() == data
    assert _leftovers(tmp_path) == [path.name]
    assert fetch_dataset(name, home=tmp_path, url=url, md5=md5) == path
    frame = load_dataset(name, home=tmp_path, url=url, md5=md5)
    assert server.requests == 1
    assert list(frame.columns) == ["user_id", "item_id", "rating", "timestamp"]
    assert frame.values.tolist() == [[u, i, float(r), 978300760] for u, i, r in RATINGS]


def test_corrupted_download_leaves_nothing(server, tmp_path):
    good = _zip_bytes("ml-100k")
    server.files["/ml-100k.zip"] = good[:-10]
    url = f"{server.base}/ml-100k.zip"
    message = _fetch_error(home=tmp_path, url=url, md5=_md5(good))
    assert url in message and _md5(good) in message and _md5(good[:-10]) in message
    assert _leftovers(tmp_path) == []


def test_cached_zip_with_wrong_checksum(server, tmp_path):
    (tmp_path / "ml-100k.zip").write_bytes(b"half a zip")
    message = _fetch_error(home=tmp_path, url=f"{server.base}/ml-100k.zip", md5=_md5(_zip_bytes("ml-100k")))
    assert str(tmp_path / "ml-100k.zip") in message and "delete" in message
    assert server.requests == 0


def _assert_offline_line(message: str, url: str, home: Path) -> None:
    assert url in message and "--ratings PATH" in message
    assert f"ml-100k.zip into {home}" in message


def test_http_404_fails_at_once(server, tmp_path):
    url = f"{server.base}/missing.zip"
    start = time.monotonic()
    message = _fetch_error(home=tmp_path, url=url)
    assert time.monotonic() - start < 3
    assert "404" in message
    _assert_offline_line(message, url, tmp_path)
    assert _leftovers(tmp_path) == []


def test_refused_connection_fails_at_once(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/ml-100k.zip"
    start = time.monotonic()
    message = _fetch_error(home=tmp_path, url=url, timeout=2.0)
    assert time.monotonic() - start < 3
    _assert_offline_line(message, url, tmp_path)
    assert _leftovers(tmp_path) == []


def test_unknown_dataset_lists_the_known_ones(tmp_path):
    with pytest.raises(DataError, match="ml-1m, ml-100k, ml-10m, ml-20m, synthetic"):
        fetch_dataset("netflix", home=tmp_path)


def test_data_home(monkeypatch, tmp_path):
    monkeypatch.setenv("RAYCF_DATA_HOME", str(tmp_path / "cache"))
    assert data_home() == tmp_path / "cache"
    monkeypatch.delenv("RAYCF_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert data_home() == tmp_path / ".cache" / "raycf"


def test_default_home_is_the_data_home(server, monkeypatch, tmp_path):
    monkeypatch.setenv("RAYCF_DATA_HOME", str(tmp_path / "new" / "home"))
    data = _zip_bytes("ml-100k")
    server.files["/z.zip"] = data
    path = fetch_dataset("ml-100k", url=f"{server.base}/z.zip", md5=_md5(data))
    assert path == tmp_path / "new" / "home" / "ml-100k.zip"


def test_registry_is_consistent():
    for name, info in DATASETS.items():
        assert info.url == f"https://files.grouplens.org/datasets/movielens/{info.zip_name}"
        assert info.zip_name == f"{name}.zip" and len(info.md5) == 32 and int(info.md5, 16) >= 0
        folder = "ml-10M100K" if name == "ml-10m" else name
        assert info.member.startswith(f"{folder}/")
    assert {name: DATASETS[name].md5 for name in ("ml-10m", "ml-20m")} == {
        "ml-10m": "ce571fd55effeba0271552578f2648bd",
        "ml-20m": "cd245b17a1ae2cc31bb14903e1204af3",
    }


# ML-10M and ML-20M from the cache alone (no network): fake zips with the official layouts, checked
# against their own md5.
ML10M_DAT = "1::122::5::838985046\n1::185::4.5::838983525\n2::122::3.5::868245777\n2::292::1::868244562\n"
ML20M_CSV = (
    "userId,movieId,rating,timestamp\n"
    "1,2,3.5,1112486027\n1,29,3.5,1112484676\n2,2,4.0,974820889\n1,2,5.0,1112480000\n3,29,0.5,974820691\n"
)
CACHED = {
    "ml-10m": ("ml-10M100K/ratings.dat", ML10M_DAT, [
        [1, 122, 5.0, 838985046], [1, 185, 4.5, 838983525], [2, 122, 3.5, 868245777], [2, 292, 1.0, 868244562],
    ]),
    "ml-20m": ("ml-20m/ratings.csv", ML20M_CSV, [  # (1, 2) twice: max rating 5.0 and earliest time kept
        [1, 2, 5.0, 1112480000], [1, 29, 3.5, 1112484676], [2, 2, 4.0, 974820889], [3, 29, 0.5, 974820691],
    ]),
}


def _cached_zip(home: Path, name: str, files: dict[str, str]) -> str:
    home.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for member, text in files.items():
            archive.writestr(member, text)
    (home / f"{name}.zip").write_bytes(buffer.getvalue())
    return _md5(buffer.getvalue())


@pytest.mark.parametrize("name", ["ml-10m", "ml-20m"])
def test_large_movielens_from_the_cache(monkeypatch, tmp_path, name):
    member, text, rows = CACHED[name]
    folder = member.split("/")[0]
    home = tmp_path / "cache"
    md5 = _cached_zip(home, name, {member: text, f"{folder}/movies.dat": "1::Toy Story (1995)::Comedy\n",
                                   f"{folder}/tags.csv": "userId,movieId,tag,timestamp\n"})
    monkeypatch.setenv("RAYCF_DATA_HOME", str(home))
    url = "http://127.0.0.1:9/never-fetched.zip"  # a cached zip is never downloaded again
    frame = load_dataset(name, url=url, md5=md5)
    assert list(frame.columns) == ["user_id", "item_id", "rating", "timestamp"]
    assert frame.values.tolist() == rows
    assert [str(t) for t in frame.dtypes] == ["int64", "int64", "float64", "int64"]


@pytest.mark.parametrize("name", ["ml-10m", "ml-20m"])
def test_large_movielens_offline_and_corrupted(monkeypatch, tmp_path, name):
    monkeypatch.setenv("RAYCF_DATA_HOME", str(tmp_path))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/{name}.zip"
    with pytest.raises(DataError, match=rf"^cannot download {re.escape(url)} \(.*\); offline\? pass --ratings PATH, "
                                        rf"or put {name}\.zip into {re.escape(str(tmp_path))}$"):
        load_dataset(name, url=url, timeout=2.0)
    _cached_zip(tmp_path, name, {CACHED[name][0]: CACHED[name][1]})
    cached = re.escape(str(tmp_path / name))
    with pytest.raises(DataError, match=rf"^cached {cached}\.zip is corrupted \(md5 [0-9a-f]{{32}}, "
                                        rf"expected {DATASETS[name].md5}\); delete it"):
        load_dataset(name, url=url)


def test_ml20m_zip_with_a_bad_line(monkeypatch, tmp_path):
    monkeypatch.setenv("RAYCF_DATA_HOME", str(tmp_path))
    md5 = _cached_zip(tmp_path, "ml-20m", {"ml-20m/ratings.csv": ML20M_CSV + "4,2,4.0,when\n"})
    with pytest.raises(DataError, match=r"ml-20m.zip:ml-20m/ratings.csv line 7: timestamp 'when' is not integer"):
        load_dataset("ml-20m", md5=md5)
