"""Delivery without servers: what an output URI means, the delivery pod as built, its outcome
read back, and a folder target (the S3 and OCI targets meet real servers in tests/e2e)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from bakeline.api.output import parse_target
from bakeline.checkpoints.manifest import Manifest, file_entry, write_manifest
from bakeline.contract import EXIT_FAILED, EXIT_INVALID_INPUT, EXIT_OK
from bakeline.delivery import DeliveryRefused, deliver
from bakeline.delivery.outcome import DeliveryOutcome, parse_outcome
from bakeline.runtime import pods

JOB: dict[str, Any] = {
    "apiVersion": "bakeline.io/v1alpha1",
    "kind": "BakingJob",
    "metadata": {"name": "digits", "namespace": "ns", "uid": "u-1", "generation": 1},
}


@pytest.mark.parametrize(
    ("uri", "scheme", "location", "path", "tag"),
    [
        ("s3://models/digits/v1", "s3", "models", "digits/v1", ""),
        ("s3://models", "s3", "models", "", ""),
        ("pvc://models/digits/v1", "pvc", "models", "digits/v1", ""),
        ("pvc://models", "pvc", "models", "", ""),
        (
            "oci://registry.example:5000/team/digits:v1",
            "oci",
            "registry.example:5000",
            "team/digits",
            "v1",
        ),
        ("oci://registry.example/digits", "oci", "registry.example", "digits", "latest"),
        ("file:///srv/models", "file", "/srv/models", "", ""),
    ],
)
def test_what_an_output_uri_names(
    uri: str, scheme: str, location: str, path: str, tag: str
) -> None:
    target = parse_target(uri)
    assert (target.scheme, target.location, target.path, target.tag) == (
        scheme,
        location,
        path,
        tag,
    )


@pytest.mark.parametrize(
    "uri",
    [
        "ftp://x/y",
        "s3://UPPER/x",
        "s3://models/../x",
        "oci://registry.example/Team:v1",
        "oci://r/x:bad tag",
        "file://host/x",
        "pvc://Models/x",
        "pvc://models/../x",
    ],
)
def test_what_is_not_an_output_uri(uri: str) -> None:
    with pytest.raises(ValueError):
        parse_target(uri)


def test_a_relative_folder_is_relative_to_the_job_file(tmp_path: Path) -> None:
    assert parse_target("out/digits", tmp_path).location == str(tmp_path / "out/digits")


def _package(folder: Path) -> Path:
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"onnx bytes")
    (folder / "reports").mkdir()
    (folder / "reports" / "profile.json").write_text("{}")
    files = [
        file_entry(folder, "model.onnx", "model"),
        file_entry(folder, "reports/profile.json", "report"),
    ]
    manifest = Manifest(model_name="digits", artifact="model.onnx", format="onnx", files=files)
    write_manifest(folder, manifest)
    return folder


def test_a_folder_gets_the_files_then_the_manifest_and_a_second_time_nothing(
    tmp_path: Path,
) -> None:
    package = _package(tmp_path / "package")
    first = deliver(package, parse_target(str(tmp_path / "out")))
    assert first.written == ("model.onnx", "reports/profile.json", "manifest.json")
    raw = (tmp_path / "out" / "manifest.json").read_bytes()
    assert first.digest == "sha256:" + hashlib.sha256(raw).hexdigest()
    second = deliver(package, parse_target(str(tmp_path / "out")))
    assert second.written == () and len(second.present) == 3


def test_a_package_that_does_not_match_its_manifest_is_never_sent(tmp_path: Path) -> None:
    package = _package(tmp_path / "package")
    (package / "model.onnx").write_bytes(b"tampered")
    with pytest.raises(DeliveryRefused, match="does not match its sha256"):
        deliver(package, parse_target(str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()


def test_the_outcome_is_read_back_as_written() -> None:
    done = DeliveryOutcome("s3://m/x", "sha256:ab", written=3, present=1)
    assert parse_outcome(done.to_json(), EXIT_OK) == done and done.exit_code == EXIT_OK
    refused = DeliveryOutcome("s3://m/x", error="the credentials were refused", refused=True)
    assert parse_outcome(refused.to_json(), EXIT_INVALID_INPUT).refused
    assert refused.exit_code == EXIT_INVALID_INPUT
    killed = parse_outcome("", 137)
    assert not killed.delivered and not killed.refused and killed.exit_code == EXIT_FAILED
    # A pod that says it delivered but exited non-zero did not.
    assert not parse_outcome(done.to_json(), EXIT_FAILED).delivered


def _containers(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    spec = pod["spec"]
    return {c["name"]: c for c in [*spec.get("initContainers", []), *spec["containers"]]}


def test_the_delivery_pod_holds_the_secret_and_no_token_on_a_volume_lane() -> None:
    output = {
        "uri": "s3://models/digits",
        "endpoint": "http://s3:9000",
        "credentialsSecret": "keys",
    }
    pod = pods.build_delivery_pod(
        JOB,
        attempt=1,
        checkpoint="package-1",
        record={"storage": "Volume"},
        output=output,
        image="img",
    )
    assert pod["metadata"]["name"] == "digits-deliver-1"
    assert pod["metadata"]["labels"][pods.LABEL_COMPONENT] == "delivery"
    [deliver_container] = pod["spec"]["containers"]
    assert deliver_container["envFrom"] == [{"secretRef": {"name": "keys"}}]
    assert deliver_container["command"][:6] == [
        "bakeline",
        "deliver",
        "--package",
        "/checkpoints/package-1",
        "--uri",
        "s3://models/digits",
    ]
    assert "--endpoint" in deliver_container["command"]
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert "initContainers" not in pod["spec"]
    claim = next(v for v in pod["spec"]["volumes"] if v["name"] == "checkpoints")
    assert claim["persistentVolumeClaim"] == {"claimName": "digits-checkpoints", "readOnly": True}
    assert deliver_container["securityContext"]["readOnlyRootFilesystem"] is True


def test_on_a_configmap_lane_only_the_restore_container_mounts_the_token() -> None:
    output = {"uri": "oci://registry.example/digits:v1", "credentialsSecret": "pull-push"}
    record = {"storage": "ConfigMap", "storeId": "package-1", "storePrefix": "digits-store"}
    pod = pods.build_delivery_pod(
        JOB, attempt=2, checkpoint="package-1", record=record, output=output, image="img"
    )
    containers = _containers(pod)
    assert set(containers) == {"restore", "deliver"}
    mounts = {name: {m["name"] for m in c["volumeMounts"]} for name, c in containers.items()}
    assert "api-token" in mounts["restore"] and "api-token" not in mounts["deliver"]
    assert "docker-config" in mounts["deliver"] and "docker-config" not in mounts["restore"]
    env = {e["name"]: e.get("value") for e in containers["deliver"]["env"]}
    assert env["DOCKER_CONFIG"] == pods.DOCKER_CONFIG_MOUNT
    restore_env = {e["name"]: e.get("value") for e in containers["restore"]["env"]}
    assert restore_env["BAKELINE_STORE_INPUT_ID"] == "package-1"
    secret = next(v for v in pod["spec"]["volumes"] if v["name"] == "docker-config")
    assert secret["secret"]["items"] == [{"key": ".dockerconfigjson", "path": "config.json"}]
    assert json.dumps(pod).count("pull-push") == 1  # named once: the deliver container's volume


def test_a_claim_output_is_mounted_writable_at_one_place_and_nothing_else_is() -> None:
    pod = pods.build_delivery_pod(
        JOB,
        attempt=1,
        checkpoint="package-1",
        record={"storage": "Volume"},
        output={"uri": "pvc://models/digits/v1"},
        image="img",
    )
    [container] = pod["spec"]["containers"]
    writable = [m for m in container["volumeMounts"] if not m.get("readOnly")]
    assert {m["mountPath"] for m in writable} == {pods.OUTPUT_MOUNT, pods.TMP_MOUNT}
    assert container["command"][-2:] == ["--claim-mount", pods.OUTPUT_MOUNT]
    output = next(v for v in pod["spec"]["volumes"] if v["name"] == "output")
    assert output["persistentVolumeClaim"] == {"claimName": "models"}
    assert "envFrom" not in container and "docker-config" not in json.dumps(pod)


def test_a_claim_output_is_a_folder_inside_the_mount(tmp_path: Path) -> None:
    package = _package(tmp_path / "package")
    target = parse_target("pvc://models/digits/v1")
    with pytest.raises(DeliveryRefused, match="not mounted"):
        deliver(package, target)
    done = deliver(package, target, claim_mount=tmp_path / "mnt")
    assert done.uri == "pvc://models/digits/v1"
    delivered = tmp_path / "mnt/digits/v1"
    assert (delivered / "model.onnx").read_bytes() == (package / "model.onnx").read_bytes()
    again = deliver(package, target, claim_mount=tmp_path / "mnt")
    assert again.written == () and "manifest.json" in again.present
