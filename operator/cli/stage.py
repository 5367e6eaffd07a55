"""`bakeline stage -- AGENT...`: every stage pod's command, around the agent.

A checkpoint is only recorded once its bytes are known to be the bytes its manifest names, so
this wrapper checks what a successful agent wrote before the operator reads the result.

On lanes with `storage: Volume` the output stays on the job's claim: every file is checked
against its sha256 in the manifest, and the termination message's artifactSha256 against the
manifest's.

On lanes with `storage: ConfigMap` the agent still never talks to the API server; this wrapper
does, through the ConfigMap checkpoint store (bakeline.checkpoints.configmap): before the agent
it restores the input checkpoint where the agent reads it (every file checked against its
sha256; the original model stays in the store for agents that never open it, carried by
reference), after a successful agent it stores the output checkpoint (checked the same way), and
adds the stored checkpoint's id to the agent's termination message, where the operator reads it
into the checkpoint record.

Exit codes: the agent's own when it failed; 2 when the input checkpoint is missing or corrupt
(not worth retrying: the operator rolls back or fails the stage); 1 when the agent's output does
not verify (a torn or wrong write: retried) or the API refused a read or write (transient:
retried).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from bakeline.checkpoints.manifest import ChecksumMismatchError, ManifestError, verify_checkpoint
from bakeline.contract import EXIT_FAILED, EXIT_INVALID_INPUT, TERMINATION_LIMIT

TERMINATION_BYTES = TERMINATION_LIMIT
EXIT_TRANSIENT = EXIT_FAILED
EXIT_INVALID = EXIT_INVALID_INPUT


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
    result = json.loads(termination.read_text()) if termination.is_file() else {}
    reported = result.get("artifactSha256")
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
    """Restore the input, run the agent (forwarding SIGTERM), verify and store the output."""
    termination = Path(os.environ["BAKELINE_TERMINATION_MESSAGE_PATH"])
    if "BAKELINE_STORE_PREFIX" not in os.environ:  # storage: Volume
        code = run_agent(command)
        if code != 0:
            return code
        try:
            verify_output(Path(os.environ["BAKELINE_OUTPUT"]), termination)
        except StageStoreError as error:
            return fail(termination, error)
        return 0
    from bakeline.cli.stage_store import run_with_store

    return run_with_store(command, termination)


def run_agent(command: Sequence[str]) -> int:
    """The agent's exit code, forwarding SIGTERM; a signal death as the shell reports it."""
    child = subprocess.Popen(list(command))

    def forward(signum: int, _frame: FrameType | None) -> None:
        child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    code = child.wait()
    return code if code >= 0 else 128 - code
