"""The secret that signs remote entries, and the signature: HMAC-SHA256 over everything an entry claims.

The signature covers the entry's whole identity (format, library version, module name, configuration key,
sources digest) and its content (manifest and binary bytes), each length-prefixed, so no field can be
altered, no entry forged without the secret, and no entry moved under another key.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat

from .. import _settings
from .._errors import RemoteSecretError

__all__ = ["MIN_SECRET_BYTES", "load_secret", "sign", "signature_matches"]

MIN_SECRET_BYTES = 16
_MAX_SECRET_BYTES = 1 << 16


def load_secret(path: str) -> bytes:
    """The secret in ``path``; RemoteSecretError when other users can read it, or it is not a usable file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as error:
        raise RemoteSecretError(f"{_settings.REMOTE_SECRET_FILE.name}: cannot open {path}: {error.strerror}; "
                                "point it at a readable file of yours") from None
    try:
        st = os.fstat(fd)
        _check_private(path, st)
        data = os.read(fd, _MAX_SECRET_BYTES).strip()
    finally:
        os.close(fd)
    if len(data) < MIN_SECRET_BYTES:
        raise RemoteSecretError(f"{_settings.REMOTE_SECRET_FILE.name}: {path} holds {len(data)} bytes; a secret "
                                f"needs at least {MIN_SECRET_BYTES} (e.g. `head -c 32 /dev/urandom | base64 > {path}`)")
    return data


def _check_private(path: str, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise RemoteSecretError(f"{_settings.REMOTE_SECRET_FILE.name}: {path} is not a regular file")
    if st.st_mode & (stat.S_IROTH | stat.S_IWOTH):
        who = "other users"
    elif st.st_mode & (stat.S_IRGRP | stat.S_IWGRP) and not _settings.SHARED_CACHE.get():
        who = "its group"
    else:
        return
    raise RemoteSecretError(
        f"{_settings.REMOTE_SECRET_FILE.name}: {path} can be read by {who} (mode {stat.S_IMODE(st.st_mode):04o}), "
        f"and whoever reads it can sign binaries that every host loads. Fix: chmod 600 {path} (640 is allowed "
        f"with {_settings.SHARED_CACHE.name}=1)")


def sign(secret: bytes, identity: tuple[str, ...], manifest: bytes, binary: bytes) -> bytes:
    """The hex HMAC-SHA256 of an entry: its identity fields, then its manifest and binary bytes."""
    mac = hmac.new(secret, digestmod=hashlib.sha256)
    for part in (*(field.encode() for field in identity), manifest, binary):
        mac.update(len(part).to_bytes(8, "big"))
        mac.update(part)
    return mac.hexdigest().encode("ascii")


def signature_matches(secret: bytes, identity: tuple[str, ...], manifest: bytes, binary: bytes,
                      signature: bytes) -> bool:
    return hmac.compare_digest(sign(secret, identity, manifest, binary), signature)
