"""Session fixtures for artifact delivery: a real S3 store and a real OCI registry on loopback.

Both come from hack/storage_servers.py (SeaweedFS and the CNCF distribution registry, built
from pinned Go modules into the cache like the control plane). A missing binary is built, a
start failure fails the tests that asked with the reason and the log's tail; nothing skips.

- `s3_server` yields an `S3Server`: `.endpoint` (http://127.0.0.1:PORT, path-style),
  `.access_key`, `.secret_key`, `.region`; `s3_client(server)` makes a boto3 client for it.
- `oci_registry` yields an `OCIRegistry` with basic auth on: `.host` (127.0.0.1:PORT, as in
  `{host}/repo:tag`), `.endpoint` (http://...), `.username`, `.password`;
  `oras_registry(server)` makes an oras-py client for it, `docker_config(server)` the
  `.dockerconfigjson` content a `kubernetes.io/dockerconfigjson` Secret would hold.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from storage_servers import OCIRegistry, S3Server, running


def _log(message: str) -> None:
    print(message, flush=True)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server(workdir=tmp_path_factory.mktemp("s3"))
    with running(server, _log):
        yield server


@pytest.fixture(scope="session")
def oci_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OCIRegistry]:
    server = OCIRegistry(workdir=tmp_path_factory.mktemp("oci"))
    with running(server, _log):
        yield server


def s3_client(
    server: S3Server, access_key: str | None = None, secret_key: str | None = None
) -> Any:
    """A boto3 S3 client for the server (its own credentials unless others are given)."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=server.endpoint,
        aws_access_key_id=access_key or server.access_key,
        aws_secret_access_key=secret_key or server.secret_key,
        region_name=server.region,
        config=Config(
            s3={"addressing_style": "path"},
            retries={"max_attempts": 2, "mode": "standard"},
            signature_version="s3v4",
        ),
    )


def oras_registry(
    server: OCIRegistry, username: str | None = None, password: str | None = None
) -> Any:
    """An oras-py client over plain HTTP with basic auth set directly (no ~/.docker login)."""
    import oras.provider  # type: ignore[import-untyped]

    registry = oras.provider.Registry(hostname=server.host, insecure=True, auth_backend="basic")
    user, secret = username or server.username, password or server.password
    if user and secret:
        registry.auth.set_basic_auth(user, secret)
    return registry


def docker_config(server: OCIRegistry) -> str:
    """The `.dockerconfigjson` of a `kubernetes.io/dockerconfigjson` Secret for the registry."""
    auth = base64.b64encode(f"{server.username}:{server.password}".encode()).decode()
    entry = {"username": server.username, "password": server.password, "auth": auth}
    return json.dumps({"auths": {server.host: entry}})


def s3_secret(server: S3Server, name: str, secret_key: str | None = None) -> dict[str, Any]:
    """A Secret holding the server's S3 credentials as spec.output.credentialsSecret reads them
    (another secret key than the server's when given: wrong credentials)."""
    keys = {
        "AWS_ACCESS_KEY_ID": server.access_key,
        "AWS_SECRET_ACCESS_KEY": secret_key or server.secret_key,
    }
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in keys.items()},
    }


def registry_secret(server: OCIRegistry, name: str) -> dict[str, Any]:
    """A kubernetes.io/dockerconfigjson Secret for the registry, as credentialsSecret reads it."""
    config = base64.b64encode(docker_config(server).encode()).decode()
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": config},
    }


def read_s3_package(client: Any, bucket: str, prefix: str, into: Path) -> dict[str, Any]:
    """Download a delivered package with the test's own S3 client into `into`, each file
    checked against the sha256 its manifest.json lists; returns that manifest."""
    manifest = json.loads(
        client.get_object(Bucket=bucket, Key=f"{prefix}/manifest.json")["Body"].read()
    )
    for entry in manifest["files"]:
        data = client.get_object(Bucket=bucket, Key=f"{prefix}/{entry['path']}")["Body"].read()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], entry["path"]
        (into / entry["path"]).parent.mkdir(parents=True, exist_ok=True)
        (into / entry["path"]).write_bytes(data)
    (into / "manifest.json").write_text(json.dumps(manifest))
    return dict(manifest)


def pull_oci_package(server: OCIRegistry, repository: str, tag: str, into: Path) -> str:
    """Pull a delivered package by hand over the distribution API into `into`: each layer's
    digest is checked against its bytes and written under its title; the package's manifest
    must list exactly the pulled files. Returns the OCI manifest's digest."""
    import requests

    auth = (str(server.username), str(server.password))
    base = f"{server.endpoint}/v2/{repository}"
    accept = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
    answer = requests.get(f"{base}/manifests/{tag}", auth=auth, headers=accept, timeout=30)
    assert answer.status_code == 200, answer.text
    oci = answer.json()
    assert oci["artifactType"] == "application/vnd.bakeline.package.v1"
    for layer in oci["layers"]:
        blob = requests.get(f"{base}/blobs/{layer['digest']}", auth=auth, timeout=60).content
        assert "sha256:" + hashlib.sha256(blob).hexdigest() == layer["digest"]
        path = into / layer["annotations"]["org.opencontainers.image.title"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob)
    listed = {e["path"] for e in json.loads((into / "manifest.json").read_text())["files"]}
    titles = {layer["annotations"]["org.opencontainers.image.title"] for layer in oci["layers"]}
    assert listed | {"manifest.json"} == titles
    return str(answer.headers["Docker-Content-Digest"])


def runs_as_digits(package: Path) -> None:
    """The package's model loads in ONNX Runtime and answers a batch of digits-shaped input."""
    import numpy as np
    import onnxruntime as ort

    manifest = json.loads((package / "manifest.json").read_text())
    session = ort.InferenceSession(str(package / manifest["artifact"]))
    feed = session.get_inputs()[0]
    batch = np.random.default_rng(0).random((2, 1, 8, 8), dtype=np.float32)
    logits = session.run(None, {feed.name: batch})[0]
    assert logits.shape == (2, 10)
