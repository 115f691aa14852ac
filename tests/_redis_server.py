"""A real redis-server for the remote-tier tests: on a free loopback port, persistence off, killed at the end."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

REDIS_SERVER = shutil.which("redis-server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One redis-server process; ``url`` connects to it (with ``password`` when it asks for one)."""

    def __init__(self, folder: Path, password: str | None = None) -> None:
        if REDIS_SERVER is None:
            pytest.skip("redis-server is not installed (Debian's redis-server package; ./dev.sh installs it)")
        self.folder = folder
        self.password = password
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        command = [str(REDIS_SERVER), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                   "--appendonly", "no", "--dir", str(self.folder)]
        if self.password is not None:
            command += ["--requirepass", self.password]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError("redis-server did not start within 10 s")

    def client(self) -> object:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password)

    def signal(self, number: int) -> None:
        if self.process is not None:
            os.kill(self.process.pid, number)

    def stop(self) -> None:
        if self.process is None:
            return
        self.signal(signal.SIGCONT)  # a paused server cannot die
        self.process.kill()
        self.process.wait(timeout=10)
        self.process = None
