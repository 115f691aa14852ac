"""The manifest: the commit marker and self-description of one cached artifact.

A manifest is written last, after the binary it describes, so its presence
means the artifact is complete. Reading is strict: any malformed manifest
raises ManifestError and the entry is treated as absent, never half-trusted.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ._errors import ManifestError
from ._hashing import FileRecord

__all__ = ["MANIFEST_NAME", "Manifest", "parse_manifest", "read_manifest"]

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
_MAX_MANIFEST_BYTES = 16 << 20


class Manifest:
    """One artifact: its binary (``library_file``, a plain file name inside the artifact folder),
    the inputs it was built from, and informative ``details`` (configuration, compiler versions)."""

    __slots__ = (
        "artifact_id",
        "build_seconds",
        "created_at",
        "details",
        "inputs",
        "key",
        "library",
        "library_file",
        "name",
        "sources",
    )

    def __init__(self, *, name: str, key: str, artifact_id: str, library_file: str, library: FileRecord,
                 sources: tuple[str, ...], inputs: tuple[FileRecord, ...], created_at: float,
                 build_seconds: float, details: dict[str, Any]) -> None:
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

    def to_json(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT, "name": self.name, "key": self.key,
            "artifact_id": self.artifact_id, "library_file": self.library_file,
            "library": self.library.to_json(), "sources": list(self.sources),
            "inputs": [r.to_json() for r in self.inputs], "created_at": self.created_at,
            "build_seconds": self.build_seconds, "details": self.details,
        }


def read_manifest(path: str) -> Manifest:
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        raise ManifestError(f"manifest missing: {path}") from None
    except OSError as e:
        raise ManifestError(f"manifest unreadable: {path}: {e}") from e
    if len(data) > _MAX_MANIFEST_BYTES:
        raise ManifestError(f"manifest too large: {path}")
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
    return Manifest(
        name=_string(obj["name"]), key=_string(obj["key"]), artifact_id=_string(obj["artifact_id"]),
        library_file=library_file, library=_record(obj["library"]),
        sources=tuple(_string(s) for s in sources), inputs=tuple(_record(r) for r in inputs),
        created_at=_number(obj["created_at"]), build_seconds=_number(obj["build_seconds"]),
        details=details,
    )


def _record(obj: Any) -> FileRecord:
    _expect(isinstance(obj, dict), "file record is not an object")
    sha = _string(obj["sha256"])
    _expect(len(sha) == 64 and all(c in "0123456789abcdef" for c in sha), "bad sha256")
    return FileRecord(_string(obj["path"]), _integer(obj["size"]), _integer(obj["mtime_ns"]), sha)


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
