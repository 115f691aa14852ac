"""Progress on stderr for slow builds and slow waits for another process's build.

A UI element, not logging: it writes to stderr directly, so that a newcomer whose application configured
no logging still sees why an import takes a minute. Nothing shows for what ends within SHOW_AFTER seconds,
and nothing here runs on a cache hit (only the build and the lock wait create a display).

On a terminal one line names what is going on, then a short status line is redrawn in place (``\\r``);
elsewhere (a pipe, a file) only the first line and the last one are written, without carriage returns.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from typing import TextIO

from .. import _settings

__all__ = ["SHOW_AFTER", "BuildProgress", "LockWaitProgress", "clock", "enabled"]

SHOW_AFTER = 2.0  # seconds before anything is shown
_REDRAW_EVERY = 0.1  # seconds between redraws of the live line at most
_PREFIX = "cpp_extension_tools: "
_NINJA_STATUS = re.compile(r"^\[(\d+)/(\d+)\] ")

clock: Callable[[], float] = time.monotonic  # tests replace it


def enabled(verbose: bool) -> bool:
    """CACHED_CPP_EXTENSION_PROGRESS: ``auto`` shows progress unless verbose output already shows ninja's lines."""
    setting = _settings.PROGRESS.get()
    return not verbose if setting is None else setting


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (ValueError, OSError):  # closed, or not a real stream
        return False


class _Display:
    """A first line after SHOW_AFTER seconds, a live status on a terminal, and a last line."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.terminal = _is_terminal(self.stream)
        self.started = clock()
        self.shown = False
        self.last_draw = -1.0
        self.drawn = ""  # the live line now on the terminal

    def elapsed(self) -> float:
        return clock() - self.started

    def tick(self) -> None:
        """Show the first line once SHOW_AFTER has passed; on a terminal, redraw the status line."""
        now = clock()
        if not self.shown:
            if now - self.started < SHOW_AFTER:
                return
            self.shown = True
            self._write(_PREFIX + self.headline() + "\n")
        if self.terminal and now - self.last_draw >= _REDRAW_EVERY:
            self.last_draw = now
            self._redraw(self.status())

    def finish(self, summary: str) -> None:
        """The last line (only when the first one was shown)."""
        if not self.shown:
            return
        if self.terminal:
            self._redraw(_PREFIX + summary)
            self._write("\n")
        else:
            self._write(_PREFIX + summary + "\n")

    def headline(self) -> str:
        raise NotImplementedError

    def status(self) -> str:
        raise NotImplementedError

    def _redraw(self, text: str) -> None:
        self._write("\r" + text.ljust(len(self.drawn)))
        self.drawn = text

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # stderr closed or gone: progress is never worth failing a build
            pass


class BuildProgress(_Display):
    """Fed ninja's output lines (``[3/8] command``): ``[compiled/total]`` and the time so far."""

    def __init__(self, name: str, sources: int, log_path: str, stream: TextIO | None = None) -> None:
        super().__init__(stream)
        self.name = name
        self.sources = sources
        self.log_path = log_path
        self.done = 0
        self.total = 0

    def feed(self, line: str) -> None:
        match = _NINJA_STATUS.match(line)
        if match:
            self.done, self.total = int(match[1]), int(match[2])
        self.tick()

    def headline(self) -> str:
        plural = "" if self.sources == 1 else "s"
        return f"building {self.name} ({self.sources} source{plural}), log: {self.log_path}"

    def status(self) -> str:
        count = f"[{self.done}/{self.total}] " if self.total else ""
        return f"  {count}{self.elapsed():.1f} s"

    def end(self, ok: bool) -> None:
        seconds = self.elapsed()
        self.finish(f"built {self.name} in {seconds:.1f} s" if ok
                    else f"building {self.name} failed after {seconds:.1f} s")


class LockWaitProgress(_Display):
    """A wait for the build lock another process holds: who holds it, and for how long we waited."""

    def __init__(self, what: str, describe_owner: Callable[[], str], stream: TextIO | None = None) -> None:
        super().__init__(stream)
        self.what = what
        self.describe_owner = describe_owner

    def next_tick_in(self) -> float:
        """Seconds until the display has something new to show (inf: nothing more until the wait ends)."""
        if not self.shown:
            return max(0.0, SHOW_AFTER - self.elapsed())
        return 1.0 if self.terminal else float("inf")

    def headline(self) -> str:
        # The text of _cache.lock's waiting message, so the docs' quote of it covers both.
        owner = self.describe_owner()
        return f"waiting for the build lock of {self.what}, held by {owner} ({self.elapsed():.0f} s so far)"

    def status(self) -> str:
        return f"  waiting, {self.elapsed():.0f} s so far"

    def end(self) -> None:
        self.finish(f"waited {self.elapsed():.1f} s for the build lock of {self.what}")
