"""`bakeline deliver --package DIR --uri URI ...`: the delivery pod's command. One try; the
operator decides about the next (exit 0 delivered, 2 refused, 1 worth another try), and reads
the outcome from the termination message (`outcome.py`)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

from bakeline.api.output import parse_target
from bakeline.contract import TERMINATION_MESSAGE_PATH
from bakeline.delivery.deliver import DeliveryError, DeliveryRefused, deliver
from bakeline.delivery.outcome import DeliveryOutcome


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--package", type=Path, required=True, help="the package's folder")
    parser.add_argument("--uri", required=True, help="s3://..., oci://... or a folder")
    parser.add_argument("--endpoint", default=None, help="an S3-compatible server's URL")
    parser.add_argument("--region", default=None)
    parser.add_argument("--insecure", action="store_true", help="plain HTTP; no TLS checks")
    parser.add_argument(
        "--claim-mount", type=Path, default=None, help="where a pvc:// output's claim is mounted"
    )


def run(args: argparse.Namespace) -> int:
    try:
        target = parse_target(args.uri)
        done = deliver(
            args.package,
            target,
            endpoint=args.endpoint,
            region=args.region,
            insecure=args.insecure,
            claim_mount=args.claim_mount,
        )
        outcome = DeliveryOutcome(done.uri, done.digest, len(done.written), len(done.present))
        print(
            f"delivered to {done.uri} ({done.digest}): {outcome.written} files written, "
            f"{outcome.present} already there"
        )
    except (ValueError, DeliveryRefused) as exc:
        outcome = DeliveryOutcome(args.uri, error=str(exc), refused=True)
    except DeliveryError as exc:
        outcome = DeliveryOutcome(args.uri, error=str(exc))
    if outcome.error:
        print(f"bakeline deliver: {outcome.error}", file=sys.stderr)
    path = Path(os.environ.get("BAKELINE_TERMINATION_MESSAGE_PATH", TERMINATION_MESSAGE_PATH))
    with contextlib.suppress(OSError):  # not in a pod: the exit code and stderr say it all
        path.write_text(outcome.to_json())
    return outcome.exit_code
