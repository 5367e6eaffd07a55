"""Run a `bakeline` command with an object census on SIGUSR2 (for attributing memory growth).

    python benchmarks/object_census.py CENSUS_DIR operator -n bench ...

Each SIGUSR2 writes CENSUS_DIR/census-N.json: live objects counted by type (after a full
collection), with their shallow sizes, and what glibc's allocator holds (mallinfo2), so two
censuses taken apart tell Python objects that pile up from memory the allocator keeps. Costs
nothing until signalled, unlike tracemalloc, which slowed the operator's start past the
benchmark's deadline.
"""

from __future__ import annotations

import collections
import ctypes
import gc
import itertools
import json
import os
import re
import signal
import sys
import tempfile
import threading
from pathlib import Path
from types import FrameType
from typing import Any

_MALLINFO2 = (
    "arena",
    "ordblks",
    "smblks",
    "hblks",
    "hblkhd",
    "usmblks",
    "fsmblks",
    "uordblks",
    "fordblks",
    "keepcost",
)


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in _MALLINFO2]


def _allocator() -> dict[str, int]:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
        info = libc.mallinfo2()
    except (OSError, AttributeError):
        return {}
    # arena + hblkhd: bytes obtained from the OS; uordblks: in use; fordblks: free but kept.
    return {name: int(getattr(info, name)) for name in _MALLINFO2}


def _pymalloc() -> dict[str, int]:
    """Python's own small-object allocator (arenas of 1 MiB, mmapped, not in mallinfo2), from
    sys._debugmallocstats, which can only write to the C stderr: fd 2 is borrowed meanwhile."""
    with tempfile.TemporaryFile() as sink:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(sink.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        sink.seek(0)
        text = sink.read().decode(errors="replace")
    figures = {}
    for key in (
        "arenas allocated current",
        "bytes in allocated blocks",
        "bytes in available blocks",
    ):
        found = re.search(rf"# {key}\s*=\s*([\d,]+)", text)
        if found:
            figures[key.replace(" ", "_")] = int(found.group(1).replace(",", ""))
    return figures


def census() -> dict[str, Any]:
    gc.collect()
    counts: collections.Counter[str] = collections.Counter()
    sizes: collections.Counter[str] = collections.Counter()
    for obj in gc.get_objects():
        name = f"{type(obj).__module__}.{type(obj).__qualname__}"
        counts[name] += 1
        sizes[name] += sys.getsizeof(obj, 0)
    return {
        "threads": threading.active_count(),
        "objects": sum(counts.values()),
        "by_type": {name: [counts[name], sizes[name]] for name, _ in counts.most_common(200)},
        "allocator": _allocator(),
        "pymalloc": _pymalloc(),
        # Every block Python holds, objects outside the collector's view (str, bytes) included.
        "allocated_blocks": sys.getallocatedblocks(),
    }


def main() -> None:
    directory = Path(sys.argv[1])
    directory.mkdir(parents=True, exist_ok=True)
    numbers = itertools.count()

    def write(signum: int, frame: FrameType | None) -> None:
        path = directory / f"census-{next(numbers)}.json"
        path.write_text(json.dumps(census()))

    signal.signal(signal.SIGUSR2, write)
    from bakeline.cli.main import main as bakeline

    sys.argv = ["bakeline", *sys.argv[2:]]
    bakeline()


if __name__ == "__main__":
    main()
