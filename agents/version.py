"""The agents' version: the release plus a digest of their source, part of every cache key.

A release number alone would let a changed agent (a patched build, a development install) reuse
results its predecessor cached; the digest changes with any line of the agents' code.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from bakeline.agents import AGENT_VERSION


@functools.cache
def agent_version() -> str:
    """`<release>+src.<12 hex>`: sha256 over the agents package's Python files, path and text."""
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return f"{AGENT_VERSION}+src.{digest.hexdigest()[:12]}"
