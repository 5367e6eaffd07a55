"""`bakeline run` delivers the package where spec.output says: a local folder, an S3 bucket,
an OCI registry (real servers, started by the fixtures). The digits job is baked once; each
delivery is a run of the same job with another output, its stages served from the cache."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.slow


def _run(
    job: dict[str, Any], folder: Path, workdir: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    path = folder / f"{job['metadata']['name']}-{len(list(folder.glob('*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(job))
    command = shutil.which("bakeline") or pytest.fail("the bakeline command is not installed")

    return subprocess.run(
        [command, "run", str(path), "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
        env={**os.environ, **(env or {})},
    )


def _job(repo_root: Path, output: dict[str, Any] | None) -> dict[str, Any]:
    job: dict[str, Any] = yaml.safe_load(
        (repo_root / "examples" / "bakingjob-digits.yaml").read_text()
    )
    if output is not None:
        job["spec"]["output"] = output
    return job


@pytest.fixture(scope="module")
def workdir(repo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits job baked once, without an output."""
    folder = tmp_path_factory.mktemp("baked")
    done = _run(_job(repo_root, None), folder, folder / "work")
    assert done.returncode == 0, done.stderr[-4000:]
    return folder / "work"


def _package_files(folder: Path) -> dict[str, str]:
    manifest = json.loads((folder / "manifest.json").read_text())
    return {entry["path"]: entry["sha256"] for entry in manifest["files"]}


def test_a_run_delivers_its_package_to_a_folder_and_again_writes_nothing(
    repo_root: Path, workdir: Path, tmp_path: Path
) -> None:
    job = _job(repo_root, {"uri": "delivered/digits"})  # relative to the job file
    first = _run(job, tmp_path, workdir)
    assert first.returncode == 0, first.stderr[-4000:]
    out = tmp_path / "delivered" / "digits"
    files = _package_files(out)
    assert files and all(
        hashlib.sha256((out / path).read_bytes()).hexdigest() == digest
        for path, digest in files.items()
    )
    assert _package_files(workdir / "result") == files  # what the bake left, byte for byte
    report = json.loads((workdir / "report.json").read_text())
    assert report["output"]["uri"] == out.resolve().as_uri()
    assert len(report["output"]["written"]) == len(files) + 1  # and the manifest, last
    assert "delivered to" in first.stderr

    again = _run(job, tmp_path, workdir)
    assert again.returncode == 0, again.stderr[-4000:]
    report = json.loads((workdir / "report.json").read_text())
    assert report["output"]["written"] == [] and len(report["output"]["present"]) == len(files) + 1


def test_a_run_delivers_to_s3_and_a_second_writes_nothing(
    repo_root: Path, workdir: Path, tmp_path: Path, s3_server: Any
) -> None:
    from support.storage_servers import read_s3_package, runs_as_digits, s3_client

    client = s3_client(s3_server)
    client.create_bucket(Bucket="models")
    job = _job(
        repo_root,
        {"uri": "s3://models/digits/v1", "endpoint": s3_server.endpoint, "insecure": True},
    )
    env = {"AWS_ACCESS_KEY_ID": s3_server.access_key, "AWS_SECRET_ACCESS_KEY": s3_server.secret_key}
    done = _run(job, tmp_path, workdir, env)
    assert done.returncode == 0, done.stderr[-4000:]
    # Read back with a client of the test's own: every file, then its sha256.
    fetched = tmp_path / "fetched"
    read_s3_package(client, "models", "digits/v1", fetched)
    runs_as_digits(fetched)

    again = _run(job, tmp_path, workdir, env)
    assert again.returncode == 0, again.stderr[-4000:]
    report = json.loads((workdir / "report.json").read_text())
    assert report["output"]["written"] == [], report["output"]

    wrong = {**env, "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    refused = _run(job, tmp_path, workdir, wrong)
    assert refused.returncode == 1
    assert "NOT DELIVERED" in refused.stderr and "credentials were refused" in refused.stderr
    assert "again in" not in refused.stderr  # a refusal is not retried


def test_a_run_delivers_to_an_oci_registry_as_an_artifact(
    repo_root: Path, workdir: Path, tmp_path: Path, oci_registry: Any
) -> None:
    from support.storage_servers import docker_config, pull_oci_package, runs_as_digits

    config = tmp_path / "docker"
    config.mkdir()
    (config / "config.json").write_text(docker_config(oci_registry))
    uri = f"oci://{oci_registry.host}/models/digits:v1"
    job = _job(repo_root, {"uri": uri, "insecure": True})
    done = _run(job, tmp_path, workdir, {"DOCKER_CONFIG": str(config)})
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads((workdir / "report.json").read_text())
    digest = report["output"]["digest"]

    # Pulled with the registry's API by hand: the tag names that manifest, each layer's
    # digest is its bytes' sha256, and its title is the file's path in the package.
    pulled = tmp_path / "pulled"
    assert pull_oci_package(oci_registry, "models/digits", "v1", pulled) == digest
    runs_as_digits(pulled)

    again = _run(job, tmp_path, workdir, {"DOCKER_CONFIG": str(config)})
    assert again.returncode == 0, again.stderr[-4000:]
    assert json.loads((workdir / "report.json").read_text())["output"]["written"] == []


def test_a_run_refuses_a_claim_output_before_it_bakes(repo_root: Path, tmp_path: Path) -> None:
    """pvc:// names a claim of a cluster: `bakeline run` says so at once (exit 2), and bakes
    nothing."""
    done = _run(_job(repo_root, {"uri": "pvc://models/digits"}), tmp_path, tmp_path / "work")
    assert done.returncode == 2, done.stderr[-2000:]
    assert "a PersistentVolumeClaim is a cluster's" in done.stderr
    assert not list((tmp_path / "work").glob("checkpoints/*"))
