"""Content digests of files and of JSON-like values, and the stat fast path that avoids them.

File digests are memoized per process by the file's full stat signature (size,
mtime, ctime, inode, device), so a file is hashed again only after it changed
on disk. Only regular files are read, and they are opened non-blocking: a FIFO
or device planted where an input should be can never make a lookup block.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import time
from typing import Any

from .._forksafe import ForkSafeLock

__all__ = ["FileRecord", "digest_fd", "digest_file", "digest_value", "file_matches", "open_regular", "record_file",
           "stat_signature", "trusted_stat"]

_CHUNK = 1 << 20
_memo: dict[str, tuple[tuple[int, ...], str]] = {}
_memo_lock = ForkSafeLock()

# A file changed within the file system's timestamp granularity of the moment we record it could be
# written again within the same tick with the same size and stamps (git's "racy" case). ext4 and tmpfs
# stamp files from the kernel's coarse clock (a few ms); file systems that store whole seconds show
# it in their stamps, and get a wider window.
_RACY_FINE_NS = 50_000_000
_RACY_COARSE_NS = 2_000_000_000


def stat_signature(st: os.stat_result) -> tuple[int, ...]:
    """What a stat can tell about a file's content: a rename gives a new inode, an in-place write a new ctime."""
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


def digest_value(value: Any) -> str:
    """BLAKE2b-256 of a canonical JSON encoding (64 hex digits): the same value always gives the same digest.

    Not SHA-256 as for files: the cache key is a digest of a value, computed on every call, and the first
    SHA-256 of a process costs about 50 µs (OpenSSL fetches the algorithm), BLAKE2b's 10-20 µs.
    """
    encoded = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.blake2b(encoded.encode(), digest_size=32).hexdigest()


def open_regular(path: str, dir_fd: int | None = None) -> tuple[int, os.stat_result]:
    """Open a regular file for reading without ever blocking: (fd, its fstat); OSError for anything else."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def digest_fd(fd: int) -> str:
    """SHA-256 of what an open file holds, read from its start."""
    digest = hashlib.sha256()
    offset = 0
    while chunk := os.pread(fd, _CHUNK, offset):
        digest.update(chunk)
        offset += len(chunk)
    return digest.hexdigest()


def digest_file(path: str) -> str:
    """SHA-256 of a regular file's content, memoized by its stat signature."""
    fd, st = open_regular(path)
    try:
        signature = stat_signature(st)
        with _memo_lock:
            cached = _memo.get(path)
        if cached is not None and cached[0] == signature:
            return cached[1]
        result = digest_fd(fd)
        # Memoize only if the file did not change while we read it.
        if stat_signature(os.fstat(fd)) == signature:
            with _memo_lock:
                _memo[path] = (signature, result)
        return result
    finally:
        os.close(fd)


class FileRecord:
    """What a manifest remembers of one file: content digest and stat signature.

    ``mtime_ns`` is 0 when the file was too fresh to trust its stamps (see trusted_stat): the content is
    then hashed on every check.
    """

    __slots__ = ("ctime_ns", "dev", "inode", "mtime_ns", "path", "sha256", "size")

    def __init__(self, path: str, size: int, mtime_ns: int, sha256: str, ctime_ns: int = 0, inode: int = 0,
                 dev: int = 0) -> None:
        self.path = path
        self.size = size
        self.mtime_ns = mtime_ns
        self.sha256 = sha256
        self.ctime_ns = ctime_ns
        self.inode = inode
        self.dev = dev

    def __repr__(self) -> str:
        return f"FileRecord({self.path!r}, size={self.size}, sha256={self.sha256[:12]}...)"

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "mtime_ns": self.mtime_ns, "sha256": self.sha256,
                "ctime_ns": self.ctime_ns, "inode": self.inode, "dev": self.dev}

    def stat_matches(self, st: os.stat_result) -> bool:
        """True when ``st`` is the recorded file unchanged, as far as a stat can tell."""
        return (self.mtime_ns != 0 and st.st_size == self.size and st.st_mtime_ns == self.mtime_ns
                and st.st_ctime_ns == self.ctime_ns and st.st_ino == self.inode and st.st_dev == self.dev)


def trusted_stat(st: os.stat_result, now_ns: int) -> bool:
    """Whether a file's stamps, recorded at ``now_ns``, can stand for its content later."""
    newest = max(st.st_mtime_ns, st.st_ctime_ns)
    whole_seconds = st.st_mtime_ns % 1_000_000_000 == 0 and st.st_ctime_ns % 1_000_000_000 == 0
    return now_ns - newest >= (_RACY_COARSE_NS if whole_seconds else _RACY_FINE_NS)


def record_file(path: str, expected_sha256: str | None = None) -> FileRecord:
    """The record of ``path`` now; ``expected_sha256``, if given, must be its content (else ValueError)."""
    fd, st = open_regular(path)
    try:
        sha = digest_fd(fd)
        unchanged = stat_signature(os.fstat(fd)) == stat_signature(st)
    finally:
        os.close(fd)
    if expected_sha256 is not None and sha != expected_sha256:
        raise ValueError(f"{path} changed")
    trusted = unchanged and trusted_stat(st, time.time_ns())
    return FileRecord(path, st.st_size, st.st_mtime_ns if trusted else 0, sha, st.st_ctime_ns, st.st_ino, st.st_dev)


def file_matches(record: FileRecord, path: str | None = None, known: os.stat_result | None = None) -> bool:
    """True when the file on disk (``record.path``, or ``path`` for a record that names it relatively)
    still has the recorded content. ``known``: the file's stat, taken by the caller during this call (the
    argument checks' stat of a source), used instead of a new one.

    A stat matching in size, mtime, ctime, inode and device is trusted without reading the file;
    otherwise the content is hashed (a ``touch`` or a checkout of identical content is not a change).
    What a stat cannot see: bytes changed with every stat field intact (bit rot, or a raw write to the
    block device).
    """
    if path is None:
        path = record.path
    if known is not None:
        st = known
    else:
        try:
            st = os.stat(path)
        except OSError:
            return False
    if record.stat_matches(st):
        return True
    if st.st_size != record.size or not stat.S_ISREG(st.st_mode):
        return False
    try:
        return digest_file(path) == record.sha256
    except OSError:
        return False
