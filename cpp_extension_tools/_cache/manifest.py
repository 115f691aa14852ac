"""The manifest: the commit marker and self-description of one cached artifact.

A manifest is written last, after the binary it describes, so its presence
means the artifact is complete. Reading is strict: any malformed manifest
raises ManifestError and the entry is treated as absent, never half-trusted.

Besides the binary and the input files (sources and every header the compiler
read that is not covered by an identity in the key), it records the folders the
compiler and linker searched (a file created in one could now be found first)
and the compilers that built it (checked by stat on a hit, never looked up).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from .._errors import ManifestError
from .hashing import FileRecord, open_regular

__all__ = ["MANIFEST_NAME", "FolderRecord", "Manifest", "ToolRecord", "parse_manifest", "read_manifest"]

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 2
_MAX_MANIFEST_BYTES = 16 << 20
_HEX_DIGITS = "0123456789abcdef"


class FolderRecord:
    """A folder the compiler or linker searched: its mtime changes when an entry is created or removed in it."""

    __slots__ = ("mtime_ns", "path")

    def __init__(self, path: str, mtime_ns: int) -> None:
        self.path = path
        self.mtime_ns = mtime_ns

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "mtime_ns": self.mtime_ns}


class ToolRecord:
    """A compiler the artifact was built with: where it was and its stat then (its version is in ``details``)."""

    __slots__ = ("inode", "mtime_ns", "path", "role", "size")

    def __init__(self, role: str, path: str, size: int, mtime_ns: int, inode: int) -> None:
        self.role = role
        self.path = path
        self.size = size
        self.mtime_ns = mtime_ns
        self.inode = inode

    def to_json(self) -> dict[str, Any]:
        return {"role": self.role, "path": self.path, "size": self.size, "mtime_ns": self.mtime_ns,
                "inode": self.inode}

    def matches(self, st: os.stat_result) -> bool:
        return (st.st_size, st.st_mtime_ns, st.st_ino) == (self.size, self.mtime_ns, self.inode)


class Manifest:
    """One artifact: its binary (``library_file``, a plain file name inside the artifact folder),
    the inputs it was built from, and informative ``details`` (configuration, compiler versions)."""

    __slots__ = (
        "artifact_id",
        "build_seconds",
        "created_at",
        "details",
        "folders",
        "inputs",
        "key",
        "library",
        "library_file",
        "name",
        "sources",
        "tools",
    )

    def __init__(self, *, name: str, key: str, artifact_id: str, library_file: str, library: FileRecord,
                 sources: tuple[str, ...], inputs: tuple[FileRecord, ...], created_at: float,
                 build_seconds: float, details: dict[str, Any], folders: tuple[FolderRecord, ...] = (),
                 tools: tuple[ToolRecord, ...] = ()) -> None:
        self.name = name
        self.key = key
        self.artifact_id = artifact_id
        self.library_file = library_file
        self.library = library
        self.sources = sources
        self.inputs = inputs
        self.created_at = created_at
        self.build_seconds = build_seconds
        self.details = details
        self.folders = folders
        self.tools = tools

    def changed_folder(self) -> str:
        """Why a searched folder no longer matches its record ("" when all match): an entry was added or removed."""
        for folder in self.folders:
            try:
                mtime = os.stat(folder.path).st_mtime_ns
            except OSError:
                mtime = -1
            if mtime != folder.mtime_ns:
                return f"the folder {folder.path}, searched by the build, changed (a file there may now be found first)"
        return ""

    def changed_tool(self) -> str:
        """Why a compiler differs from the one that built the artifact ("" when none does).

        Only what a stat can tell, and only where the compiler still is: a runtime image with a filled
        cache and no compiler loads the artifact whose other key parts match.
        """
        for tool in self.tools:
            try:
                st = os.stat(tool.path)
            except OSError:
                logging.getLogger("cpp_extension_tools").debug(
                    "%s: the %s that built it (%s) is not there; using it anyway", self.artifact_id, tool.role,
                    tool.path)
                continue
            if not tool.matches(st):
                return f"the compiler {tool.path} changed since the artifact was built"
        return ""

    def to_json(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT, "name": self.name, "key": self.key,
            "artifact_id": self.artifact_id, "library_file": self.library_file,
            "library": self.library.to_json(), "sources": list(self.sources),
            "inputs": [r.to_json() for r in self.inputs], "folders": [f.to_json() for f in self.folders],
            "tools": [t.to_json() for t in self.tools], "created_at": self.created_at,
            "build_seconds": self.build_seconds, "details": self.details,
        }


def read_manifest(path: str) -> Manifest:
    """The manifest at ``path``; a FIFO, device or folder there is refused without blocking."""
    try:
        fd, st = open_regular(path)
    except FileNotFoundError:
        raise ManifestError(f"manifest missing: {path}") from None
    except OSError as e:
        raise ManifestError(f"manifest unreadable: {path}: {e}") from e
    try:
        if st.st_size > _MAX_MANIFEST_BYTES:
            raise ManifestError(f"manifest too large: {path}")
        data = os.read(fd, st.st_size + 1)  # one read of what the file holds, not a 16 MiB buffer
    except OSError as e:
        raise ManifestError(f"manifest unreadable: {path}: {e}") from e
    finally:
        os.close(fd)
    return parse_manifest(data, path)


def parse_manifest(data: bytes, origin: str = "<manifest>") -> Manifest:
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ManifestError(f"manifest is not valid JSON: {origin}: {e}") from e
    try:
        return _from_json(obj)
    except (KeyError, TypeError, ValueError) as e:
        raise ManifestError(f"manifest is malformed: {origin}: {e!r}") from e


def _from_json(obj: Any) -> Manifest:
    _expect(isinstance(obj, dict), "top level is not an object")
    _expect(obj["format"] == MANIFEST_FORMAT, f"unsupported format {obj.get('format')!r}")
    library_file = _string(obj["library_file"])
    _expect(library_file == os.path.basename(library_file) and library_file not in ("", ".", ".."),
            "library_file must be a plain file name")
    details = obj.get("details", {})
    _expect(isinstance(details, dict), "details is not an object")
    sources = obj["sources"]
    _expect(isinstance(sources, list), "sources is not a list")
    inputs = obj["inputs"]
    _expect(isinstance(inputs, list), "inputs is not a list")
    folders, tools = obj["folders"], obj["tools"]
    _expect(isinstance(folders, list) and isinstance(tools, list), "folders or tools is not a list")
    return Manifest(
        name=_string(obj["name"]), key=_string(obj["key"]), artifact_id=_string(obj["artifact_id"]),
        library_file=library_file, library=_record(obj["library"]), sources=_strings(sources),
        inputs=tuple([_record(r) for r in inputs]), created_at=_number(obj["created_at"]),
        build_seconds=_number(obj["build_seconds"]), details=details,
        folders=tuple([_folder(f) for f in folders]), tools=tuple([_tool(t) for t in tools]),
    )


# Each reader below has a fast path that accepts only well-formed records, in one expression, and falls back
# to the field-by-field checks, which name what is wrong (and accept nothing the fast path refuses). A warm
# load reads about 40 records; checking them a field at a time cost more than the JSON parse.

def _record(obj: Any) -> FileRecord:
    if type(obj) is dict:
        path, sha = obj.get("path"), obj.get("sha256")
        size, mtime, ctime, inode, dev = (obj.get("size"), obj.get("mtime_ns"), obj.get("ctime_ns"), obj.get("inode"),
                                          obj.get("dev"))
        if (type(path) is str and type(sha) is str and len(sha) == 64 and not sha.strip(_HEX_DIGITS)
                and type(size) is type(mtime) is type(ctime) is type(inode) is type(dev) is int
                and min(size, mtime, ctime, inode, dev) >= 0):
            return FileRecord(path, size, mtime, sha, ctime, inode, dev)
    return _checked_record(obj)


def _checked_record(obj: Any) -> FileRecord:
    _expect(isinstance(obj, dict), "file record is not an object")
    sha = _string(obj["sha256"])
    _expect(len(sha) == 64 and not sha.strip(_HEX_DIGITS), "bad sha256")
    return FileRecord(_string(obj["path"]), _integer(obj["size"]), _integer(obj["mtime_ns"]), sha,
                      _integer(obj["ctime_ns"]), _integer(obj["inode"]), _integer(obj["dev"]))


def _folder(obj: Any) -> FolderRecord:
    if type(obj) is dict:
        path, mtime = obj.get("path"), obj.get("mtime_ns")
        if type(path) is str and type(mtime) is int and mtime >= 0:
            return FolderRecord(path, mtime)
    _expect(isinstance(obj, dict), "folder record is not an object")
    return FolderRecord(_string(obj["path"]), _integer(obj["mtime_ns"]))


def _tool(obj: Any) -> ToolRecord:
    if type(obj) is dict:
        role, path, size, mtime, inode = (obj.get("role"), obj.get("path"), obj.get("size"), obj.get("mtime_ns"),
                                          obj.get("inode"))
        if (type(role) is type(path) is str and type(size) is type(mtime) is type(inode) is int
                and min(size, mtime, inode) >= 0):
            return ToolRecord(role, path, size, mtime, inode)
    _expect(isinstance(obj, dict), "tool record is not an object")
    return ToolRecord(_string(obj["role"]), _string(obj["path"]), _integer(obj["size"]), _integer(obj["mtime_ns"]),
                      _integer(obj["inode"]))


def _strings(values: list[Any]) -> tuple[str, ...]:
    for value in values:
        if type(value) is not str:
            _string(value)  # raises, naming the type
    return tuple(values)


def _string(value: Any) -> str:
    _expect(isinstance(value, str), f"expected a string, got {type(value).__name__}")
    return str(value)


def _integer(value: Any) -> int:
    _expect(isinstance(value, int) and not isinstance(value, bool) and value >= 0,
            f"expected a non-negative integer, got {value!r}")
    return int(value)


def _number(value: Any) -> float:
    _expect(isinstance(value, (int, float)) and not isinstance(value, bool), f"expected a number, got {value!r}")
    return float(value)


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)
