"""Every package serves itself over KServe's v2 (Open Inference) protocol: the model card's
ServingRuntime command, run here word for word (the package in place of /mnt/models), answers
as the agents' own session does, and refuses what it cannot run with a status and a reason."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import yaml

from bakeline.agents.pipeline import Chain
from bakeline.agents.serving import MAX_REQUEST_BYTES, InferenceServer, Model


def card_manifests(package: Path) -> list[dict[str, Any]]:
    """The YAML the model card's "Serve it on KServe" section shows."""
    card = (package / "README.md").read_text()
    section = card[card.index("## Serve it on KServe") :]
    [block] = re.findall(r"```yaml\n(.*?)```", section, flags=re.S)
    return [doc for doc in yaml.safe_load_all(block) if doc]


def _tensor(name: str, datatype: str, shape: list[int], data: list[Any]) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def served(digits_chain: Chain, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The card's container command, with the package copied where KServe puts it."""
    package = tmp_path_factory.mktemp("mnt") / "models"
    shutil.copytree(digits_chain.dirs["DeploymentPreparer"], package)
    runtime, service = card_manifests(package)
    [container] = runtime["spec"]["containers"]
    name = service["metadata"]["name"]
    port = _free_port()
    argv = [
        part.replace("/mnt/models", str(package)).replace("{{.Name}}", name)
        for part in [*container["command"], *container["args"]]
    ]
    argv = [sys.executable if part == "python" else part for part in argv]
    argv = [f"--port={port}" if part == "--port=8080" else part for part in argv]
    process = subprocess.Popen(
        [*argv, "--host=127.0.0.1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}/v2"
    deadline = time.monotonic() + 60
    while True:
        try:
            if requests.get(f"{base}/health/ready", timeout=2).status_code == 200:
                break
        except requests.ConnectionError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            out = process.stdout.read().decode() if process.stdout else ""
            pytest.fail(f"serve.py did not come up: {out}")
        time.sleep(0.2)
    yield type("Served", (), {"base": base, "name": name, "package": package, "port": port})
    process.terminate()
    process.wait(timeout=20)


def test_the_card_names_a_runtime_that_runs_the_packages_own_serve_py(served: Any) -> None:
    runtime, service = card_manifests(served.package)
    assert runtime["kind"] == "ServingRuntime" and service["kind"] == "InferenceService"
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    formats = {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["modelFormat"]["name"] in formats
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    security = runtime["spec"]["containers"][0]["securityContext"]
    assert security["readOnlyRootFilesystem"] and security["capabilities"]["drop"] == ["ALL"]
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", service["metadata"]["name"])
    # The HTTP layer only moves bytes: the same answers come from the plain function.
    server = InferenceServer(served.package, service["metadata"]["name"])
    assert server.answer("GET", "/v2/health/live", b"") == (200, {"live": True})


def test_a_v2_infer_answers_as_the_agents_session_does(served: Any) -> None:
    meta = requests.get(f"{served.base}/models/{served.name}", timeout=10).json()
    [feed] = meta["inputs"]
    assert feed["datatype"] == "FP32" and meta["platform"] == "onnxruntime_onnx"
    batch = np.random.default_rng(2).random((3, *feed["shape"][1:]), dtype=np.float32)
    request: dict[str, Any] = {
        "id": "r-1",
        "inputs": [_tensor(feed["name"], "FP32", list(batch.shape), batch.ravel().tolist())],
    }
    answer = requests.post(f"{served.base}/models/{served.name}/infer", json=request, timeout=30)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["id"] == "r-1" and body["model_name"] == served.name
    expected = Model(served.package).run({feed["name"]: batch})
    for output in body["outputs"]:
        got = np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])
        assert np.allclose(got, expected[output["name"]], atol=1e-5), output["name"]
    assert {o["name"] for o in body["outputs"]} == set(expected)
    ready = requests.get(f"{served.base}/models/{served.name}/ready", timeout=10).json()
    assert ready == {"name": served.name, "ready": True}


def test_what_the_server_refuses_it_says_why(served: Any) -> None:
    url = f"{served.base}/models/{served.name}/infer"
    meta = requests.get(f"{served.base}/models/{served.name}", timeout=10).json()
    [feed] = meta["inputs"]
    shape = [2, *feed["shape"][1:]]
    size = int(np.prod(shape))
    cases: list[tuple[dict[str, Any], str]] = [
        ({"inputs": [_tensor("nope", "FP32", shape, [0.0] * size)]}, "unknown input"),
        ({"inputs": [_tensor(feed["name"], "INT64", shape, [0] * size)]}, "expected FP32"),
        ({"inputs": [_tensor(feed["name"], "FP32", shape, [0.0])]}, "cannot reshape"),
        ({"inputs": []}, "missing inputs"),
    ]
    for request, words in cases:
        answer = requests.post(url, json=request, timeout=30)
        assert answer.status_code == 400 and words in answer.json()["error"], answer.text
    assert requests.post(url, data=b"{not json", timeout=10).status_code == 400
    other = requests.get(f"{served.base}/models/another", timeout=10)
    assert other.status_code == 404 and served.name in other.json()["error"]
    # A body over the limit is refused from its Content-Length, before it is read.
    with socket.create_connection(("127.0.0.1", served.port)) as raw:
        raw.sendall(
            f"POST /v2/models/{served.name}/infer HTTP/1.1\r\nHost: x\r\n"
            f"Content-Length: {MAX_REQUEST_BYTES + 1}\r\n\r\n".encode()
        )
        assert b" 413 " in raw.recv(4096).split(b"\r\n", 1)[0]


def test_a_package_on_openvino_serves_what_onnx_runtime_computes(
    digits_chain: Chain, tmp_path: Path
) -> None:
    # The InferenceAccelerator may keep OpenVINO (the same ONNX file): serve.py then compiles
    # it as runtime.json says, and answers the v2 protocol as for ONNX Runtime.
    package = tmp_path / "package"
    shutil.copytree(digits_chain.dirs["DeploymentPreparer"], package)
    runtime = json.loads((package / "runtime.json").read_text())
    on_ort = Model(package) if runtime.get("backend") == "onnxruntime" else None
    runtime.update(backend="openvino", inferencePrecision="f32", threadsByBatchSize={"1": 1})
    (package / "runtime.json").write_text(json.dumps(runtime))
    model = Model(package)
    server = InferenceServer(package, "digits")
    [feed] = server.inputs.values()
    assert feed["datatype"] == "FP32" and feed["shape"][0] == -1
    assert server.metadata()["platform"] == "openvino_onnx"
    for rows in (1, 5):  # one thread for a single row, intraOpThreads above
        batch = np.random.default_rng(rows).random((rows, *feed["shape"][1:]), dtype=np.float32)
        outputs = model.run({feed["name"]: batch})
        assert set(outputs) == {o["name"] for o in server.outputs}
        if on_ort is not None:
            expected = on_ort.run({feed["name"]: batch})
            for name, value in expected.items():
                assert np.allclose(outputs[name], value, atol=1e-3), name
        request = {
            "inputs": [_tensor(feed["name"], "FP32", list(batch.shape), batch.ravel().tolist())]
        }
        status, answer = server.answer(
            "POST", "/v2/models/digits/infer", json.dumps(request).encode()
        )
        assert status == 200, answer
    assert set(model._sessions) == {1, runtime["intraOpThreads"]} - {0} or model._sessions
