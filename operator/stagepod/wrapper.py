"""`bakeline stage -- AGENT...`: every stage pod's command, around the agent.

A checkpoint is only recorded once its bytes are known to be the bytes its manifest names, so
this wrapper checks what a successful agent wrote before the operator reads the result.

On lanes with `storage: Volume` the output stays on the job's claim: every file is checked
against its sha256 in the manifest, and the termination message's artifactSha256 against the
manifest's.

On lanes with `storage: ConfigMap` the agent, which opens model files from outside, runs in a
container that holds no token and knows nothing of the store (issue 23). The store's I/O
(bakeline.stagepod.store, through bakeline.checkpoints.configmap) runs in containers of its own
that mount the pod's token: `bakeline stage restore`, an init container, restores the input
checkpoint where the agent reads it (every file checked against its sha256; the original model
stays in the store for agents that never open it, carried by reference); `bakeline stage store`,
beside the agent, waits for it to finish, stores its output checkpoint (checked the same way)
and writes the agent's termination message with the stored checkpoint's id added, where the
operator reads it into the checkpoint record.

The two containers meet on a shared emptyDir (`BAKELINE_HANDOFF`): the agent's wrapper holds
an exclusive flock on `agent.lock` from before the agent starts until its container ends (the
kernel drops it however the process dies, OOM kill included), says `agent.started` once it
holds it, and leaves `outcome.json` (exit code and termination message) before it exits. The
store container waits for `agent.started`, then for the lock: what follows the lock is final.

Exit codes: the agent's own when it failed (the store container repeats it); 2 when the input
checkpoint is missing or corrupt (not worth retrying: the operator rolls back or fails the
stage); 1 when the agent's output does not verify (a torn or wrong write: retried), the API
refused a read or write, or the agent's container ended without an outcome (transient: retried).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from bakeline.checkpoints.manifest import ChecksumMismatchError, ManifestError, verify_checkpoint
from bakeline.contract import EXIT_FAILED, EXIT_INVALID_INPUT, TERMINATION_LIMIT, parse_termination

TERMINATION_BYTES = TERMINATION_LIMIT
EXIT_TRANSIENT = EXIT_FAILED
EXIT_INVALID = EXIT_INVALID_INPUT
# The handoff between the agent's container and the store's (ConfigMap lanes).
HANDOFF_LOCK = "agent.lock"
HANDOFF_STARTED = "agent.started"
HANDOFF_OUTCOME = "outcome.json"
# The steps of the store's own containers: `bakeline stage restore` and `bakeline stage store`.
STEPS = ("restore", "store", "export")


class StageStoreError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def verify_output(output: Path, termination: Path, *, by_store: bool = False) -> None:
    """The agent's checkpoint, in place: every file's sha256, and the artifact's as reported.
    `by_store` on ConfigMap lanes: the store hashes each file as it stores it, and checks a
    file carried by reference; here only that every other listed file is there."""
    try:
        manifest = verify_checkpoint(output, carried_ok=by_store, contents=not by_store)
    except (ChecksumMismatchError, ManifestError, OSError) as exc:
        raise StageStoreError(
            f"the agent's checkpoint does not verify: {exc}", EXIT_TRANSIENT
        ) from exc
    message = parse_termination(termination.read_bytes()) if termination.is_file() else None
    reported = message.artifact_sha256 if message is not None else None
    if reported and reported != manifest.artifact_sha256:
        raise StageStoreError(
            f"the agent reported artifact sha256 {reported}, its checkpoint holds "
            f"{manifest.artifact_sha256}",
            EXIT_TRANSIENT,
        )


def fail(termination: Path, error: StageStoreError) -> int:
    termination.write_text(json.dumps({"status": "failed", "message": str(error)[:3000]}))
    print(f"bakeline stage: {error}", file=sys.stderr)
    return error.code


def run_stage(command: Sequence[str]) -> int:
    """Run the agent and verify its output (Volume lanes), or hand its outcome to the store
    container (ConfigMap lanes: `BAKELINE_HANDOFF`); `restore` and `store` are the store
    containers' steps, `export` a fetch pod's (`bakeline fetch` of a Volume lane's package)."""
    termination = Path(os.environ["BAKELINE_TERMINATION_MESSAGE_PATH"])
    if list(command) in ([step] for step in STEPS):
        from bakeline.stagepod.store import run_export, run_restore, run_store

        step = {"restore": run_restore, "store": run_store, "export": run_export}[command[0]]
        return step(termination)
    handoff = os.environ.get("BAKELINE_HANDOFF")
    if handoff:
        return run_handing_off(command, Path(handoff), termination)
    code = run_agent(command)
    if code != 0:
        return code
    try:
        verify_output(Path(os.environ["BAKELINE_OUTPUT"]), termination)
    except StageStoreError as error:
        return fail(termination, error)
    return 0


def run_handing_off(command: Sequence[str], handoff: Path, termination: Path) -> int:
    """The agent's container on a ConfigMap lane: run the agent under the handoff lock, then
    leave its exit code and termination message for the store container. The lock's file
    descriptor is not inherited by the agent (Python opens files close-on-exec), so the lock
    is this process's: released when it exits, never held on by what the agent started."""
    lock = os.open(handoff / HANDOFF_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    (handoff / HANDOFF_STARTED).touch()
    code = run_agent(command)
    message = b""
    with contextlib.suppress(OSError):
        message = termination.read_bytes()[:TERMINATION_BYTES]
    write_outcome(handoff, code, message.decode(errors="replace"))
    return code


def write_outcome(handoff: Path, code: int, message: str) -> None:
    """Leave the agent's exit code and termination message for the store container."""
    partial = handoff / f".{HANDOFF_OUTCOME}.{os.getpid()}"
    partial.write_text(json.dumps({"exitCode": code, "message": message}))
    partial.replace(handoff / HANDOFF_OUTCOME)  # whole or absent, never torn


def read_outcome(handoff: Path) -> tuple[int, str] | None:
    """What write_outcome left; None when nothing whole is there. Written by the agent's
    container, the agent's own: taken as data, never trusted further."""
    try:
        outcome = json.loads((handoff / HANDOFF_OUTCOME).read_bytes()[: 4 * TERMINATION_BYTES])
    except (OSError, ValueError):
        return None
    if not isinstance(outcome, dict) or type(outcome.get("exitCode")) is not int:
        return None
    return int(outcome["exitCode"]), str(outcome.get("message") or "")


def run_agent(command: Sequence[str]) -> int:
    """The agent's exit code, forwarding SIGTERM; a signal death as the shell reports it."""
    child = subprocess.Popen(list(command))

    def forward(signum: int, _frame: FrameType | None) -> None:
        child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    code = child.wait()
    return code if code >= 0 else 128 - code
