"""One remote entry: its Redis names, its fields, and how it is signed and checked.

An entry is a Redis hash at ``cpp_extension_tools:1:entry:<name>:<configuration key>:<sources digest>``:

    manifest    the builder's manifest.json (the receiver re-stamps it for its own disk)
    binary      the extension's bytes
    signature   HMAC-SHA256 (see signing) over the identity below, the manifest and the binary
    host        who pushed it (informative, unsigned)
    touched     when its expiry was last refreshed (unsigned; at most once a day)

The identity (format, library version, module name, configuration key, sources digest) is signed, so an
entry copied under another name fails its check. The cluster lock of the same entry lives at
``cpp_extension_tools:1:lock:...`` with the same suffix.
"""

from __future__ import annotations

from .._key import BuildConfig
from .._version import __version__
from .signing import sign, signature_matches

__all__ = ["ENTRY_PATTERN", "PREFIX", "Entry", "EntryKey", "entry_pattern"]

PREFIX = "cpp_extension_tools:1:"
ENTRY_PATTERN = PREFIX + "entry:*"
FORMAT = "1"


def entry_pattern(name: str | None) -> str:
    """The SCAN pattern of every entry of this library (of module ``name`` only, if given)."""
    return ENTRY_PATTERN if name is None else f"{PREFIX}entry:{_escape(name)}:*"


def _escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class EntryKey:
    """Which entry a configuration and its sources map to."""

    __slots__ = ("config_key", "name", "sources_digest")

    def __init__(self, name: str, config_key: str, sources_digest: str) -> None:
        self.name = name
        self.config_key = config_key
        self.sources_digest = sources_digest

    @classmethod
    def of(cls, config: BuildConfig, sources_digest: str) -> EntryKey:
        return cls(config.name, config.key, sources_digest)

    @property
    def suffix(self) -> str:
        return f"{self.name}:{self.config_key}:{self.sources_digest}"

    @property
    def entry(self) -> str:
        return f"{PREFIX}entry:{self.suffix}"

    @property
    def lock(self) -> str:
        return f"{PREFIX}lock:{self.suffix}"

    @property
    def identity(self) -> tuple[str, ...]:
        return (FORMAT, __version__, self.name, self.config_key, self.sources_digest)


class Entry:
    """An entry's signed content."""

    __slots__ = ("binary", "manifest", "signature")

    def __init__(self, manifest: bytes, binary: bytes, signature: bytes) -> None:
        self.manifest = manifest
        self.binary = binary
        self.signature = signature

    @classmethod
    def signed(cls, secret: bytes, key: EntryKey, manifest: bytes, binary: bytes) -> Entry:
        return cls(manifest, binary, sign(secret, key.identity, manifest, binary))

    @classmethod
    def from_fields(cls, fields: dict[bytes, bytes]) -> Entry | None:
        """The entry a Redis hash holds; None when a field is missing."""
        try:
            return cls(fields[b"manifest"], fields[b"binary"], fields[b"signature"])
        except KeyError:
            return None

    def fields(self, host: str, now: float) -> dict[str, bytes]:
        return {"manifest": self.manifest, "binary": self.binary, "signature": self.signature,
                "host": host.encode(), "touched": str(int(now)).encode()}

    def is_signed_by(self, secret: bytes, key: EntryKey) -> bool:
        return signature_matches(secret, key.identity, self.manifest, self.binary, self.signature)

    @property
    def size(self) -> int:
        return len(self.manifest) + len(self.binary) + len(self.signature)
