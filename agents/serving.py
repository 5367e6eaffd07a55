"""Run a baked package exactly as it was profiled: `runtime.json` applied in full (its backend;
for ONNX Runtime the graph optimisation level, disabled optimizers, intra- and inter-op threads,
the intra-op threads per batch size, spinning, execution provider; for OpenVINO the threads per
batch size and the inference precision).

Copied into every package as `serve.py`, beside the model, so it imports onnxruntime and numpy
only (and openvino, for a package whose runtime.json names it); the agents build their sessions
with it too (`agents/runtimes`), so what a package's user runs is what was timed. Use:

    from serve import Model
    model = Model(".")                       # the package's folder
    outputs = model.run({"input_ids": ids, "attention_mask": mask})   # name -> array

or serve it over HTTP with KServe's v2 (Open Inference) protocol, as the model card's KServe
ServingRuntime does:

    python serve.py PACKAGE --name NAME --port 8080
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

BACKENDS = ("onnxruntime", "openvino")
LEVELS = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def session(
    path: str | Path,
    runtime: dict[str, Any],
    threads: int | None = None,
    profile_prefix: str | None = None,
) -> ort.InferenceSession:
    """An ONNX Runtime session of the model at `path` as `runtime` (runtime.json) says; on
    `threads` intra-op threads when given (else its intraOpThreads; 0: the runtime's own)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = LEVELS[runtime.get("graphOptimizationLevel", "all")]
    intra = int(runtime.get("intraOpThreads", 0) if threads is None else threads)
    if intra > 0:
        options.intra_op_num_threads = intra
    options.inter_op_num_threads = max(1, int(runtime.get("interOpThreads", 1)))
    spinning = "1" if runtime.get("allowSpinning") else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
    # Spinning pays between operators; after a run ONNX Runtime's workers would go on spinning
    # for about 25 ms, burning the CPU quota and the cores of whatever runs next.
    options.add_session_config_entry("session.force_spinning_stop", spinning)
    options.log_severity_level = 3
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    available = ort.get_available_providers()
    wanted = dict.fromkeys(
        (runtime.get("executionProvider", "CPUExecutionProvider"), "CPUExecutionProvider")
    )
    return ort.InferenceSession(
        str(path),
        options,
        providers=[p for p in wanted if p in available],
        disabled_optimizers=list(runtime.get("disabledOptimizers") or []) or None,
    )


def threads_for(runtime: dict[str, Any], rows: int) -> int:
    """The intra-op threads a batch of `rows` runs on: threadsByBatchSize's smallest key that
    holds it, else intraOpThreads."""
    by_size = {int(k): int(v) for k, v in (runtime.get("threadsByBatchSize") or {}).items()}
    fits = [size for size in by_size if rows <= size]
    return by_size[min(fits)] if fits else int(runtime.get("intraOpThreads", 0))


def openvino_model(
    path: str | Path, runtime: dict[str, Any], threads: int | None = None, profile: bool = False
) -> Any:
    """An OpenVINO compiled model of the ONNX file at `path` as `runtime` says: one stream,
    latency first, on `threads` inference threads when given (else its intraOpThreads; 0: the
    runtime's own), at its inferencePrecision (what the bake measured: unset, OpenVINO would
    pick bf16 on one CPU and f32 on another)."""
    import openvino  # only a package whose runtime.json names OpenVINO needs it

    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
    intra = int(runtime.get("intraOpThreads", 0) if threads is None else threads)
    if intra > 0:
        config["INFERENCE_NUM_THREADS"] = intra
    if runtime.get("inferencePrecision"):
        config["INFERENCE_PRECISION_HINT"] = str(runtime["inferencePrecision"])
    if profile:
        config["PERF_COUNT"] = True
    return openvino.Core().compile_model(str(path), "CPU", config)


def precision_name(element_type: Any) -> str:
    """An OpenVINO element type as its configuration takes it back (e.g. "bf16")."""
    return str(element_type.get_type_name())


# OpenVINO's element types as the v2 protocol names them.
OPENVINO_DATATYPES = {
    "f32": "FP32",
    "f16": "FP16",
    "f64": "FP64",
    "i64": "INT64",
    "i32": "INT32",
    "i16": "INT16",
    "i8": "INT8",
    "u8": "UINT8",
    "boolean": "BOOL",
}
Runs = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


def _ort_runs(runner: ort.InferenceSession) -> Runs:
    names = [output.name for output in runner.get_outputs()]

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(names, runner.run(names, feeds), strict=True))

    return run


def openvino_runs(compiled: Any) -> Runs:
    """Every output of an OpenVINO compiled model, by name, in the graph's order."""
    ports = [(port, port.get_any_name()) for port in compiled.outputs]

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        result = compiled(feeds)
        return {name: np.asarray(result[port]) for port, name in ports}

    return run


class Model:
    """The package's model, one session per thread count its runtime.json asks for."""

    def __init__(self, package: str | Path = ".") -> None:
        folder = Path(package)
        self.runtime: dict[str, Any] = json.loads((folder / "runtime.json").read_text())
        self.backend = str(self.runtime.get("backend", "onnxruntime"))
        if self.backend not in BACKENDS:
            raise ValueError(f"this package runs on {self.backend}, not {' or '.join(BACKENDS)}")
        manifest = json.loads((folder / "manifest.json").read_text())
        self.path = folder / manifest["artifact"]
        self._sessions: dict[int, Any] = {}
        self._runs: dict[int, Runs] = {}

    def session(self, rows: int) -> Any:
        """The ONNX Runtime session or OpenVINO compiled model a batch of `rows` runs on."""
        threads = threads_for(self.runtime, rows)
        if threads not in self._sessions:
            if self.backend == "openvino":
                self._sessions[threads] = openvino_model(self.path, self.runtime, threads)
            else:
                self._sessions[threads] = session(self.path, self.runtime, threads)
        return self._sessions[threads]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every output by name, for a batch of named inputs."""
        rows = len(next(iter(feeds.values())))
        threads = threads_for(self.runtime, rows)
        if threads not in self._runs:
            found = self.session(rows)
            self._runs[threads] = (
                openvino_runs(found) if self.backend == "openvino" else _ort_runs(found)
            )
        return self._runs[threads](feeds)

    def signature(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The inputs' and outputs' v2 metadata: name, datatype, shape (-1: any)."""
        probe = self.session(1)
        if self.backend == "openvino":
            return [_openvino_metadata(p) for p in probe.inputs], [
                _openvino_metadata(p) for p in probe.outputs
            ]
        return [_tensor_metadata(a) for a in probe.get_inputs()], [
            _tensor_metadata(a) for a in probe.get_outputs()
        ]


# ---------------------------------------------------------------------------- serving over HTTP
# The KServe Open Inference Protocol (v2) over HTTP, with the standard library only, so
# `python serve.py PACKAGE --name NAME --port 8080` serves a package as a KServe ServingRuntime
# container runs it (the model card shows one). JSON tensors only; no binary extension.

DATATYPES = {
    "tensor(float)": "FP32",
    "tensor(float16)": "FP16",
    "tensor(double)": "FP64",
    "tensor(int64)": "INT64",
    "tensor(int32)": "INT32",
    "tensor(int16)": "INT16",
    "tensor(int8)": "INT8",
    "tensor(uint8)": "UINT8",
    "tensor(bool)": "BOOL",
}
NUMPY = {
    "FP32": np.float32,
    "FP16": np.float16,
    "FP64": np.float64,
    "INT64": np.int64,
    "INT32": np.int32,
    "INT16": np.int16,
    "INT8": np.int8,
    "UINT8": np.uint8,
    "BOOL": np.bool_,
}
MAX_REQUEST_BYTES = 64 * 1024 * 1024  # a request's body; larger ones are refused (413)


class RequestError(Exception):
    """A request the server refuses, with its HTTP status and the reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _tensor_metadata(arg: Any) -> dict[str, Any]:
    shape = [d if isinstance(d, int) else -1 for d in arg.shape]
    return {"name": arg.name, "datatype": DATATYPES.get(arg.type, arg.type), "shape": shape}


def _openvino_metadata(port: Any) -> dict[str, Any]:
    shape = [d.get_length() if d.is_static else -1 for d in port.get_partial_shape()]
    kind = port.get_element_type().get_type_name()
    return {
        "name": port.get_any_name(),
        "datatype": OPENVINO_DATATYPES.get(kind, kind),
        "shape": shape,
    }


class InferenceServer:
    """The v2 protocol's answers for one package, as plain functions of a request (the HTTP
    handler below only moves bytes)."""

    def __init__(self, package: str | Path, name: str) -> None:
        self.model = Model(package)
        self.name = name
        inputs, self.outputs = self.model.signature()
        self.inputs = {arg["name"]: arg for arg in inputs}

    def metadata(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "versions": ["1"],
            "platform": f"{self.model.backend}_onnx",
            "inputs": list(self.inputs.values()),
            "outputs": self.outputs,
        }

    def infer(self, request: dict[str, Any]) -> dict[str, Any]:
        feeds: dict[str, np.ndarray] = {}
        for tensor in request.get("inputs") or []:
            name = str(tensor.get("name"))
            if name not in self.inputs:
                raise RequestError(400, f"unknown input {name!r}; inputs: {sorted(self.inputs)}")
            datatype = str(tensor.get("datatype"))
            expected = self.inputs[name]["datatype"]
            if datatype != expected:
                raise RequestError(400, f"input {name}: datatype {datatype}, expected {expected}")
            try:
                array: np.ndarray = np.asarray(tensor.get("data"), dtype=NUMPY[datatype])
                feeds[name] = array.reshape([int(d) for d in tensor.get("shape") or []])
            except (KeyError, TypeError, ValueError) as exc:
                raise RequestError(400, f"input {name}: {exc}") from exc
        missing = sorted(set(self.inputs) - set(feeds))
        if missing:
            raise RequestError(400, f"missing inputs: {missing}")
        wanted = [str(o.get("name")) for o in request.get("outputs") or []]
        try:
            results = self.model.run(feeds)
        except Exception as exc:  # the runtime's own words: a shape or value it refuses
            raise RequestError(400, f"the model refused the inputs: {exc}") from exc
        unknown = sorted(set(wanted) - set(results))
        if unknown:
            raise RequestError(400, f"unknown outputs {unknown}; outputs: {sorted(results)}")
        answer: dict[str, Any] = {"model_name": self.name, "model_version": "1"}
        if request.get("id") is not None:
            answer["id"] = request["id"]
        outputs: list[dict[str, Any]] = []
        for name, value in results.items():
            if wanted and name not in wanted:
                continue
            datatype = next(o["datatype"] for o in self.outputs if o["name"] == name)
            outputs.append(
                {
                    "name": name,
                    "datatype": datatype,
                    "shape": list(value.shape),
                    "data": value.reshape(-1).tolist(),
                }
            )
        answer["outputs"] = outputs
        return answer

    def answer(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        """(status, JSON) for one request."""
        parts = [p for p in path.split("?", 1)[0].split("/") if p]
        try:
            if parts[:1] != ["v2"]:
                raise RequestError(404, f"no such path {path}")
            if method == "GET" and parts[1:] in (["health", "live"], ["health", "ready"]):
                return 200, {parts[2]: True}
            if method == "GET" and parts[1:] == []:
                return 200, {"name": "bakeline-serve", "version": "1", "extensions": []}
            if len(parts) < 3 or parts[1] != "models":
                raise RequestError(404, f"no such path {path}")
            if parts[2] != self.name:
                raise RequestError(404, f"no model {parts[2]!r}; this server has {self.name!r}")
            rest = parts[3:]
            if rest[:1] == ["versions"]:  # one version, "1"
                if rest[1:2] != ["1"]:
                    raise RequestError(404, f"model {self.name} has version 1 only")
                rest = rest[2:]
            if method == "GET" and rest == []:
                return 200, self.metadata()
            if method == "GET" and rest == ["ready"]:
                return 200, {"name": self.name, "ready": True}
            if method == "POST" and rest == ["infer"]:
                try:
                    request = json.loads(body)
                except ValueError as exc:
                    raise RequestError(400, f"the body is not JSON: {exc}") from exc
                if not isinstance(request, dict):
                    raise RequestError(400, "the body is not a JSON object")
                return 200, self.infer(request)
            raise RequestError(404, f"no such path {path}")
        except RequestError as exc:
            return exc.status, {"error": str(exc)}


# A serving container listens on every interface of its pod: KServe routes to the pod's IP.
ALL_INTERFACES = "0.0.0.0"  # noqa: S104


def serve_http(package: str | Path, name: str, port: int, host: str = ALL_INTERFACES) -> None:
    """Serve the package over HTTP until interrupted."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    server = InferenceServer(package, name)

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_REQUEST_BYTES:
                status, answer = 413, {"error": f"the body exceeds {MAX_REQUEST_BYTES} bytes"}
            else:
                status, answer = server.answer(method, self.path, self.rfile.read(length))
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._reply("GET")

        def do_POST(self) -> None:
            self._reply("POST")

        def log_message(self, format: str, *args: Any) -> None:
            pass  # one line per request on stderr is noise in a serving container

    httpd = ThreadingHTTPServer((host, port), Handler)
    print(f"serving {name} from {package} on http://{host}:{port}/v2", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Serve a baked package (KServe v2 protocol).")
    parser.add_argument("package", nargs="?", default=".", help="the package's folder")
    parser.add_argument("--name", default="model", help="the model's name in the URLs")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--host", default=ALL_INTERFACES)
    args = parser.parse_args(argv)
    serve_http(args.package, args.name, args.port, args.host)


if __name__ == "__main__":
    main()
