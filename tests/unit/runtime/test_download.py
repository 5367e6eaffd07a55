"""https:// model sources for `bakeline run` (`runtime/download.py`), against a real HTTP server
on loopback that honours Range requests and can cut a response short: a dropped connection is
resumed where it ended, a server that ignores Range starts over, a file over the limit or with
other bytes is refused and not kept, a cached file needs no request, and a 404 is not retried."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from bakeline.runtime.download import DownloadError, fetch
from bakeline.runtime.local import ModelSourceError, job_document, resolve_dataset

BODY = bytes(range(256)) * 4096  # 1 MiB
DIGEST = hashlib.sha256(BODY).hexdigest()


class _Server:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.cut_first = 0  # bytes sent before the first response is cut
        self.ranges = True
        self.status = 200
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                asked = self.headers.get("Range")
                server.requests.append({"path": self.path, "range": asked})
                if server.status != 200:
                    self.send_error(server.status)
                    return
                start = int(asked[6:-1]) if asked and server.ranges else 0
                if start >= len(BODY) and asked:
                    self.send_response(416)
                    self.end_headers()
                    return
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(BODY) - 1}/{len(BODY)}")
                self.send_header("Content-Length", str(len(BODY) - start))
                self.end_headers()
                if server.cut_first and len(server.requests) == 1:
                    self.wfile.write(BODY[start : start + server.cut_first])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(BODY[start:])

        class Quiet(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # the client hanging up on a cut response is the point

        self.httpd = Quiet(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/models/model.pt2"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server() -> Iterator[_Server]:
    running = _Server()
    yield running
    running.httpd.shutdown()


def _fetch(server: _Server, tmp_path: Path, **kwargs: Any) -> Path:
    path, digest = fetch(
        server.url, DIGEST, cache=tmp_path / "cache", sleep=lambda _: None, **kwargs
    )
    assert digest == DIGEST
    return path


def test_a_dropped_connection_is_resumed_where_it_ended(server: _Server, tmp_path: Path) -> None:
    server.cut_first = 300_000
    path = _fetch(server, tmp_path)
    assert path.read_bytes() == BODY
    assert path == tmp_path / "cache" / DIGEST / "model.pt2"  # the url's file name, for the card
    first, resumed = (r["range"] for r in server.requests)
    # From the last whole chunk it read (64 KiB each): not from the start.
    assert first is None and resumed == f"bytes={300_000 // 65536 * 65536}-"
    # Cached: the same sha256 needs no request at all.
    assert _fetch(server, tmp_path) == path and len(server.requests) == 2


def test_a_server_that_ignores_range_is_read_again_from_the_start(
    server: _Server, tmp_path: Path
) -> None:
    server.cut_first, server.ranges = 300_000, False
    assert _fetch(server, tmp_path).read_bytes() == BODY
    assert len(server.requests) == 2


def test_other_bytes_or_too_many_are_refused_and_not_kept(server: _Server, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match=r"has sha256 .* but the job names"):
        fetch(server.url, "0" * 64, cache=tmp_path / "cache", sleep=lambda _: None)
    assert not list((tmp_path / "cache" / ("0" * 64)).iterdir())
    with pytest.raises(DownloadError, match="the limit is 1000"):
        _fetch(server, tmp_path, max_bytes=1000)


def test_a_missing_file_is_not_retried_and_an_unavailable_one_is(
    server: _Server, tmp_path: Path
) -> None:
    server.status = 404
    with pytest.raises(DownloadError, match="HTTP 404: not downloaded"):
        _fetch(server, tmp_path)
    assert len(server.requests) == 1
    server.status = 503
    pauses: list[float] = []
    with pytest.raises(DownloadError, match=r"in 3 attempts: .*HTTP 503"):
        fetch(server.url, DIGEST, cache=tmp_path / "c", attempts=3, sleep=pauses.append)
    assert len(server.requests) == 4 and pauses == [1.0, 2.0]


def test_bakeline_runs_job_document_downloads_an_https_source(
    server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BAKELINE_CACHE", str(tmp_path / "home-cache"))
    source = {"url": {"url": server.url, "sha256": DIGEST}}
    doc = job_document("j", {"source": source}, {}, {}, tmp_path)
    local = Path(doc["model"]["localPath"])
    assert local.read_bytes() == BODY and local.is_relative_to(tmp_path / "home-cache")
    assert doc["model"]["sha256"] == DIGEST
    wrong = {"url": {"url": server.url, "sha256": "1" * 64}}
    with pytest.raises(ModelSourceError, match="the file was not kept"):
        job_document("j", {"source": wrong}, {}, {}, tmp_path)


def test_an_https_dataset_is_fetched_afresh_and_pinned_by_the_sha256_it_has(
    server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BAKELINE_CACHE", str(tmp_path / "home-cache"))
    resolved = resolve_dataset({"dataset": server.url, "metric": "cosine"}, tmp_path)
    local = tmp_path / "home-cache" / "downloads" / DIGEST / "model.pt2"
    # The import stage checks these bytes again (the sha256 travels in the job document).
    assert resolved == {"dataset": f"{local.as_uri()}#sha256={DIGEST}", "metric": "cosine"}
    assert local.read_bytes() == BODY
    resolve_dataset({"dataset": server.url}, tmp_path)
    assert len(server.requests) == 2  # no sha256 to trust a cached copy by: fetched again
    server.status = 404
    with pytest.raises(ModelSourceError, match=r"quality.dataset: .* answered HTTP 404"):
        resolve_dataset({"dataset": server.url}, tmp_path)
