"""Content digests of files and of JSON-like values.

File digests are memoized per process by stat signature (size, mtime, inode),
so a file is hashed again only after it changed on disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from typing import Any

__all__ = ["FileRecord", "digest_file", "digest_value", "file_matches", "record_file", "stat_signature"]

_CHUNK = 1 << 20
_memo: dict[str, tuple[tuple[int, int, int], str]] = {}
_memo_lock = threading.Lock()

# A file written less than this long before we hashed it might be written
# again within the same mtime tick (coarse on many file systems) with the same
# size; its recorded mtime is then left out, so lookups hash it instead of
# trusting the stat (git calls this the "racy" case).
_RACY_SECONDS = 0.1


def stat_signature(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def digest_value(value: Any) -> str:
    """SHA-256 of a canonical JSON encoding: the same value always gives the same digest."""
    encoded = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(encoded.encode()).hexdigest()


def digest_file(path: str) -> str:
    """SHA-256 of a file's content, memoized by its stat signature."""
    st = os.stat(path)
    signature = stat_signature(st)
    with _memo_lock:
        cached = _memo.get(path)
    if cached is not None and cached[0] == signature:
        return cached[1]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    result = digest.hexdigest()
    # Memoize only if the file did not change while we read it.
    if stat_signature(os.stat(path)) == signature:
        with _memo_lock:
            _memo[path] = (signature, result)
    return result


class FileRecord:
    """What a manifest remembers of one input file (mtime_ns is 0 when too fresh to trust)."""

    __slots__ = ("mtime_ns", "path", "sha256", "size")

    def __init__(self, path: str, size: int, mtime_ns: int, sha256: str) -> None:
        self.path = path
        self.size = size
        self.mtime_ns = mtime_ns
        self.sha256 = sha256

    def __repr__(self) -> str:
        return f"FileRecord({self.path!r}, size={self.size}, sha256={self.sha256[:12]}...)"

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "mtime_ns": self.mtime_ns, "sha256": self.sha256}


def record_file(path: str) -> FileRecord:
    st = os.stat(path)
    sha = digest_file(path)
    fresh = time.time_ns() - st.st_mtime_ns < _RACY_SECONDS * 1e9
    return FileRecord(path, st.st_size, 0 if fresh else st.st_mtime_ns, sha)


def file_matches(record: FileRecord) -> bool:
    """True when the file on disk still has the recorded content.

    A matching size and mtime is trusted without reading the file; otherwise
    the content is hashed (a ``touch`` or a checkout of identical content is
    not a change).
    """
    try:
        st = os.stat(record.path)
    except OSError:
        return False
    if st.st_size != record.size:
        return False
    if record.mtime_ns and st.st_mtime_ns == record.mtime_ns:
        return True
    try:
        return digest_file(record.path) == record.sha256
    except OSError:
        return False
