"""Sizes, ages and durations as people write them: "1.5 GiB", "500M", "30d", "2 min 5 s".

Shared by the command line (``prune --max-size``, ``--older-than``) and the
environment variables that take a size or an age. Every size multiple is a
power of 1024, whatever its spelling: ``k``, ``K``, ``KB`` and ``KiB`` all
mean 1024 bytes (as in ``du`` and ``sort -h``).
"""

from __future__ import annotations

import math
import re

__all__ = ["format_duration", "format_size", "parse_age", "parse_size"]

_SIZE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
_SIZE_MULTIPLES = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
_AGE_MULTIPLES = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}

_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_SIZE_PATTERN = re.compile(_NUMBER + r"\s*(?:([kmgtp])(?:ib?|b)?|b?)", re.IGNORECASE)
_AGE_PATTERN = re.compile(_NUMBER + r"\s*([smhdw]?)", re.IGNORECASE)


def format_size(n_bytes: int) -> str:
    """``n_bytes`` in the largest binary unit that keeps it at 1 or more: "512 B", "1.5 KiB", "1.2 GiB"."""
    if n_bytes < 0:
        raise ValueError(f"a size cannot be negative: {n_bytes}")
    if n_bytes < 1024:
        return f"{n_bytes} B"
    value = float(n_bytes)
    for unit in _SIZE_UNITS[1:]:
        value /= 1024
        if round(value, 1) < 1024 or unit == _SIZE_UNITS[-1]:
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def format_duration(seconds: float) -> str:
    """A duration to a tenth of a second below a minute ("0.4 s", "12.3 s"), then "2 min 5 s", "1 h 3 min"."""
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"a duration must be finite and 0 or more: {seconds}")
    if round(seconds, 1) < 60:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {whole % 3600 // 60} min"


def parse_size(text: str) -> int:
    """Bytes in ``text``: "123" (bytes), "100k", "500M", "2G", "1.5GiB", "1.5 GiB"; ValueError otherwise."""
    match = _SIZE_PATTERN.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"invalid size {text!r}: expected a number with an optional unit "
                         f"(B, k, M, G, T, P; KiB and KB mean the same), e.g. 500M, 2G, 1.5GiB, 100k or 123")
    number, unit = match.groups()
    n_bytes = float(number) * _SIZE_MULTIPLES[(unit or "").lower()]
    if not math.isfinite(n_bytes):
        raise ValueError(f"invalid size {text!r}: too large")
    return round(n_bytes)


def parse_age(text: str) -> float:
    """Seconds in ``text``: "90s", "45m" (minutes), "12h", "30d", "2w", or a bare number of seconds."""
    match = _AGE_PATTERN.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"invalid age {text!r}: expected a number with an optional unit "
                         f"(s, m for minutes, h, d, w), e.g. 90s, 45m, 12h, 30d or 2w")
    number, unit = match.groups()
    seconds = float(number) * _AGE_MULTIPLES[unit.lower()]
    if not math.isfinite(seconds):
        raise ValueError(f"invalid age {text!r}: too large")
    return seconds
