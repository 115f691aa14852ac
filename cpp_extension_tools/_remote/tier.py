"""The remote tier as the pipeline uses it: on a local miss, under the module lock, fetch a verified entry
and publish it locally, or elect one builder for the cluster, build, and push.

Every Redis failure ends in a local build with one warning per process; a bad entry (altered, forged,
signed with another secret, moved under another key) is never written to disk, and is replaced.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .. import _settings
from .._errors import LockTimeoutError, ManifestError
from .._key import BuildConfig
from .client import RemoteUnavailable, connect, translated_errors
from .cluster_lock import ClusterLock, describe_holder
from .entry import Entry, EntryKey
from .signing import load_secret
from .url import redacted

if TYPE_CHECKING:
    import redis

    from .._cache.manifest import Manifest
    from .._cache.store import ModuleStore

__all__ = ["TRAFFIC", "RemoteTier", "host_name", "open_tier"]

logger = logging.getLogger("cpp_extension_tools")

TRAFFIC = {"received": 0, "sent": 0}  # payload bytes of this process (entries read and written), for the bench
_NO_ENTRY = ":no-entry"  # beside a lock: its builder pushed nothing (failed, or too large)
_POLL_SECONDS = 0.1
_REFRESH_SECONDS = 86400.0  # an entry's expiry is pushed back at most once a day
_warned: set[str] = set()


def host_name() -> str:
    return _settings.HOST_NAME.get() or socket.gethostname()


def _warn_once(topic: str, message: str, *args: object) -> None:
    if topic not in _warned:
        _warned.add(topic)
        logger.warning(message, *args)


def open_tier() -> RemoteTier | None:
    """The remote tier of CACHED_CPP_EXTENSION_REMOTE_CACHE; None (one warning) without a secret file.

    Raises RemoteClientMissingError without the redis client, RemoteSecretError for an unusable secret.
    """
    url = _settings.REMOTE_CACHE.get()
    try:
        client = connect(url)
    except RemoteUnavailable as error:
        _warn_once("url", "not using the remote cache %s: %s", redacted(url), error)
        return None
    secret_path = _settings.REMOTE_SECRET_FILE.get()
    if not secret_path:
        _warn_once("secret", "not using the remote cache %s: %s is not set, and entries that cannot be verified "
                   "could run anyone's code; point it at a private file holding a secret shared by the cluster",
                   redacted(url), _settings.REMOTE_SECRET_FILE.name)
        return None
    return RemoteTier(url, client, load_secret(secret_path))


class RemoteTier:
    """One process's view of the remote cache."""

    def __init__(self, url: str, client: redis.Redis, secret: bytes) -> None:
        self.url = url
        self._client = client
        self._secret = secret
        self._host = host_name()
        self._rejected: set[bytes] = set()  # signatures already warned about

    def obtain(self, store: ModuleStore, config: BuildConfig, sources_digest: str, deadline: float,
               build: Callable[[], Manifest]) -> Manifest:
        """The artifact for ``config``: downloaded, or built here (by this host as the cluster's builder, or
        alone when the remote cache fails) and pushed."""
        key = EntryKey.of(config, sources_digest)
        try:
            manifest = self._download(store, config, key)
            if manifest is None:
                manifest = self._elect(store, config, key, deadline, build)
            return manifest
        except RemoteUnavailable as error:
            self._warn_unavailable(error)
            return build()

    def _elect(self, store: ModuleStore, config: BuildConfig, key: EntryKey, deadline: float,
               build: Callable[[], Manifest]) -> Manifest:
        """Build as the cluster's builder, or wait for the builder's entry (until ``deadline``)."""
        started = next_log = time.monotonic()
        waited = False
        while True:
            if waited and self._builder_left_no_entry(key):
                # Its build failed, or its binary is too large to share: electing a new builder would build
                # once per host, one after another; each host builds for itself at once instead.
                logger.info("%s: the cluster's builder left no entry; building here", config.name)
                return build()
            lock = ClusterLock(self._client, key.lock, self._host, _settings.REMOTE_LOCK_EXPIRY.get())
            with translated_errors():
                acquired = lock.try_acquire()
            if acquired:
                return self._build_as_builder(store, config, key, lock, build)
            waited = True
            manifest = self._download(store, config, key)
            if manifest is not None:
                return manifest
            now = time.monotonic()
            if now >= next_log:
                next_log = now + _settings.LOCK_LOG_INTERVAL.get()
                logger.info("%s: waiting for the cluster build, held by %s", config.name, self._holder(key))
            if now >= deadline:
                raise LockTimeoutError(
                    f"gave up waiting for {self._holder(key)} to build {config.name!r} for the cluster after "
                    f"{now - started:.0f} s; to wait longer set {_settings.LOCK_TIMEOUT.name} (seconds)")
            time.sleep(min(_POLL_SECONDS, max(0.0, deadline - now)))

    def _build_as_builder(self, store: ModuleStore, config: BuildConfig, key: EntryKey, lock: ClusterLock,
                          build: Callable[[], Manifest]) -> Manifest:
        """Build holding the cluster lock, and push before releasing it, so that the hosts waiting for
        the lock find the entry instead of building again."""
        entry_there = False
        try:
            # The previous builder may have pushed between our look and our lock.
            manifest = self._download(store, config, key)
            entry_there = manifest is not None
            if manifest is None:
                manifest = build()
                entry_there = self.push(store, config, key.sources_digest, manifest)
            return manifest
        finally:
            if not entry_there:
                self._mark_no_entry(key)
            lock.release()

    def _mark_no_entry(self, key: EntryKey) -> None:
        """Tell the waiting hosts that this build leaves nothing to download (best effort)."""
        try:
            with translated_errors():
                self._client.set(key.lock + _NO_ENTRY, self._host, px=round(_settings.REMOTE_LOCK_EXPIRY.get() * 1000))
        except RemoteUnavailable as error:
            logger.debug("could not mark %s as left without an entry: %s", key.lock, error)

    def _builder_left_no_entry(self, key: EntryKey) -> bool:
        with translated_errors():
            return bool(self._client.exists(key.lock + _NO_ENTRY))

    def close(self) -> None:
        """Close the connections (a tier serves one cold call)."""
        try:
            with translated_errors():
                self._client.close()
        except RemoteUnavailable as error:  # closing must never fail the load
            logger.debug("closing the remote cache client: %s", error)

    def _holder(self, key: EntryKey) -> str:
        try:
            with translated_errors():
                value = self._client.get(key.lock)
            return describe_holder(value if isinstance(value, bytes) else None)
        except RemoteUnavailable:
            return "an unknown holder"

    def _download(self, store: ModuleStore, config: BuildConfig, key: EntryKey) -> Manifest | None:
        """Fetch, verify and publish the entry of ``key``; None when absent, bad, or not for this host."""
        import redis

        with translated_errors():
            try:
                raw = self._client.hgetall(key.entry)
            except redis.ResponseError as error:
                if not str(error).startswith("WRONGTYPE"):
                    raise
                # Something else was written under the entry's name: a bad entry, which the build replaces
                # (push deletes the key first), not a reason to give up the remote tier for this key.
                self._reject(config, key, b"", f"it is not an entry ({error})")
                return None
        fields = {k: v for k, v in raw.items() if isinstance(k, bytes) and isinstance(v, bytes)}
        if not fields:
            return None
        TRAFFIC["received"] += sum(len(v) for v in fields.values())
        entry = Entry.from_fields(fields)
        if entry is None or not entry.is_signed_by(self._secret, key):
            self._reject(config, key, fields.get(b"signature", b""), "its signature does not match")
            return None
        from .._cache.manifest import parse_manifest

        try:
            built = parse_manifest(entry.manifest, key.entry)
        except ManifestError as error:
            self._reject(config, key, entry.signature, str(error))
            return None
        manifest, why = store.publish_downloaded(config, built, entry.binary)
        if manifest is None:
            logger.info("%s: the remote entry (from host %s) does not fit this host: %s", config.name,
                        fields.get(b"host", b"?").decode(errors="replace"), why)
            return None
        logger.info("%s: downloaded from the remote cache (built on host %s)", config.name,
                    fields.get(b"host", b"?").decode(errors="replace"))
        self._refresh(key, fields)
        return manifest

    def _reject(self, config: BuildConfig, key: EntryKey, signature: bytes, why: str) -> None:
        if signature in self._rejected:
            return
        self._rejected.add(signature)
        logger.warning("%s: rejecting the remote entry %s in %s (%s: altered, forged, signed with another secret "
                       "or moved from another key); building locally and replacing it", config.name, key.entry,
                       redacted(self.url), why)

    def _refresh(self, key: EntryKey, fields: dict[bytes, bytes]) -> None:
        """Push the entry's expiry back, at most once a day (best effort)."""
        try:
            touched = float(fields.get(b"touched", b"0"))
        except ValueError:
            touched = 0.0
        if time.time() - touched < _REFRESH_SECONDS:
            return
        try:
            with translated_errors():
                pipe = self._client.pipeline(transaction=True)
                pipe.hset(key.entry, "touched", str(int(time.time())))
                pipe.expire(key.entry, round(_settings.REMOTE_ENTRY_EXPIRY.get()))
                pipe.execute()
        except RemoteUnavailable as error:
            logger.debug("could not refresh the expiry of %s: %s", key.entry, error)

    def push(self, store: ModuleStore, config: BuildConfig, sources_digest: str, manifest: Manifest) -> bool:
        """Upload a local artifact (best effort: a failure is logged once, never raised); whether it was."""
        key = EntryKey.of(config, sources_digest)
        try:
            with open(store.library_path(manifest), "rb") as f:
                binary = f.read()
            with open(store.manifest_path(manifest.artifact_id), "rb") as f:
                manifest_bytes = f.read()
        except OSError as error:
            logger.warning("%s: not pushed to the remote cache: %s", config.name, error)
            return False
        limit = _settings.REMOTE_MAX_ENTRY_SIZE.get()
        if len(binary) > limit:
            logger.info("%s: not pushed to the remote cache: %d bytes is more than %s=%s", config.name, len(binary),
                        _settings.REMOTE_MAX_ENTRY_SIZE.name, _settings.REMOTE_MAX_ENTRY_SIZE.raw() or "256M")
            return False
        entry = Entry.signed(self._secret, key, manifest_bytes, binary)
        try:
            with translated_errors():
                pipe = self._client.pipeline(transaction=True)
                pipe.delete(key.entry)  # a bad entry's extra fields must not survive
                pipe.hset(key.entry, mapping=entry.fields(self._host, time.time()))  # type: ignore[arg-type]
                pipe.expire(key.entry, round(_settings.REMOTE_ENTRY_EXPIRY.get()))
                pipe.execute()
        except RemoteUnavailable as error:
            self._warn_unavailable(error)
            return False
        TRAFFIC["sent"] += entry.size
        logger.info("%s: pushed to the remote cache (%d bytes)", config.name, entry.size)
        return True

    def _warn_unavailable(self, error: RemoteUnavailable) -> None:
        _warn_once("unavailable", "the remote cache %s failed (%s); building locally (the next process tries it "
                   "again)", redacted(self.url), error)
