"""The delivery servers are real: an S3 store (SeaweedFS) and an OCI registry (distribution).

S3 through boto3 (a multipart upload, read back byte for byte; foreign credentials refused);
OCI through oras-py (an artifact of two layers with their own media types, pushed and pulled,
digests checked against the registry's manifest) and the plain distribution API for auth.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
from pathlib import Path

import pytest
import requests
from botocore.exceptions import ClientError
from storage_servers import OCIRegistry, S3Server

from support.storage_servers import docker_config, oras_registry, s3_client

pytestmark = pytest.mark.slow

MIB = 1024 * 1024


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_s3_multipart_upload_round_trips_bytes(s3_server: S3Server) -> None:
    s3 = s3_client(s3_server)
    bucket = f"bake-{secrets.token_hex(4)}"
    s3.create_bucket(Bucket=bucket)
    # Three parts: two of the 5 MiB minimum, a short last one.
    parts_data = [os.urandom(5 * MIB), os.urandom(5 * MIB), os.urandom(123_457)]
    key = "package-1/model.onnx"
    upload = s3.create_multipart_upload(Bucket=bucket, Key=key)
    parts = []
    for number, chunk in enumerate(parts_data, start=1):
        answer = s3.upload_part(
            Bucket=bucket, Key=key, UploadId=upload["UploadId"], PartNumber=number, Body=chunk
        )
        parts.append({"PartNumber": number, "ETag": answer["ETag"]})
    s3.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=upload["UploadId"], MultipartUpload={"Parts": parts}
    )

    whole = b"".join(parts_data)
    head = s3.head_object(Bucket=bucket, Key=key)
    assert head["ContentLength"] == len(whole)
    assert head["ETag"].strip('"').endswith("-3")  # a multipart ETag: md5 of md5s, part count
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert _sha256(body) == _sha256(whole)
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="package-1/")
    assert [item["Key"] for item in listed["Contents"]] == [key]


def test_s3_put_get_small_object_and_missing_key(s3_server: S3Server) -> None:
    s3 = s3_client(s3_server)
    bucket = f"bake-{secrets.token_hex(4)}"
    s3.create_bucket(Bucket=bucket)
    manifest = json.dumps({"files": {"model.onnx": "0" * 64}}).encode()
    s3.put_object(Bucket=bucket, Key="p/manifest.json", Body=manifest)
    assert s3.get_object(Bucket=bucket, Key="p/manifest.json")["Body"].read() == manifest
    with pytest.raises(ClientError) as missing:
        s3.get_object(Bucket=bucket, Key="p/nothing")
    assert missing.value.response["Error"]["Code"] in ("NoSuchKey", "404")


def test_s3_wrong_secret_is_refused(s3_server: S3Server) -> None:
    bad = s3_client(s3_server, secret_key=s3_server.secret_key + "x")
    with pytest.raises(ClientError) as refused:
        bad.list_buckets()
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert refused.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    unknown = s3_client(s3_server, access_key="nobody", secret_key="nothing")
    with pytest.raises(ClientError) as refused:
        unknown.put_object(Bucket="any", Key="k", Body=b"x")
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert refused.value.response["Error"]["Code"] == "InvalidAccessKeyId"


def test_s3_server_killed_and_restarted_keeps_its_objects(s3_server: S3Server) -> None:
    """kill() and restart() are what reliability tests use to take the store away mid-upload."""
    s3 = s3_client(s3_server)
    bucket = f"bake-{secrets.token_hex(4)}"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="kept", Body=b"before the crash")
    endpoint = s3_server.endpoint
    s3_server.kill()
    assert not s3_server.is_healthy()
    s3_server.restart()
    assert s3_server.endpoint == endpoint
    assert s3.get_object(Bucket=bucket, Key="kept")["Body"].read() == b"before the crash"


LAYERS = {
    "model.onnx": "application/vnd.bakeline.model.onnx",
    "runtime.json": "application/vnd.bakeline.runtime.v1+json",
}


def test_oci_artifact_with_two_layers_pushes_and_pulls(
    oci_registry: OCIRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "push"
    source.mkdir()
    contents = {
        "model.onnx": os.urandom(300_000),
        "runtime.json": json.dumps({"intra_op_num_threads": 2}).encode(),
    }
    for name, data in contents.items():
        (source / name).write_bytes(data)
    monkeypatch.chdir(source)  # oras-py takes file paths relative to the working directory
    target = f"{oci_registry.host}/bakeline/digits:{secrets.token_hex(3)}"
    registry = oras_registry(oci_registry)
    pushed = registry.push(
        target=target,
        files=[f"{name}:{media}" for name, media in LAYERS.items()],
        manifest_annotations={"io.bakeline.job": "digits"},
        quiet=True,
    )
    assert pushed.status_code == 201
    manifest_digest = pushed.headers["Docker-Content-Digest"]

    # The registry's own manifest, by the plain distribution API: layers, media types, digests.
    answer = requests.get(
        f"{oci_registry.endpoint}/v2/bakeline/digits/manifests/{manifest_digest}",
        auth=(str(oci_registry.username), str(oci_registry.password)),
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        timeout=10,
    )
    assert answer.status_code == 200
    assert "sha256:" + _sha256(answer.content) == manifest_digest
    manifest = answer.json()
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    by_title = {
        layer["annotations"]["org.opencontainers.image.title"]: layer
        for layer in manifest["layers"]
    }
    assert set(by_title) == set(LAYERS)
    for name, layer in by_title.items():
        assert layer["mediaType"] == LAYERS[name]
        assert layer["digest"] == "sha256:" + _sha256(contents[name])
        assert layer["size"] == len(contents[name])
    assert manifest["annotations"]["io.bakeline.job"] == "digits"

    # Pulled by digest with oras into a fresh directory: the same bytes.
    out = tmp_path / "pull"
    pulled = oras_registry(oci_registry).pull(
        target=f"{oci_registry.host}/bakeline/digits@{manifest_digest}", outdir=str(out)
    )
    assert sorted(Path(path).name for path in pulled) == sorted(LAYERS)
    for name, data in contents.items():
        assert _sha256((out / name).read_bytes()) == _sha256(data)


def test_oci_wrong_password_is_refused(oci_registry: OCIRegistry, tmp_path: Path) -> None:
    base = f"{oci_registry.endpoint}/v2/"
    assert requests.get(base, timeout=10).status_code == 401
    user = str(oci_registry.username)
    assert requests.get(base, auth=(user, "wrong"), timeout=10).status_code == 401
    assert requests.get(base, auth=(user, str(oci_registry.password)), timeout=10).ok
    # A push with the wrong password is refused before anything is stored.
    blob = tmp_path / "layer.bin"
    blob.write_bytes(b"refused")
    started = requests.post(
        f"{oci_registry.endpoint}/v2/bakeline/denied/blobs/uploads/",
        auth=(user, "wrong"),
        timeout=10,
    )
    assert started.status_code in (401, 403)
    bad = oras_registry(oci_registry, password="wrong")
    with pytest.raises(ValueError, match=r"Unauthorized|authentication"):
        bad.push(
            target=f"{oci_registry.host}/bakeline/denied:v1",
            files=[f"{blob}:application/octet-stream"],
            disable_path_validation=True,
            quiet=True,
        )
    tags = requests.get(
        f"{oci_registry.endpoint}/v2/bakeline/denied/tags/list",
        auth=(user, str(oci_registry.password)),
        timeout=10,
    )
    assert tags.status_code == 404  # NAME_UNKNOWN: nothing was pushed


def test_oci_docker_config_names_the_registry(oci_registry: OCIRegistry) -> None:
    config = json.loads(docker_config(oci_registry))
    entry = config["auths"][oci_registry.host]
    user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
    assert (user, password) == (oci_registry.username, oci_registry.password)
    answer = requests.get(f"{oci_registry.endpoint}/v2/", auth=(user, password), timeout=10)
    assert answer.ok
