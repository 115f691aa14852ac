"""The connection to the remote cache: the maintained ``redis`` client, with connect and operation timeouts
and no retries, every failure one exception (RemoteUnavailable) that the caller turns into a local build."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .. import _settings
from .._errors import RemoteClientMissingError
from .url import redacted

if TYPE_CHECKING:
    import redis

__all__ = ["RemoteUnavailable", "connect", "translated_errors"]


class RemoteUnavailable(Exception):
    """The remote cache did not answer, refused us, or failed an operation (the message says how)."""


def _redis_module() -> Any:
    try:
        import redis
    except ImportError:
        raise RemoteClientMissingError(
            f"{_settings.REMOTE_CACHE.name} is set but the redis client is not installed: "
            "pip install 'cpp_extension_tools[remote]' (or unset the variable)") from None
    return redis


def connect(url: str) -> redis.Redis:
    """A client for ``url`` that gives up after the configured timeouts, once (no retries)."""
    redis_module = _redis_module()
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    try:
        client: redis.Redis = redis_module.Redis.from_url(
            url, socket_connect_timeout=_settings.REMOTE_CONNECT_TIMEOUT.get(),
            socket_timeout=_settings.REMOTE_TIMEOUT.get(), retry=Retry(NoBackoff(), 0), retry_on_timeout=False,
            health_check_interval=0)
    except ValueError as error:
        raise RemoteUnavailable(f"{redacted(url)} is not a usable URL: {error}") from None
    return client


@contextlib.contextmanager
def translated_errors() -> Iterator[None]:
    """Turn the client's failures (connection, timeout, password, out of memory) into RemoteUnavailable."""
    import redis

    try:
        yield
    except (redis.RedisError, OSError) as error:
        raise RemoteUnavailable(f"{type(error).__name__}: {error}") from None
