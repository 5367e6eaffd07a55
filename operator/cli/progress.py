"""Live progress of `bakeline run` on stderr: which stage, for how long, how long is left.

On a terminal one status line is redrawn in place; in a log (CI, a pipe) a line is printed per
event and, while a stage runs, at most every `_LOG_EVERY` seconds.
"""

from __future__ import annotations

import time
from typing import TextIO

_LOG_EVERY = 30.0
_REDRAW_EVERY = 0.25


def format_seconds(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{rest:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class Progress:
    def __init__(self, stream: TextIO, total_stages: int) -> None:
        self._stream = stream
        self._live = stream.isatty()
        self._total = total_stages
        self._line = ""
        self._last_write = 0.0

    def event(self, text: str) -> None:
        """A line that stays: a stage started, finished, was cached, rolled back..."""
        self._clear()
        self._stream.write(text + "\n")
        self._stream.flush()

    def running(
        self, done: int, stage: str, agent: str, elapsed: float, stage_left: float, job_left: float
    ) -> None:
        """The status line while a stage runs, redrawn on every tick."""
        now = time.monotonic()
        line = (
            f"[{done}/{self._total}] {stage} ({agent}) {format_seconds(elapsed)}"
            f" | stage ~{format_seconds(stage_left)} left | job ~{format_seconds(job_left)} left"
        )
        if self._live:
            if now - self._last_write >= _REDRAW_EVERY:
                self._draw(line)
                self._last_write = now
        elif now - self._last_write >= _LOG_EVERY:
            self._stream.write(line + "\n")
            self._stream.flush()
            self._last_write = now

    def waiting(self, reason: str, seconds: float) -> None:
        self.event(f"  waiting {format_seconds(seconds)}: {reason}")

    def stage_started(self) -> None:
        # The start was just printed as an event: the next status line is due in a while.
        self._last_write = time.monotonic()

    def close(self) -> None:
        self._clear()

    def _draw(self, line: str) -> None:
        pad = max(len(self._line) - len(line), 0)
        self._stream.write("\r" + line + " " * pad)
        self._stream.flush()
        self._line = line

    def _clear(self) -> None:
        if self._live and self._line:
            self._stream.write("\r" + " " * len(self._line) + "\r")
            self._line = ""
