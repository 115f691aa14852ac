"""The per-module build lock.

An OS-level lock (flock through the filelock package), so the kernel releases
it when the holder dies, however it dies: a killed build never leaves a lock
that makes everyone else wait forever, unlike torch's FileBaton
(pytorch#189245). The lock file itself is never deleted: deleting a lock file
another process holds or waits on splits the lock in two.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import math
import os
import socket
import stat
import tempfile
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from .. import _settings
from .._errors import LockTimeoutError, cache_not_writable
from . import trust as _trust
from .fs import atomic_write_bytes, remove_tree, temporary_name

if TYPE_CHECKING:
    import filelock

    from .._build import progress as _progress

__all__ = ["LOCK_TIMEOUT_ENV", "call_deadline", "module_lock"]

logger = logging.getLogger("cpp_extension_tools")

# Aliases of the registry's names, for modules that still import them.
LOCK_TIMEOUT_ENV = _settings.LOCK_TIMEOUT.name
LOCK_LOG_INTERVAL_ENV = _settings.LOCK_LOG_INTERVAL.name
DEFAULT_LOCK_TIMEOUT = _settings.LOCK_TIMEOUT.default
DEFAULT_LOG_INTERVAL = _settings.LOCK_LOG_INTERVAL.default
WARN_AFTER = 60.0  # seconds of waiting before the message is also a warning, then once a minute


def call_deadline() -> float:
    """When a cold call must stop waiting: ``time.monotonic()`` + CACHED_CPP_EXTENSION_LOCK_TIMEOUT (inf: never).

    Checks every setting first (SettingError, a ValueError, naming each invalid variable), so a cold call
    that will fail on a setting fails before it writes anything.
    """
    _settings.check()
    return time.monotonic() + _settings.LOCK_TIMEOUT.get()


@contextlib.contextmanager
def module_lock(lock_path: str, owner_path: str, what: str, root: str,
                timeout: float | None = None, deadline: float | None = None) -> Iterator[None]:
    """Hold the lock at ``lock_path``, logging who holds it while we wait.

    The wait ends at ``deadline`` (a ``time.monotonic()`` value, e.g. :func:`call_deadline`) or after
    ``timeout`` seconds (0 tries once), whichever comes first; with neither, after
    CACHED_CPP_EXTENSION_LOCK_TIMEOUT seconds. Any invalid setting (not only the lock's) is a SettingError,
    raised before the lock file is created.
    """
    import filelock  # imported here: the warm path never takes the lock

    wait = _Wait.start(timeout, deadline)
    _replace_folder_at(lock_path)
    mode = _trust.file_mode()  # 0o600, or 0o660 in a team cache: every member takes the same lock
    lock = filelock.FileLock(lock_path, mode=mode)
    try:
        _acquire(lock, lock_path, owner_path, what, wait)
    except LockTimeoutError:  # a TimeoutError, hence an OSError too
        raise
    except OSError as e:
        if e.errno not in _NO_LOCKS:
            raise cache_not_writable(e, root) from e
        local_path = _host_local_lock_path(lock_path)
        # Some NFS and FUSE mounts answer flock with ENOLCK or EOPNOTSUPP (no lock daemon). Waiting
        # would never end and building unlocked would let processes overwrite each other's build,
        # so processes on this host lock a file on a local disk instead.
        logger.warning("the file system of %s does not support file locks (%s); builds of %s are serialized "
                       "only among processes on this host, through %s. Processes on other hosts that share "
                       "this cache are not coordinated: put the cache on a local disk, or build it once "
                       "before starting them.", lock_path, os.strerror(e.errno or 0), what, local_path)
        lock = filelock.FileLock(local_path, mode=mode)
        _acquire(lock, local_path, owner_path, what, wait)
    try:
        _write_owner(owner_path)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(owner_path)  # only the holder writes or removes it
        lock.release()


class _Wait:
    """When one module_lock call stops waiting (``end``, monotonic), and whether the caller's deadline set it."""

    __slots__ = ("by_deadline", "end", "started")

    def __init__(self, started: float, end: float, by_deadline: bool) -> None:
        self.started = started
        self.end = end
        self.by_deadline = by_deadline

    @classmethod
    def start(cls, timeout: float | None, deadline: float | None) -> _Wait:
        _settings.check()  # every setting: the cold path fails on an invalid one before it writes the lock file
        for label, value in (("timeout", timeout), ("deadline", deadline)):
            if value is not None and math.isnan(value):
                raise ValueError(f"module_lock: {label} is NaN")
        if timeout is not None and timeout < 0:
            raise ValueError(f"module_lock: negative timeout {timeout}")
        now = time.monotonic()
        if timeout is None and deadline is None:
            timeout = _settings.LOCK_TIMEOUT.get()
        by_timeout = math.inf if timeout is None else now + timeout
        by_deadline = math.inf if deadline is None else deadline
        return cls(now, min(by_timeout, by_deadline), by_deadline < by_timeout)

    def remaining(self) -> float:
        return self.end - time.monotonic()

    def waited(self) -> float:
        return time.monotonic() - self.started


def _replace_folder_at(lock_path: str) -> None:
    """A folder where the lock file belongs (damage) can never be locked, by anyone: move it away."""
    try:
        if not stat.S_ISDIR(os.lstat(lock_path).st_mode):
            return
    except OSError:
        return
    logger.warning("%s is a folder, not a lock file; deleting it", lock_path)
    aside = temporary_name(lock_path)
    try:
        os.rename(lock_path, aside)
    except FileNotFoundError:
        return  # another process moved it first
    except OSError as e:
        logger.warning("could not move the folder %s away: %s", lock_path, e)
        return
    remove_tree(aside)


# errno values of file systems without working flock.
_NO_LOCKS = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS})


def _acquire(lock: filelock.BaseFileLock, lock_path: str, owner_path: str, what: str, wait: _Wait) -> None:
    from .._build import progress as _progress

    display = (_progress.LockWaitProgress(what, lambda: _describe_owner(owner_path))
               if _progress.enabled(verbose=False) else None)
    try:
        _acquire_logging(lock, lock_path, owner_path, what, wait, display)
    finally:
        if display is not None:
            display.end()


def _acquire_logging(lock: filelock.BaseFileLock, lock_path: str, owner_path: str, what: str, wait: _Wait,
                     display: _progress.LockWaitProgress | None) -> None:
    import filelock

    interval = _settings.LOCK_LOG_INTERVAL.get()
    next_log, next_warning = interval, WARN_AFTER
    while True:
        until_log = next_log - wait.waited()
        until_display = display.next_tick_in() if display is not None else math.inf
        try:
            lock.acquire(timeout=max(0.0, min(until_log, until_display, wait.remaining())), poll_interval=0.05)
            return
        except filelock.Timeout:
            waited = wait.waited()
            if wait.remaining() <= 0:
                raise LockTimeoutError(_timeout_message(what, lock_path, owner_path, wait)) from None
            if display is not None:
                display.tick()
            if waited < next_log:
                continue
            next_log = waited + interval
            # INFO every interval; once a minute also a WARNING, which stderr shows without any logging
            # set-up: a long wait must never look like a silent hang.
            level = logging.INFO
            if waited >= next_warning:
                level, next_warning = logging.WARNING, waited + WARN_AFTER
            logger.log(level, "waiting for the build lock of %s, held by %s (%.0f s so far)",
                       what, _describe_owner(owner_path), waited)


def _timeout_message(what: str, lock_path: str, owner_path: str, wait: _Wait) -> str:
    waited = wait.waited()
    how_long = f"after {waited:.0f} s"
    if wait.by_deadline:  # the call's deadline (call_deadline): it may have waited before this lock too
        configured = _settings.LOCK_TIMEOUT.get()
        in_all = max(waited, configured) if math.isfinite(configured) else waited
        how_long = f"after {in_all:.0f} s in all ({waited:.0f} s for this lock)"
    return (f"gave up waiting for the build lock of {what} {how_long}; "
            f"it is held by {_describe_owner(owner_path)}. If that build is stuck, stop it; "
            f"to wait longer set {LOCK_TIMEOUT_ENV} (seconds). Lock file: {lock_path}")


def _host_local_lock_path(lock_path: str) -> str:
    folder = os.path.join(tempfile.gettempdir(), f"cpp_extension_tools-locks-{os.geteuid()}")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    info = os.lstat(folder)
    if info.st_uid != os.geteuid() or not stat.S_ISDIR(info.st_mode):
        raise PermissionError(errno.EACCES, "lock folder is not a folder of this user", folder)
    digest = hashlib.sha256(os.path.abspath(lock_path).encode()).hexdigest()[:32]
    return os.path.join(folder, f"{digest}.lock")


def _write_owner(owner_path: str) -> None:
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
    try:
        atomic_write_bytes(owner_path, json.dumps(owner).encode(), mode=0o600)
    except OSError as e:
        logger.debug("could not write lock owner file %s: %s", owner_path, e)


def _read_small_regular_file(path: str) -> bytes:
    """At most 64 KiB; OSError for anything but a regular file (a FIFO planted there must not block us)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        return os.read(fd, 1 << 16)
    finally:
        os.close(fd)


def _describe_owner(owner_path: str) -> str:
    try:
        owner = json.loads(_read_small_regular_file(owner_path))
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(owner["since"])))
        return f"pid {int(owner['pid'])} on host {owner['host']} since {since}"
    except (OSError, ValueError, KeyError, TypeError, OverflowError):
        return "another process (no owner details recorded)"
