"""In-process locks that a forked child does not inherit in the locked state.

``fork()`` copies a process with only the calling thread. A ``threading.Lock``
held at that moment by another thread (building, loading, waiting for the
build lock) stays locked in the child forever, and the child's first load of
the module deadlocks on it (a fork-based DataLoader started while a thread
builds). Every in-process lock of the library is made here; in the child each
one is replaced by a fresh, unlocked lock. Only the thread that forked
survives, so nothing in the child can be inside a section those locks
guarded, except that thread itself, which ``os.register_at_fork`` runs before.
"""

from __future__ import annotations

import os
import threading
import weakref
from types import TracebackType

__all__ = ["ForkSafeLock"]


class ForkSafeLock:
    """A ``threading.Lock`` (``with``, ``acquire``, ``release``) that is unlocked again in a forked child."""

    __slots__ = ("__weakref__", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        _all_locks.add(self)

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        self._lock.release()

    def locked(self) -> bool:
        return self._lock.locked()

    def __enter__(self) -> bool:
        return self._lock.acquire()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._lock.release()

    def _reset(self) -> None:
        self._lock = threading.Lock()


_all_locks: weakref.WeakSet[ForkSafeLock] = weakref.WeakSet()


def _reset_in_child() -> None:
    for lock in list(_all_locks):
        lock._reset()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_in_child)
