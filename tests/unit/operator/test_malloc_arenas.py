"""The operator caps glibc's malloc arenas at start-up, unless MALLOC_ARENA_MAX already does."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from bakeline.cli.operator import limit_malloc_arenas


def test_a_set_malloc_arena_max_is_left_to_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas() is False


def test_the_cap_applies_on_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert platform.libc_ver()[0] == "glibc"  # the operator's image and this machine
    assert limit_malloc_arenas() is True


def test_threads_share_two_arenas_once_capped() -> None:
    """Eight threads allocating at once: glibc's own count of arenas (malloc_info) stays at
    the cap with it, and exceeds it without."""
    program = """
import ctypes, os, sys, threading
from bakeline.cli.operator import limit_malloc_arenas
if sys.argv[1] == "capped":
    assert limit_malloc_arenas()
barrier = threading.Barrier(8)
def work():
    barrier.wait()
    for _ in range(2000):
        [bytearray(512) for _ in range(50)]
threads = [threading.Thread(target=work) for _ in range(8)]
[t.start() for t in threads]
[t.join() for t in threads]
libc = ctypes.CDLL("libc.so.6")
libc.open_memstream.restype = ctypes.c_void_p
buf, size = ctypes.c_char_p(), ctypes.c_size_t()
stream = libc.open_memstream(ctypes.byref(buf), ctypes.byref(size))
libc.malloc_info(0, ctypes.c_void_p(stream))
libc.fclose(ctypes.c_void_p(stream))
print(buf.value.decode().count("<heap nr="))
"""
    env = {"PATH": "/usr/bin:/bin"}
    counts = {
        mode: int(
            subprocess.run(
                [sys.executable, "-c", program, mode],
                capture_output=True,
                text=True,
                check=True,
                env=env,
            ).stdout
        )
        for mode in ("capped", "free")
    }
    assert counts["capped"] <= 2 < counts["free"], counts


def test_freed_heap_between_live_blocks_goes_back_to_the_os() -> None:
    """50 MB of 1 KiB blocks freed but every 64th: glibc keeps the heap (RSS stays up) until
    the trimming thread runs, then RSS falls by most of it."""
    program = """
import ctypes, sys, time
from bakeline.cli.operator import trim_free_heap_every
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.mallopt(-1, 0)  # M_TRIM_THRESHOLD 0: trim the top at every free; the middle stays
def rss_mb():
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024
blocks = [libc.malloc(1024) for _ in range(50_000)]
for block in blocks:
    ctypes.memset(block, 1, 1024)
for index, block in enumerate(blocks):
    if index % 64:
        libc.free(block)
before = rss_mb()
time.sleep(0.3)
untrimmed = rss_mb()
stop = trim_free_heap_every(0.05)
time.sleep(0.5)
stop.set()
print(before, untrimmed, rss_mb())
"""
    before, untrimmed, after = map(
        float,
        subprocess.run(
            [sys.executable, "-c", program],
            capture_output=True,
            text=True,
            check=True,
            env={"PATH": "/usr/bin:/bin", "MALLOC_ARENA_MAX": "1"},
        ).stdout.split(),
    )
    assert untrimmed > before - 5, (before, untrimmed)  # nothing returned by itself
    assert after < untrimmed - 30, (before, untrimmed, after)
