"""The S3 server goes away while the operator delivers a package, then comes back: the delivery
is a transient failure retried with backoff, the job stays Succeeded (its bake is good), and
once the server is back the package is there whole. A reader that takes manifest.json as the
sign of a package never sees one without every file: the manifest goes last."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from controlplane import ControlPlane
from support.kube import apply, condition, get, wait_for
from support.storage_servers import s3_client, s3_secret

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def test_the_s3_server_down_during_delivery_then_back_ends_delivered_whole(
    cluster: ControlPlane,
    namespace: str,
    operator: Any,
    scripted_agent: Callable[[dict[str, Any]], Path],
    s3_server: Any,
) -> None:
    scripted_agent({})
    bucket = f"f-{namespace}"
    s3_client(s3_server).create_bucket(Bucket=bucket)
    secret = s3_secret(s3_server, "s3")
    lane = {"apiVersion": "bakeline.io/v1alpha1", "kind": "Lane", "metadata": {"name": "standard"}}
    output = {
        "uri": f"s3://{bucket}/digits",
        "endpoint": s3_server.endpoint,
        "credentialsSecret": "s3",
        "insecure": True,
    }
    job = {
        "apiVersion": "bakeline.io/v1alpha1",
        "kind": "BakingJob",
        "metadata": {"name": "through"},
        "spec": {"model": {"source": {"builtin": "digits-cnn"}}, "output": output},
    }
    s3_server.kill()
    try:
        apply(cluster, [lane, secret, job], namespace)

        def failing() -> dict[str, Any] | None:
            found = get(cluster, "bj", "through", namespace) or {}
            held = condition(found, "Delivered") or {}
            return found if held.get("reason") == "DeliveryFailed" else None

        found = wait_for(failing, 180, interval=1, what="a failed delivery while S3 is down")
        held = condition(found, "Delivered") or {}
        print(f"S3 down: {held['message']}")
        assert found["status"]["phase"] == "Succeeded"
        assert "trying again in" in held["message"]
    finally:
        s3_server.restart()

    def delivered() -> dict[str, Any] | None:
        found = get(cluster, "bj", "through", namespace) or {}
        return found if (condition(found, "Delivered") or {}).get("status") == "True" else None

    status = wait_for(delivered, 240, interval=2, what="the delivery once S3 is back")["status"]
    print(f"S3 back: {status['output']['message']} after {status['output']['attempts']} attempts")
    assert status["output"]["attempts"] >= 2
    client = s3_client(s3_server)
    raw = client.get_object(Bucket=bucket, Key="digits/manifest.json")["Body"].read()
    for entry in json.loads(raw)["files"]:
        body = client.get_object(Bucket=bucket, Key=f"digits/{entry['path']}")["Body"].read()
        assert hashlib.sha256(body).hexdigest() == entry["sha256"], entry["path"]
