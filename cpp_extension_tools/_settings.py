"""The registry of every ``CACHED_CPP_EXTENSION_*`` environment variable (and the library's other own ones).

Each setting has one entry here: its name, default, parser and documentation
line. Every module reads settings through these entries, never through
``os.environ`` directly, so a value is validated the same way wherever it is
used, the configuration docs and the tests' isolation fixture iterate
:data:`SETTINGS`, and a new variable cannot be forgotten by either.

Reading is cheap (one ``os.environ`` lookup and, for a set variable, a parse
without imports): the warm path reads several settings on every call.
An unset or empty variable means the default. A value the parser rejects is a
:class:`SettingError` (a ValueError) naming the variable; the cold path checks
every setting up front (:func:`check`), before anything is written.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any, Generic, TypeVar

__all__ = [
    "BUILD_DIR", "COMPILER_LAUNCHER", "CPU_FINGERPRINT", "DISABLE_JIT", "LOCK_LOG_INTERVAL", "LOCK_TIMEOUT",
    "MAX_SIZE", "PROGRESS", "PYTHON_IDENTITY", "SETTINGS", "SHARED_CACHE", "SKIP_PREBUILT", "TORCH_IDENTITY", "Setting",
    "SettingError", "check",
    "HOST_NAME", "REMOTE_CACHE", "REMOTE_CONNECT_TIMEOUT", "REMOTE_ENTRY_EXPIRY", "REMOTE_LOCK_EXPIRY",
    "REMOTE_MAX_ENTRY_SIZE", "REMOTE_SECRET_FILE", "REMOTE_TIMEOUT",
]

T = TypeVar("T")


class SettingError(ValueError):
    """An environment variable holds a value its setting rejects; the message names the variable."""


class Setting(Generic[T]):
    """One environment variable: ``get()`` returns its parsed value, or ``default`` when unset or empty.

    A value the parser rejects raises ValueError naming the variable, the value and what is expected.
    """

    __slots__ = ("default", "default_text", "doc", "name", "parse")

    def __init__(self, name: str, default: T, parse: Callable[[str], T], doc: str,
                 default_text: str = "unset") -> None:
        self.name = name
        self.default = default
        self.parse = parse
        self.doc = doc
        self.default_text = default_text  # how the docs table shows the default

    def raw(self) -> str:
        """The variable's text, stripped ("" when unset)."""
        return os.environ.get(self.name, "").strip()

    def is_set(self) -> bool:
        return bool(self.raw())

    def get(self) -> T:
        raw = self.raw()
        if not raw:
            return self.default
        try:
            return self.parse(raw)
        except ValueError as error:
            raise SettingError(f"{self.name}={os.environ.get(self.name)!r}: {error}") from None

    def __repr__(self) -> str:
        return f"Setting({self.name!r})"


def parse_flag(text: str) -> bool:
    """"1" (also "true", "yes", "on") or "0" (also "false", "no", "off"), any case."""
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected 1 or 0 (or true/false, yes/no, on/off)")


def _positive_seconds(text: str, allow_infinity: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError("expected a number of seconds") from None
    if math.isnan(value):
        raise ValueError("expected a number of seconds, not NaN")
    if value <= 0:
        raise ValueError("expected a positive number of seconds")
    if math.isinf(value) and not allow_infinity:
        raise ValueError("expected a finite number of seconds")
    return value


def parse_timeout(text: str) -> float:
    """Seconds, positive; ``inf`` waits without limit."""
    return _positive_seconds(text, allow_infinity=True)


def parse_interval(text: str) -> float:
    """Seconds, positive and finite."""
    return _positive_seconds(text, allow_infinity=False)


def parse_size(text: str) -> int:
    from ._cli.units import parse_size as parse  # not on the warm path: only a set MAX_SIZE is parsed

    return parse(text)


def parse_auto_flag(text: str) -> bool | None:
    """"auto" (None), or a flag as :func:`parse_flag` reads it."""
    if text.lower() == "auto":
        return None
    try:
        return parse_flag(text)
    except ValueError:
        raise ValueError("expected auto, 1 or 0") from None


def parse_text(text: str) -> str:
    return text


def parse_path(text: str) -> str:
    """A path: no NUL or newline (ninja files and shell commands cannot hold them)."""
    if "\0" in text or "\n" in text or "\r" in text:
        raise ValueError("a path cannot contain a NUL byte or a line break")
    return text


BUILD_DIR: Setting[str] = Setting(
    "CACHED_CPP_EXTENSION_BUILD_DIR", "", parse_path,
    "The cache root (one folder per module inside). Found through this variable or the default, the root is "
    "written back to `os.environ` as an absolute path on first use, so spawn and forkserver workers and "
    "subprocesses share it even after a `chdir`. It must be a folder (or not exist yet).",
    default_text="`./cached_cpp_extensions`")
LOCK_TIMEOUT: Setting[float] = Setting(
    "CACHED_CPP_EXTENSION_LOCK_TIMEOUT", 3600.0, parse_timeout,
    "Seconds one call may wait, in all, for other threads' and processes' builds of the same module before "
    "`LockTimeoutError`. A positive number; `inf` waits without limit.", default_text="`3600`")
LOCK_LOG_INTERVAL: Setting[float] = Setting(
    "CACHED_CPP_EXTENSION_LOCK_LOG_INTERVAL", 10.0, parse_interval,
    "Seconds between the \"waiting for the build lock of ..., held by pid ... on host ...\" messages. "
    "A positive, finite number.", default_text="`10`")
MAX_SIZE: Setting[int | None] = Setting(
    "CACHED_CPP_EXTENSION_MAX_SIZE", None, parse_size,
    "A size such as `2G` or `500M` (powers of 1024): after each build, the least recently used artifacts and "
    "build folders are deleted until the cache root fits; never the binary just built or a module being "
    "built. A size that does not parse is a `ValueError` naming the variable when a module is built, "
    "before anything is written.")
SHARED_CACHE: Setting[bool] = Setting(
    "CACHED_CPP_EXTENSION_SHARED_CACHE", False, parse_flag,
    "`1` (or `0`): a cache shared on purpose by a team: new folders are created `2770` and new files group-writable, "
    "group-writable folders and other members' files are trusted (world-writable ones without the sticky "
    "bit never are).")
COMPILER_LAUNCHER: Setting[str] = Setting(
    "CACHED_CPP_EXTENSION_COMPILER_LAUNCHER", "", parse_text,
    "A command put in front of every compile (cc, c++, nvcc; never the link), e.g. `ccache` or `sccache`, "
    "with arguments split as by a shell. Not part of the key. Not on `PATH`: `BuildError`.")
DISABLE_JIT: Setting[bool] = Setting(
    "CACHED_CPP_EXTENSION_DISABLE_JIT", False, parse_flag,
    "`1` (or `0`): a module that is neither cached nor usable prebuilt raises `BuildError` (saying why the prebuilt "
    "binary did not fit) instead of compiling.")
CPU_FINGERPRINT: Setting[str] = Setting(
    "CACHED_CPP_EXTENSION_CPU_FINGERPRINT", "", parse_text,
    "Replaces the CPU's identity in the key, for `-march=native` builds: nodes that are known to be identical "
    "can share artifacts. Prebuilt binaries are not used while it is set.", default_text="the detected CPU")
TORCH_IDENTITY: Setting[str] = Setting(
    "CACHED_CPP_EXTENSION_TORCH_IDENTITY", "", parse_text,
    "Added to the key, so a process poses as another torch build (tests use it); prebuilt binaries are not "
    "used while it is set.")
PYTHON_IDENTITY: Setting[str] = Setting(
    "CACHED_CPP_EXTENSION_PYTHON_IDENTITY", "", parse_text,
    "Added to the key, so a process poses as another Python (tests use it); prebuilt binaries are not used "
    "while it is set.")
PROGRESS: Setting[bool | None] = Setting(
    "CACHED_CPP_EXTENSION_PROGRESS", None, parse_auto_flag,
    "Progress on stderr for a build (or a wait for another process's build) that takes more than 2 s: a line "
    "naming the module and its build log, then, on a terminal, a live `[compiled/total]` count and the time, "
    "and a last line with the duration (elsewhere: the first line and the last, no carriage returns). "
    "`auto`: shown unless `verbose=True` (which logs ninja's own lines); `1`: shown even then; `0`: never.",
    default_text="`auto`")

def parse_remote_url(text: str) -> str:
    """A ``redis://`` or ``rediss://`` URL (checked for its scheme only; the client parses the rest)."""
    if not text.startswith(("redis://", "rediss://")) or "\n" in text:
        raise ValueError("expected redis://[user:password@]host:port[/db] or rediss://...")
    return text


REMOTE_CACHE: Setting[str] = Setting(
    "CACHED_CPP_EXTENSION_REMOTE_CACHE", "", parse_remote_url,
    "`redis://[user:password@]host:port[/db]` (`rediss://` for TLS): a Redis server shared by a cluster, asked on a "
    "local miss before building and filled after each build (see the clusters page). Needs the `remote` extra and "
    "`CACHED_CPP_EXTENSION_REMOTE_SECRET_FILE`; an unreachable server means a local build and one warning.")
REMOTE_SECRET_FILE: Setting[str] = Setting(
    "CACHED_CPP_EXTENSION_REMOTE_SECRET_FILE", "", parse_path,
    "A file holding the secret (at least 16 bytes) that signs and verifies remote entries (HMAC-SHA256). Refused "
    "when other users can read it (group-readable allowed with `CACHED_CPP_EXTENSION_SHARED_CACHE=1`). Unset: the "
    "remote tier is not used (one warning).")
REMOTE_CONNECT_TIMEOUT: Setting[float] = Setting(
    "CACHED_CPP_EXTENSION_REMOTE_CONNECT_TIMEOUT", 1.0, parse_interval,
    "Seconds to connect to the remote cache before building locally.", default_text="`1`")
REMOTE_TIMEOUT: Setting[float] = Setting(
    "CACHED_CPP_EXTENSION_REMOTE_TIMEOUT", 10.0, parse_interval,
    "Seconds one remote operation (a read, a write of an entry) may take before the call builds locally.",
    default_text="`10`")
REMOTE_LOCK_EXPIRY: Setting[float] = Setting(
    "CACHED_CPP_EXTENSION_REMOTE_LOCK_EXPIRY", 30.0, parse_interval,
    "Seconds the cluster build lock lives unless its holder renews it (it renews it every third of that while "
    "it builds): a builder host that dies is replaced within this time.", default_text="`30`")
REMOTE_MAX_ENTRY_SIZE: Setting[int] = Setting(
    "CACHED_CPP_EXTENSION_REMOTE_MAX_ENTRY_SIZE", 256 << 20, parse_size,
    "Binaries larger than this size (`256M`, powers of 1024) are not pushed to the remote cache.",
    default_text="`256M`")
REMOTE_ENTRY_EXPIRY: Setting[float] = Setting(
    "CACHED_CPP_EXTENSION_REMOTE_ENTRY_EXPIRY", 30 * 86400.0, parse_interval,
    "Seconds a remote entry lives after its last use (refreshed at most once a day per entry).",
    default_text="`2592000` (30 days)")
HOST_NAME: Setting[str] = Setting(
    "CACHED_CPP_EXTENSION_HOST_NAME", "", parse_text,
    "The name this host gives in the remote cache's lock and entries (informative; tests pose as other hosts "
    "with it).", default_text="the host name")

SKIP_PREBUILT: Setting[bool] = Setting(
    "CPP_EXTENSION_TOOLS_SKIP_PREBUILT", False, parse_flag,
    "`1` (or `0`): `setup.py` builds wheels without prebuilt binaries.")

DISABLE_PCH: Setting[bool] = Setting(
    "CACHED_CPP_EXTENSION_DISABLE_PCH", False, parse_flag,
    "`1` (or `0`): C++ sources that include `torch/extension.h`, `torch/torch.h` or `ATen/ATen.h` first are "
    "compiled without the cache's shared precompiled header (as `use_pch=False` does for one call).")

SETTINGS: tuple[Setting[Any], ...] = (  # the order of the docs table
    BUILD_DIR, LOCK_TIMEOUT, LOCK_LOG_INTERVAL, MAX_SIZE, SHARED_CACHE, COMPILER_LAUNCHER,
    DISABLE_JIT, PROGRESS, CPU_FINGERPRINT, TORCH_IDENTITY, PYTHON_IDENTITY, REMOTE_CACHE, REMOTE_SECRET_FILE,
    REMOTE_CONNECT_TIMEOUT, REMOTE_TIMEOUT, REMOTE_LOCK_EXPIRY, REMOTE_MAX_ENTRY_SIZE, REMOTE_ENTRY_EXPIRY, HOST_NAME,
    SKIP_PREBUILT, DISABLE_PCH,
)


def check(settings: tuple[Setting[Any], ...] = SETTINGS) -> None:
    """Parse each of ``settings`` (default: all); one SettingError naming every invalid variable."""
    problems = []
    for setting in settings:
        try:
            setting.get()
        except SettingError as error:
            problems.append(str(error))
    if problems:
        raise SettingError("; ".join(problems))
