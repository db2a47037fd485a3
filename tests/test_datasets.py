"""Named datasets: the download cache against a real local HTTP server."""

from __future__ import annotations

import hashlib
import io
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
    sep = "::" if info.fmt == "movielens" else "\t"
    text = "".join(f"{u}{sep}{i}{sep}{r}{sep}978300760\n" for u, i, r in RATINGS)
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
    assert frame.values.tolist() == [[u, i, float(r)] for u, i, r in RATINGS]


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
    with pytest.raises(DataError, match="ml-1m, ml-100k, synthetic"):
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
        assert info.url.endswith(f"/{info.zip_name}") and info.zip_name == f"{name}.zip"
        assert info.member.startswith(f"{name}/") and len(info.md5) == 32
