"""The remote tier's scenarios: simulated hosts (processes with their own cache roots and host names) against
a real redis-server on loopback.

* 8 hosts cold at once, with the remote tier and without: builds (from the logging compilers), the slowest
  host's load call, against one cold build in the same run (goal: 1 build, at most 1.3x);
* warm from the remote: a fresh host with an empty local cache loads what another host pushed (goal: under
  50 ms for the load call);
* the payload bytes each host sent and received.

    .venv/bin/python -m bench._remote [--quick]     # this scenario alone, rows as JSON
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ._modules import ModuleFiles, write_module
from ._run import Workspace

__all__ = ["remote_tier"]

HOSTS = 8
CHILD = r'''
import json, sys, time
import torch
spec = json.loads(sys.argv[1])
start = time.perf_counter()
import cpp_extension_tools
imported = time.perf_counter()
module = cpp_extension_tools.cached_load_torch_cpp_extension(
    spec["name"], spec["sources"], extra_include_paths=spec["includes"], build_directory=spec["build_directory"])
end = time.perf_counter()
got = {name: getattr(module, name)() for name in spec["expected"]}
if got != spec["expected"]:
    raise SystemExit(f"the module returned {got}, expected {spec['expected']}")
tier = sys.modules.get("cpp_extension_tools._remote.tier")
traffic = tier.TRAFFIC if tier is not None else {"received": 0, "sent": 0}
print(json.dumps({"call_s": end - imported, **traffic}))
'''


def _row(metric: str, unit: str, ours: list[float], reference: list[float], target: str, met: bool | None,
         **notes: Any) -> dict[str, Any]:
    # "torch" stays empty: the plots label it torch's load(); the single cold build is in the notes.
    return {"scenario": "remote tier", "metric": metric, "unit": unit, "ours": ours, "torch": reference,
            "target": target, "met": met, "notes": notes}


class _Server:
    def __init__(self, folder: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.process = subprocess.Popen(
            [str(shutil.which("redis-server")), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def flush(self) -> None:
        import redis

        redis.Redis(port=self.port).flushall()

    def stop(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()


class _Hosts:
    def __init__(self, ws: Workspace, files: ModuleFiles, server: _Server) -> None:
        self.ws = ws
        self.files = files
        self.server = server
        self.child = ws.folder / "bench_remote_child.py"
        self.child.write_text(CHILD)
        self.secret = ws.folder / "remote-secret"
        self.secret.write_bytes(b"bench-secret-of-sixteen-bytes-or-more")
        self.secret.chmod(0o600)
        self.count = 0

    def start(self, remote: bool) -> subprocess.Popen[str]:
        self.count += 1
        spec = {"name": "bench_remote", "sources": self.files.sources, "includes": [str(self.files.folder)],
                "build_directory": self.ws.new_cache("remote"), "expected": self.files.expected()}
        extra = {"CACHED_CPP_EXTENSION_HOST_NAME": f"node{self.count}", "CACHED_CPP_EXTENSION_PROGRESS": "0"}
        if remote:
            extra.update({"CACHED_CPP_EXTENSION_REMOTE_CACHE": self.server.url,
                          "CACHED_CPP_EXTENSION_REMOTE_SECRET_FILE": str(self.secret)})
        return subprocess.Popen([sys.executable, str(self.child), json.dumps(spec)], cwd=self.ws.folder,
                                env=self.ws.env(extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def run(self, count: int, remote: bool) -> list[dict[str, Any]]:
        processes = [self.start(remote) for _ in range(count)]
        results = []
        for process in processes:
            out, err = process.communicate(timeout=900)
            if process.returncode != 0:
                raise RuntimeError(f"a host failed ({process.returncode}):\n{out[-2000:]}\n{err[-2000:]}")
            results.append(json.loads(out.strip().splitlines()[-1]))
        return results


def _builds(ws: Workspace, files: ModuleFiles) -> float:
    return len(ws.compilers.compiles()) / files.n_sources


def remote_tier(ws: Workspace, files: ModuleFiles, repeat: int, hosts: int = HOSTS) -> list[dict[str, Any]]:
    if shutil.which("redis-server") is None:
        return [_row("skipped: redis-server is not installed", "", [], [], "", None)]
    server = _Server(ws.folder)
    try:
        return _scenarios(_Hosts(ws, files, server), repeat, hosts)
    finally:
        server.stop()


def _scenarios(hosts: _Hosts, repeat: int, count: int) -> list[dict[str, Any]]:
    ws, files = hosts.ws, hosts.files
    single, with_remote, without, builds_with, builds_without, warm, received, sent = ([] for _ in range(8))
    for _ in range(repeat):
        ws.compilers.reset()
        single.append(hosts.run(1, remote=False)[0]["call_s"] * 1e3)
        ws.compilers.reset()
        without.append(max(r["call_s"] for r in hosts.run(count, remote=False)) * 1e3)
        builds_without.append(_builds(ws, files))
        hosts.server.flush()
        ws.compilers.reset()
        results = hosts.run(count, remote=True)
        with_remote.append(max(r["call_s"] for r in results) * 1e3)
        builds_with.append(_builds(ws, files))
        received.append(max(r["received"] for r in results))
        sent.append(max(r["sent"] for r in results))
        warm.append(hosts.run(1, remote=True)[0]["call_s"] * 1e3)  # the entry is there: a download
    ratio = _median(with_remote) / _median(single)
    return [
        _row(f"{count} hosts cold at once: slowest host's load call, with the remote tier (reference: one cold "
             "build, in the notes)", "ms", with_remote, [], "1 build in all; <= 1.3x a single cold build",
             all(b == 1 for b in builds_with) and ratio <= 1.3, single_cold_build_ms=single,
             builds_with_remote=builds_with,
             builds_without_remote=builds_without, slowest_without_remote_ms=without, over_single=ratio),
        _row("warm from the remote: a fresh host, empty local cache", "ms", warm, [], "< 50 ms",
             _median(warm) < 50, bytes_received=received, bytes_sent_by_the_builder=sent),
    ]


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def main() -> int:
    quick = "--quick" in sys.argv
    with tempfile.TemporaryDirectory(prefix="cpp_extension_tools_bench_remote_") as scratch:
        ws = Workspace(Path(scratch))
        files = write_module(ws.folder / "module", 2 if quick else 8)
        rows = remote_tier(ws, files, 1 if quick else 3)
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
