"""Exceptions raised by the library.

Each error derives from a standard library class, so callers that know nothing
about this library still catch it (``except RuntimeError``), and each one is
picklable, so it crosses process boundaries (multiprocessing workers re-raise
it in the parent).
"""

from __future__ import annotations

import errno
import os

__all__ = ["DISK_FULL_ERRNOS", "BuildError", "CacheNotWritableError", "LockTimeoutError", "ManifestError",
           "RemoteClientMissingError", "RemoteSecretError", "UnsafeCacheError", "cache_not_writable",
           "is_cache_write_error"]


class BuildError(RuntimeError):
    """Compiling or linking an extension failed.

    Attributes:
        name: the extension's module name.
        command: the command whose failure ended the build (may be empty).
        log_path: the full build log on disk.
        compiler_output: the compiler's first error lines.
    """

    def __init__(self, message: str, *, name: str = "", command: str = "", log_path: str = "",
                 compiler_output: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.name = name
        self.command = command
        self.log_path = log_path
        self.compiler_output = compiler_output

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only arguments are not restored by BaseException's default
        # pickling, which would lose every field but the message.
        return (_rebuild_build_error, (self.message, self.name, self.command, self.log_path,
                                       self.compiler_output))

    def to_dict(self) -> dict[str, str]:
        return {"message": self.message, "name": self.name, "command": self.command,
                "log_path": self.log_path, "compiler_output": self.compiler_output}

    @classmethod
    def from_dict(cls, data: dict[str, str]) -> BuildError:
        return cls(data["message"], name=data.get("name", ""), command=data.get("command", ""),
                   log_path=data.get("log_path", ""), compiler_output=data.get("compiler_output", ""))


def _rebuild_build_error(message: str, name: str, command: str, log_path: str,
                         compiler_output: str) -> BuildError:
    return BuildError(message, name=name, command=command, log_path=log_path,
                      compiler_output=compiler_output)


class LockTimeoutError(TimeoutError):
    """Waiting for another process's build of the same module took too long."""


class ManifestError(ValueError):
    """A cache manifest is missing, unreadable or inconsistent (the entry is treated as absent)."""


class UnsafeCacheError(PermissionError):
    """A cached binary, or a folder above it in the cache, could have been replaced by another user.

    Loading it would run that user's code in this process, so the library refuses.
    """


class RemoteClientMissingError(ImportError):
    """CACHED_CPP_EXTENSION_REMOTE_CACHE is set but the ``redis`` client is not installed."""


class RemoteSecretError(PermissionError):
    """The remote cache's secret file is unusable: missing, too short, or readable by other users."""


class CacheNotWritableError(OSError):
    """The cache root cannot be created or written (permissions, read-only or full file system)."""


DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_NOT_WRITABLE_ERRNOS = DISK_FULL_ERRNOS | {errno.EROFS, errno.EACCES, errno.EPERM}


def is_cache_write_error(error: OSError, root: str) -> bool:
    """Whether ``error`` is a failed write into the cache.

    A full disk often names no file, so it counts wherever it happened; a permission or read-only error
    counts only when it names a path in the cache (or none): EACCES on a source or a compiler is the
    user's problem there, not the cache's.
    """
    filename = str(error.filename or "")
    if filename.startswith(root + os.sep) or filename == root:
        return True
    if error.errno in DISK_FULL_ERRNOS:
        return True
    return error.errno in _NOT_WRITABLE_ERRNOS and not filename


def cache_not_writable(error: OSError, root: str) -> CacheNotWritableError:
    """The error for a failed write into the cache: what failed where, and what to set."""
    where = error.filename or root
    fix = ("free some space there (the cache can be cleared safely), or" if error.errno in DISK_FULL_ERRNOS
           else "make it writable, or")
    return CacheNotWritableError(
        error.errno or 0, f"cannot write to the extension cache at {where} ({error.strerror or error}): {fix} "
        f"set CACHED_CPP_EXTENSION_BUILD_DIR (or pass build_directory=) to a writable folder; cache root: {root}")
