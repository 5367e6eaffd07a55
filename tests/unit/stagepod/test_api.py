"""Stage pods' HTTPS client for the ConfigMap store: status codes mapped as the store expects,
the token read for every request, a kept-alive connection the server dropped retried once, and
no kubernetes client import (the reason it exists)."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from bakeline.checkpoints.configmap import ConfigMapData, ConfigMapExistsError
from bakeline.stagepod.protobuf import (
    CONTENT_TYPE,
    MAGIC,
    _envelope,
    _field,
    _object,
    decode_configmap,
    encode_configmap,
)
from bakeline.stagepod.store import ApiError, ApiServer, KubeConfigMapClient

PATH = "/api/v1/namespaces/ns/configmaps"


@dataclass
class Seen:
    requests: list[tuple[str, str, str, ConfigMapData | None]] = field(default_factory=list)
    connections: int = 0
    drop_after_response: bool = False


def _status(message: str) -> bytes:
    return _envelope("Status", _field(2, b"Failure") + _field(3, message.encode()))


def _configmap(
    name: str,
    labels: Mapping[str, str] | None = None,
    binary_data: Mapping[str, bytes] | None = None,
) -> bytes:
    return encode_configmap(
        name=name,
        namespace="ns",
        labels=labels or {},
        owner_references=[],
        data={},
        binary_data=binary_data or {},
        immutable=True,
    )


class Handler(BaseHTTPRequestHandler):
    """The API server's answers in protobuf, but for one error in JSON (as a refused token's)."""

    protocol_version = "HTTP/1.1"  # keep-alive, as the API server speaks
    seen: Seen

    def setup(self) -> None:
        super().setup()
        self.seen.connections += 1

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self, status: int, body: bytes, content_type: str = CONTENT_TYPE) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        # Closing without saying so: what a server's idle timeout does to a kept-alive client.
        self.close_connection = self.seen.drop_after_response

    def _record(self) -> ConfigMapData | None:
        assert self.headers.get("Accept") == CONTENT_TYPE
        length = int(self.headers.get("Content-Length") or 0)
        body = decode_configmap(self.rfile.read(length)) if length else None
        auth = self.headers.get("Authorization") or ""
        self.seen.requests.append((self.command, self.path, auth, body))
        return body

    def do_GET(self) -> None:
        self._record()
        where = self.path.partition("?")[0]
        if where.endswith("/missing"):
            self._answer(404, _status('configmaps "missing" not found'))
        elif where.endswith("/forbidden"):
            message = json.dumps({"kind": "Status", "message": "stage pods may not read that"})
            self._answer(403, message.encode(), "application/json")
        elif where.endswith("/garbled"):
            self._answer(200, MAGIC + b"\xff")
        elif self.path.startswith(PATH + "?"):
            item = _configmap("a", labels={"x": "1"}, binary_data={"k": b"hi"})
            self._answer(
                200, _envelope("ConfigMapList", _field(2, bytes(_object(item, "ConfigMap"))))
            )
        else:
            self._answer(200, _configmap(where.rsplit("/", 1)[1]))

    def do_POST(self) -> None:
        body = self._record()
        assert body is not None and self.headers.get("Content-Type") == CONTENT_TYPE
        if body.name == "taken":
            self._answer(409, _status("already exists"))
        else:
            self._answer(201, _configmap(body.name, binary_data=dict(body.binary_data)))

    def do_DELETE(self) -> None:
        self._record()
        self._answer(404 if self.path.endswith("/missing") else 200, _status("gone"))


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "server.crt", directory / "server.key"
    request = [
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=127.0.0.1",
    ]
    names = ["-addext", "subjectAltName=IP:127.0.0.1"]
    files = ["-keyout", str(key), "-out", str(cert)]
    subprocess.run(["openssl", *request, *names, *files], check=True, capture_output=True)
    return cert, key


@pytest.fixture
def server(certificate: tuple[Path, Path]) -> Iterator[tuple[str, Seen]]:
    seen = Seen()
    handler = type("BoundHandler", (Handler,), {"seen": seen})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{httpd.server_address[1]}", seen
    finally:
        httpd.shutdown()
        httpd.server_close()


def _client(url: str, cert: Path, tokens: Iterator[str]) -> KubeConfigMapClient:
    api = ApiServer(url, cert, lambda: next(tokens))
    owner = {"apiVersion": "bakeline.io/v1alpha1", "kind": "BakingJob", "name": "j", "uid": "u"}
    return KubeConfigMapClient(api, "ns", owner, {"bakeline.io/job": "j"})


def test_status_codes_map_to_what_the_store_expects(
    server: tuple[str, Seen], certificate: tuple[Path, Path]
) -> None:
    url, seen = server
    configmaps = _client(url, certificate[0], iter(f"token-{i}" for i in range(100)))
    assert configmaps.get("missing") is None
    with pytest.raises(ConfigMapExistsError):
        configmaps.create("taken", {}, {}, {})
    with pytest.raises(ApiError, match="stage pods may not read that") as refused:
        configmaps.get("forbidden")
    assert refused.value.status == 403
    configmaps.delete("missing")  # already gone: not an error
    configmaps.create("new", {"bakeline.io/component": "data"}, {}, {"k": b"\x00\xffhi"})
    [listed] = configmaps.list({"bakeline.io/store": "p"})
    assert listed.binary_data == {"k": b"hi"} and listed.labels == {"x": "1"}
    # A miss in the API server's watch cache is confirmed from etcd; a hit is not.
    assert [r[1] for r in seen.requests[:2]] == [
        f"{PATH}/missing?resourceVersion=0",
        f"{PATH}/missing",
    ]
    assert seen.requests[3][1] == f"{PATH}/forbidden?resourceVersion=0"
    method, path, _, body = seen.requests[5]
    assert (method, path) == ("POST", PATH) and body is not None
    assert body.name == "new" and body.binary_data == {"k": b"\x00\xffhi"}  # raw bytes
    assert body.labels == {"bakeline.io/job": "j", "bakeline.io/component": "data"}
    assert seen.requests[6][1] == PATH + "?labelSelector=bakeline.io%2Fstore%3Dp"
    with pytest.raises(ConnectionError, match="does not decode"):  # transient for the wrapper
        configmaps.get("garbled")
    # A token read for every request (kubelet rotates the file), on one kept-alive connection.
    assert [r[2] for r in seen.requests] == [f"Bearer token-{i}" for i in range(8)]
    assert seen.connections == 1


def test_a_kept_alive_connection_the_server_dropped_is_retried_on_a_new_one(
    server: tuple[str, Seen], certificate: tuple[Path, Path]
) -> None:
    url, seen = server
    seen.drop_after_response = True
    configmaps = _client(url, certificate[0], iter(str(i) for i in range(100)))
    assert configmaps.get("a") is not None
    assert configmaps.get("b") is not None  # the first connection is gone by now
    assert [r[1].rsplit("/", 1)[1] for r in seen.requests] == [
        "a?resourceVersion=0",
        "b?resourceVersion=0",
    ]
    assert seen.connections == 2


def test_an_unreachable_server_is_an_os_error_the_wrapper_retries(
    certificate: tuple[Path, Path],
) -> None:
    configmaps = _client("https://127.0.0.1:9", certificate[0], iter(["t"]))
    with pytest.raises(OSError):
        configmaps.get("a")


def test_the_stage_store_does_not_import_the_kubernetes_client() -> None:
    probe = "import sys, bakeline.stagepod.store; print('kubernetes' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
