"""A scripted stand-in for `bakeline-agent`, for e2e tests of orchestration and faults.

It keeps the agent contract (env in, checkpoint dir + termination message out, exit codes) but
does no ML work, and fails on demand: a test writes a script file naming, per stage, the exit
codes of successive attempts (e.g. {"quantize": [1, 0]}: fail once, then succeed) and an
optional sleep. The real agents are exercised by the digits end-to-end test.

Faults, for the reliability suite (all optional, all per attempt like the exit codes):
- an exit "code" may also be "oom" (the process is SIGKILLed and leaves `.oom-killed` in its
  working directory, which the node harness reports as reason OOMKilled) or "segv" (SIGSEGV);
- {"sleeps": {stage: [30, 0]}}: a sleep per attempt (a hang past the stage's timeout, once);
- {"corrupt": {stage: [true, false]}}: report an artifactSha256 that the bytes do not have;
- {"jobs": {job: {...}}}: a script for one job, over the shared one;
- {"contentAddressed": true}: the artifact derives from the input's bytes, not its path.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import time
from pathlib import Path

from bakeline.contract import (
    QUALITY_METRIC_KEYS,
    TerminationMessage,
    per_batch_key,
    status_of_exit,
)


def main() -> int:
    stage = os.environ["BAKELINE_STAGE"]
    output = Path(os.environ["BAKELINE_OUTPUT"])
    script_path = Path(os.environ["SCRIPTED_AGENT_SCRIPT"])
    script = json.loads(script_path.read_text()) if script_path.is_file() else {}
    # Attempts are counted per job and stage; jobs run concurrently, so write atomically.
    job = json.loads(os.environ.get("BAKELINE_JOB") or "{}").get("name", "job")
    script = {**script, **(script.get("jobs") or {}).get(job, {})}
    if len(job) > 100:  # a file name has at most 255 bytes; job names may have 253
        job = hashlib.sha256(job.encode()).hexdigest()[:32]
    counter = script_path.with_name(f"{script_path.name}.{job}.{stage}.count")
    attempt = int(counter.read_text()) + 1 if counter.is_file() else 1
    partial = counter.with_name(f"{counter.name}.{os.getpid()}")
    partial.write_text(str(attempt))
    partial.replace(counter)
    codes = script.get(stage, [0])
    planned = codes[min(attempt, len(codes)) - 1]
    time.sleep(float(script.get("sleep", {}).get(stage, 0)))
    sleeps = script.get("sleeps", {}).get(stage)
    if sleeps:
        time.sleep(float(sleeps[min(attempt, len(sleeps)) - 1]))
    if planned in ("oom", "segv"):
        if planned == "oom":
            Path(".oom-killed").write_text(stage)  # the harness's cue: reason OOMKilled
        os.kill(os.getpid(), signal.SIGKILL if planned == "oom" else signal.SIGSEGV)
    code = int(planned)
    corrupts = script.get("corrupt", {}).get(stage) or [False]
    corrupt = bool(corrupts[min(attempt, len(corrupts)) - 1])
    params = json.loads(os.environ.get("BAKELINE_PARAMS") or "{}")
    source = os.environ.get("BAKELINE_INPUT")
    if script.get("contentAddressed") and source:
        # By the input's bytes, not its path: a retried upstream stage (a new checkpoint id)
        # gives the same artifact, as real, deterministic agents do.
        given = Path(source) / "model.bin"
        source = hashlib.sha256(given.read_bytes()).hexdigest() if given.is_file() else "none"
    payload = f"{stage}:{json.dumps(params, sort_keys=True)}:{source}"
    metrics = {
        "attempt": float(attempt),
        "fallback": 1.0 if params else 0.0,
        # What a passing QualityValidator reports, whatever the job's quality metric.
        QUALITY_METRIC_KEYS["cosine"]: 1.0,
        QUALITY_METRIC_KEYS["accuracy"]: 1.0,
        QUALITY_METRIC_KEYS["max-abs-error"]: 0.0,
    }
    result = TerminationMessage(
        agent=sys.argv[1] if len(sys.argv) > 1 else "", stage=stage, status=status_of_exit(code)
    )
    if code == 0:
        output.mkdir(parents=True, exist_ok=True)
        artifact = output / "model.bin"
        artifact.write_bytes(payload.encode())
        digest = hashlib.sha256(payload.encode()).hexdigest()
        if corrupt:  # the bytes written are not the bytes reported
            digest = hashlib.sha256(b"not " + payload.encode()).hexdigest()
        # The checkpoint contract: a manifest listing every file with its sha256.
        manifest = {
            "schemaVersion": 1,
            "modelName": "scripted",
            "artifact": "model.bin",
            "format": "onnx",
            "files": [
                {"path": "model.bin", "sha256": digest, "sizeBytes": len(payload), "role": "model"}
            ],
            "createdAt": "2026-01-01T00:00:00Z",
        }
        (output / "manifest.json").write_text(json.dumps(manifest, sort_keys=True))
        result.artifact_sha256, result.format, result.size_bytes = digest, "onnx", len(payload)
        # What a DeploymentPreparer reports of the profiler's measurements.
        metrics[per_batch_key(1, "speedup")] = 2.0
    else:
        result.message = f"scripted {result.status} (exit {code})"
    result.metrics = metrics
    Path(os.environ["BAKELINE_TERMINATION_MESSAGE_PATH"]).write_text(result.to_text())
    return code


if __name__ == "__main__":
    sys.exit(main())
