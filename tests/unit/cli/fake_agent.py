"""A stand-in for `bakeline-agent` that follows the agent contract in milliseconds.

Unit tests of the store, the runner and the CLI use it where the real agents would take minutes.
What it does is steered by the `fake` entry of its params, per stage:

    {"fake": {"exit": 3, "message": "...", "sleep": 5, "sleepFirst": 30, "failTimes": 2,
              "accuracyFromLineage": true, "minAccuracy": 0.97},
     "fakeMetrics": {...}}

(`fakeMetrics` sits beside `fake`: params allow one level of maps, like any agent's.)

`failTimes: n` fails the first n calls of that stage with exit 1 (counted in
$BAKELINE_FAKE_AGENT_STATE: `bakeline run` passes BAKELINE_* on to agents), then succeeds.
Every call is appended to $BAKELINE_FAKE_AGENT_STATE/calls.log.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

from bakeline.checkpoints.manifest import (
    LineageEntry,
    Manifest,
    file_entry,
    read_manifest,
    utc_now,
    write_manifest,
)
from bakeline.contract import TerminationMessage, status_of_exit


def main() -> int:
    if sys.argv[1:] == ["--version"]:
        print("fake-agent 1.0")
        return 0
    parser = argparse.ArgumentParser()
    parser.add_argument("agent")
    parser.add_argument("--input", type=Path)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--params", default="{}")
    parser.add_argument("--job", default="{}")
    parser.add_argument("--stage", required=True)
    parser.add_argument("--termination-log", type=Path, required=True)
    args = parser.parse_args()
    params = json.loads(args.params)
    job = json.loads(args.job)
    fake = params.get("fake", {})
    state = Path(os.environ.get("BAKELINE_FAKE_AGENT_STATE", args.output.parent))
    state.mkdir(parents=True, exist_ok=True)
    with (state / "calls.log").open("a") as log:
        log.write(f"{args.stage} {args.agent} {json.dumps(params, sort_keys=True)}\n")
    counter = state / f"{args.stage}.count"
    calls = int(counter.read_text()) + 1 if counter.exists() else 1
    counter.write_text(str(calls))
    (state / f"{args.stage}.pid").write_text(str(os.getpid()))
    started = time.time()
    time.sleep(float(fake.get("sleep", 0)))
    if calls == 1:
        time.sleep(float(fake.get("sleepFirst", 0)))

    def finish(
        code: int,
        message: str,
        metrics: dict[str, float] | None = None,
        artifact: tuple[str, str, int] | None = None,  # sha256, format, size
    ) -> int:
        result = TerminationMessage(
            agent=args.agent,
            stage=args.stage,
            status=status_of_exit(code),
            message=message,
            metrics=metrics or {},
            duration_seconds=time.time() - started,
        )
        if artifact is not None:
            result.artifact_sha256, result.format, result.size_bytes = artifact
        args.termination_log.write_text(result.to_text())
        print(message, file=sys.stderr)
        return code

    if calls <= int(fake.get("failTimes", 0)):
        return finish(1, f"flaky failure {calls}")
    code = int(fake.get("exit", 0))
    if code != 0:
        return finish(code, str(fake.get("message", f"fake exit {code}")))
    if args.agent != "BakingCoordinator" and args.input is None:
        return finish(2, "no --input")
    upstream = read_manifest(args.input) if args.input is not None else None
    source = upstream.artifact_sha256 if upstream else job.get("model", {}).get("sha256", "")
    body = hashlib.sha256(f"{source}|{args.agent}|{json.dumps(params, sort_keys=True)}".encode())
    args.output.mkdir(parents=True, exist_ok=True)
    size = int(fake.get("size", 1000))
    (args.output / "model.bin").write_bytes(body.digest() * (size // 32 + 1))
    entry = file_entry(args.output, "model.bin", role="model")
    # Quality good enough for the default gates unless the test says otherwise.
    metrics = {
        "sizeBytes": float(entry.size_bytes),
        "accuracy": 0.99,
        "cosine": 0.995,
        **params.get("fakeMetrics", {}),
    }
    if fake.get("accuracyFromLineage") and upstream:
        # A validator stand-in: the quality depends on what an upstream stage was asked to do.
        for step in reversed(upstream.lineage):
            if "accuracy" in step.params:
                metrics["accuracy"] = float(step.params["accuracy"])
                break
    gate = fake.get("minAccuracy")
    if gate is not None and metrics["accuracy"] < gate:
        return finish(3, f"accuracy {metrics['accuracy']} < {gate}", metrics=metrics)
    lineage = list(upstream.lineage) if upstream else []
    lineage.append(
        LineageEntry(
            stage=args.stage,
            agent=args.agent,
            agent_version="1.0",
            params=params,
            input_sha256=source or None,
            output_sha256=entry.sha256,
            started_at=utc_now(),
            finished_at=utc_now(),
            metrics=metrics,
        )
    )
    write_manifest(
        args.output,
        Manifest(
            model_name="fake",
            artifact="model.bin",
            format="safetensors",
            files=[entry],
            lineage=lineage,
            metrics=metrics,
        ),
    )
    return finish(0, "done", metrics, (entry.sha256, "safetensors", entry.size_bytes))


if __name__ == "__main__":
    sys.exit(main())
