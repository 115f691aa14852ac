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
import os
import socket
import stat
import tempfile
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ._errors import LockTimeoutError, cache_not_writable
from ._fsutil import atomic_write_bytes

if TYPE_CHECKING:
    import filelock

__all__ = ["LOCK_TIMEOUT_ENV", "module_lock"]

logger = logging.getLogger("cpp_extension_tools")

LOCK_TIMEOUT_ENV = "CACHED_CPP_EXTENSION_LOCK_TIMEOUT"
LOCK_LOG_INTERVAL_ENV = "CACHED_CPP_EXTENSION_LOCK_LOG_INTERVAL"
DEFAULT_LOCK_TIMEOUT = 3600.0  # a large CUDA extension can compile for many minutes
DEFAULT_LOG_INTERVAL = 10.0
WARN_AFTER = 60.0  # seconds of waiting before the message is also a warning, then once a minute


def _seconds_from_env(variable: str, default: float) -> float:
    raw = os.environ.get(variable)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{variable}={raw!r} is not a number of seconds") from None
    if value <= 0:
        raise ValueError(f"{variable}={raw!r} must be positive")
    return value


@contextlib.contextmanager
def module_lock(lock_path: str, owner_path: str, what: str, root: str,
                timeout: float | None = None) -> Iterator[None]:
    """Hold the lock at ``lock_path``, logging who holds it while we wait.

    ``timeout`` (seconds; 0 tries once) overrides CACHED_CPP_EXTENSION_LOCK_TIMEOUT.
    """
    import filelock  # imported here: the warm path never takes the lock

    lock = filelock.FileLock(lock_path, mode=0o600)
    try:
        _acquire(lock, lock_path, owner_path, what, timeout)
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
        lock = filelock.FileLock(local_path, mode=0o600)
        _acquire(lock, local_path, owner_path, what, timeout)
    try:
        _write_owner(owner_path)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(owner_path)  # only the holder writes or removes it
        lock.release()


# errno values of file systems without working flock.
_NO_LOCKS = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS})


def _acquire(lock: filelock.BaseFileLock, lock_path: str, owner_path: str, what: str,
             timeout: float | None) -> None:
    import filelock

    if timeout is None:
        timeout = _seconds_from_env(LOCK_TIMEOUT_ENV, DEFAULT_LOCK_TIMEOUT)
    interval = _seconds_from_env(LOCK_LOG_INTERVAL_ENV, DEFAULT_LOG_INTERVAL)
    started = time.monotonic()
    next_warning = WARN_AFTER
    while True:
        remaining = timeout - (time.monotonic() - started)
        try:
            lock.acquire(timeout=max(0.0, min(interval, remaining)), poll_interval=0.05)
            return
        except filelock.Timeout:
            waited = time.monotonic() - started
            if waited >= timeout:
                raise LockTimeoutError(
                    f"gave up waiting for the build lock of {what} after {waited:.0f} s; "
                    f"it is held by {_describe_owner(owner_path)}. If that build is stuck, stop it; "
                    f"to wait longer set {LOCK_TIMEOUT_ENV} (seconds). Lock file: {lock_path}") from None
            # INFO every interval; once a minute also a WARNING, which stderr shows without any logging
            # set-up: a long wait must never look like a silent hang.
            level = logging.INFO
            if waited >= next_warning:
                level, next_warning = logging.WARNING, waited + WARN_AFTER
            logger.log(level, "waiting for the build lock of %s, held by %s (%.0f s so far)",
                       what, _describe_owner(owner_path), waited)


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


def _describe_owner(owner_path: str) -> str:
    try:
        with open(owner_path, encoding="utf-8") as f:
            owner = json.load(f)
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(owner["since"])))
        return f"pid {int(owner['pid'])} on host {owner['host']} since {since}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (no owner details recorded)"
