"""What the remote cache holds for this library, for the command line: a summary, the entries, deletion."""

from __future__ import annotations

from typing import Any

from .. import _settings
from .._errors import RemoteClientMissingError
from .client import RemoteUnavailable, connect, translated_errors
from .entry import PREFIX, entry_pattern
from .url import redacted

__all__ = ["RemoteEntry", "delete_entries", "list_entries", "redacted_url", "remote_summary"]

_SCAN_BATCH = 500


class RemoteEntry:
    """One entry as listed: which module and configuration, its size, who pushed it, when it was refreshed."""

    __slots__ = ("configuration", "host", "module", "redis_key", "size", "sources", "touched")

    def __init__(self, redis_key: str, size: int, host: str, touched: float) -> None:
        self.redis_key = redis_key
        module, configuration, sources = [*redis_key[len(PREFIX + "entry:"):].rsplit(":", 2), "", ""][:3]
        self.module = module
        self.configuration = configuration[:16]
        self.sources = sources[:16]
        self.size = size
        self.host = host
        self.touched = touched

    def to_json(self) -> dict[str, Any]:
        return {"module": self.module, "configuration": self.configuration, "sources": self.sources,
                "size_bytes": self.size, "host": self.host, "touched": self.touched, "key": self.redis_key}


def _url() -> str:
    url = _settings.REMOTE_CACHE.get()
    if not url:
        raise RemoteUnavailable(f"no remote cache is configured ({_settings.REMOTE_CACHE.name} is not set)")
    return url


def redacted_url() -> str:
    return redacted(_settings.REMOTE_CACHE.get())


def list_entries(name: str | None = None) -> list[RemoteEntry]:
    """Every entry of this library (of module ``name``), sorted by module; RemoteUnavailable on failure."""
    client = connect(_url())
    entries = []
    with translated_errors():
        for raw in client.scan_iter(match=entry_pattern(name), count=_SCAN_BATCH):
            key = raw.decode() if isinstance(raw, bytes) else str(raw)
            size = sum(int(client.hstrlen(key, field)) for field in ("manifest", "binary", "signature"))
            host, touched = client.hmget(key, ["host", "touched"])
            entries.append(RemoteEntry(key, size, _text(host), float(_text(touched) or 0)))
    return sorted(entries, key=lambda e: (e.module, e.redis_key))


def delete_entries(name: str | None = None) -> list[RemoteEntry]:
    """Delete every entry of this library (of module ``name``); the entries deleted."""
    entries = list_entries(name)
    client = connect(_url())
    with translated_errors():
        for start in range(0, len(entries), _SCAN_BATCH):
            client.delete(*[e.redis_key for e in entries[start:start + _SCAN_BATCH]])
    return entries


def remote_summary() -> dict[str, Any] | None:
    """For ``info``: the URL (password hidden), whether it answers, its entries and their bytes; None when no
    remote cache is configured."""
    url = _settings.REMOTE_CACHE.get()
    if not url:
        return None
    summary: dict[str, Any] = {"url": redacted(url), "secret_file": _settings.REMOTE_SECRET_FILE.get() or None}
    try:
        entries = list_entries()
    except (RemoteUnavailable, RemoteClientMissingError) as error:
        return {**summary, "reachable": False, "error": str(error)}
    return {**summary, "reachable": True, "entries": len(entries), "size_bytes": sum(e.size for e in entries)}


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return "" if value is None else str(value)
