"""What a delivery pod reports (its termination message) and how the operator reads it back:
written and read here only, so the two sides cannot drift."""

from __future__ import annotations

import json
from dataclasses import dataclass

from bakeline import contract


@dataclass(frozen=True)
class DeliveryOutcome:
    """A delivery attempt's end: delivered (uri, digest, how many files were written or were
    already there) or not (error), and whether trying again may help."""

    uri: str
    digest: str = ""
    written: int = 0
    present: int = 0
    error: str = ""
    refused: bool = False  # the target refused it: trying again will not help

    @property
    def delivered(self) -> bool:
        return not self.error

    @property
    def exit_code(self) -> int:
        if self.delivered:
            return contract.EXIT_OK
        return contract.EXIT_INVALID_INPUT if self.refused else contract.EXIT_FAILED

    def to_json(self) -> str:
        body = {"uri": self.uri, "digest": self.digest, "written": self.written}
        body |= {"present": self.present, "error": self.error[:2048], "refused": self.refused}
        return json.dumps(body, separators=(",", ":"))


def parse_outcome(text: str, exit_code: int | None) -> DeliveryOutcome:
    """The outcome a delivery pod's termination message (`text`) and exit code say; a pod that
    left no message of ours (killed, its deadline passed) is a transient failure."""
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("uri"), str):
        why = text.strip()[-512:] or f"the delivery pod ended with exit code {exit_code}"
        return DeliveryOutcome(uri="", error=why)
    outcome = DeliveryOutcome(
        uri=body["uri"],
        digest=str(body.get("digest") or ""),
        written=int(body.get("written") or 0),
        present=int(body.get("present") or 0),
        error=str(body.get("error") or ""),
        refused=bool(body.get("refused")),
    )
    if exit_code not in (None, contract.EXIT_OK) and outcome.delivered:
        return DeliveryOutcome(outcome.uri, error=f"the delivery pod exited {exit_code}")
    return outcome
