"""One builder per cluster: a Redis lock (SET NX PX with a random token), renewed while its holder builds,
released only by its holder (compare-and-delete in one Lua script). A holder that dies stops renewing it,
and it expires after CACHED_CPP_EXTENSION_REMOTE_LOCK_EXPIRY seconds."""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time

import redis  # this module is imported only once the client is known to be there

__all__ = ["ClusterLock", "describe_holder"]

logger = logging.getLogger("cpp_extension_tools")

# KEYS[1]: the lock; ARGV[1]: our value. Only the holder deletes or extends it.
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"
_RENEW = ("if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) "
          "else return 0 end")


class ClusterLock:
    """The lock at ``name``; ``try_acquire`` once, ``release`` in a finally. Renewal runs in a daemon thread."""

    def __init__(self, client: redis.Redis, name: str, host: str, expiry: float) -> None:
        self._client = client
        self._name = name
        self._expiry_ms = max(1, round(expiry * 1000))
        self._value = json.dumps({"token": secrets.token_hex(16), "host": host, "pid": os.getpid(),
                                  "since": time.time()}).encode()
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def try_acquire(self) -> bool:
        """Take the lock if nobody holds it (RedisError when the server fails)."""
        if not self._client.set(self._name, self._value, nx=True, px=self._expiry_ms):
            return False
        self._renewer = threading.Thread(target=self._renew, name="cpp_extension_tools-cluster-lock", daemon=True)
        self._renewer.start()
        return True

    def _renew(self) -> None:
        while not self._stop.wait(self._expiry_ms / 3000):
            try:
                if not self._client.eval(_RENEW, 1, self._name, self._value, self._expiry_ms):
                    logger.warning("the cluster build lock %s expired while this host built; another host may "
                                   "build too", self._name)
                    return
            except (redis.RedisError, OSError) as error:  # the lock expires by itself
                logger.debug("could not renew the cluster build lock %s: %s", self._name, error)

    def release(self) -> None:
        """Stop renewing and delete the lock if it is still ours (best effort: it expires anyway)."""
        self._stop.set()
        if self._renewer is None:
            return
        self._renewer.join()
        self._renewer = None
        try:
            self._client.eval(_RELEASE, 1, self._name, self._value)
        except (redis.RedisError, OSError) as error:  # the lock expires by itself
            logger.debug("could not release the cluster build lock %s: %s", self._name, error)


def describe_holder(value: bytes | None) -> str:
    """Who holds a cluster lock, from its value: "pid P on host H since T" (or what can be read)."""
    if value is None:
        return "nobody (released)"
    try:
        holder = json.loads(value)
        since = time.strftime("%H:%M:%S", time.localtime(float(holder["since"])))
        return f"pid {int(holder['pid'])} on host {holder['host']} since {since}"
    except (ValueError, KeyError, TypeError):
        return "an unknown holder"
