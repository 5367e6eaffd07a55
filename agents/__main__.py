"""`bakeline-agent <Agent> --input DIR --output DIR [--params JSON] [--job JSON] [--stage NAME]
[--termination-log PATH]`; each flag also comes from the pod's environment (BAKELINE_*).
`bakeline-agent --version` prints the agents' version, which every cache key holds.

Writes the stage's result (JSON, <= 4 KiB) to the termination log and to stdout, logs JSON lines
on stderr, and exits 0 (succeeded), 2 (invalid input), 3 (gate failed) or 1 (transient error).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

from bakeline.agents.contract import (
    EXIT_ERROR,
    EXIT_OK,
    AgentFailure,
    Result,
    kebab,
    parse_job,
    parse_params,
    write_termination,
)
from bakeline.agents.logs import bind, capture_library_logs, log

DEFAULT_TERMINATION_LOG = "/dev/termination-log"


def _parser() -> argparse.ArgumentParser:
    env = os.environ.get
    parser = argparse.ArgumentParser(prog="bakeline-agent", description=__doc__)
    parser.add_argument("agent", nargs="?", default=env("BAKELINE_AGENT"))
    parser.add_argument("--input", default=env("BAKELINE_INPUT"))
    parser.add_argument("--output", default=env("BAKELINE_OUTPUT"))
    parser.add_argument("--params", default=env("BAKELINE_PARAMS"))
    parser.add_argument("--job", default=env("BAKELINE_JOB"))
    parser.add_argument("--stage", default=env("BAKELINE_STAGE"))
    parser.add_argument(
        "--version", action="store_true", help="print the agents' version (a cache key part)"
    )
    parser.add_argument(
        "--termination-log",
        default=env("BAKELINE_TERMINATION_MESSAGE_PATH", DEFAULT_TERMINATION_LOG),
    )
    return parser


class Terminated(BaseException):
    """SIGTERM arrived (pod deleted, deadline): stop, report, exit."""


def _on_sigterm(signum: int, _frame: object) -> None:
    raise Terminated(f"terminated by signal {signum}")


def main(argv: list[str] | None = None) -> int:
    # As PID 1 in a container a process gets no default action for SIGTERM: without a handler
    # the kubelet waits out the grace period and then SIGKILLs it.
    if threading.current_thread() is threading.main_thread():  # signal() works only there
        signal.signal(signal.SIGTERM, _on_sigterm)
    args = _parser().parse_args(argv)
    if args.version:
        from bakeline.agents.version import agent_version

        sys.stdout.write(f"bakeline-agent {agent_version()}\n")
        return EXIT_OK
    started = time.monotonic()
    agent_name = args.agent or ""
    stage = args.stage or (kebab(agent_name) if agent_name else "")
    result = Result(agent=agent_name, stage=stage, status="error", message="")
    try:
        # Imported here so that `--help` and argument errors stay fast.
        from bakeline.agents.stages import StageContext, resolve

        capture_library_logs()  # after the imports: torch installs its handlers on import

        if not agent_name:
            from bakeline.agents.contract import InvalidInput

            raise InvalidInput("no agent named (argument or BAKELINE_AGENT)")
        cls = resolve(agent_name)
        result.agent = cls.name
        result.stage = stage = args.stage or kebab(cls.name)
        bind(agent=cls.name, stage=stage)
        job = parse_job(args.job)
        params = parse_params(cls.params_model, args.params)
        if not args.output:
            from bakeline.agents.contract import InvalidInput

            raise InvalidInput("--output (or BAKELINE_OUTPUT) is required")
        ctx = StageContext(
            agent=cls.name,
            stage=stage,
            job=job,
            input_dir=Path(args.input) if args.input else None,
            output_dir=Path(args.output),
        )
        log("stage started", job=job.name, params=params.model_dump(by_alias=True))
        done = cls().run(ctx, params)
        manifest = done.manifest
        entry = manifest.file(manifest.artifact)
        result.status = "succeeded"
        result.message = done.outcome.message
        result.metrics = done.outcome.metrics
        result.artifact_sha256 = entry.sha256
        result.format = manifest.format
        result.size_bytes = entry.size_bytes
        code = EXIT_OK
    except AgentFailure as failure:
        result.status = failure.status
        result.message = failure.message
        result.metrics = failure.metrics
        code = failure.exit_code
    except Terminated as stop:  # transient: a new attempt may run elsewhere
        result.status = "error"
        result.message = str(stop)
        code = EXIT_ERROR
    except Exception as exc:  # anything unexpected is transient: the operator retries
        result.status = "error"
        result.message = f"{type(exc).__name__}: {exc}"
        log("stage crashed", level="error", traceback=traceback.format_exc())
        code = EXIT_ERROR
    result.duration_seconds = time.monotonic() - started
    message = result.to_text()
    write_termination(Path(args.termination_log), result)
    log("stage finished", status=result.status, exitCode=code, message=result.message)
    sys.stdout.write(message + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
