"""The signed Redis remote tier, against a real redis-server: hosts are processes with their own cache roots
and host names; compiles are counted by the logging compiler wrappers."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cpp_extension_tools._errors import RemoteClientMissingError, RemoteSecretError
from tests._redis_server import RedisServer
from tests.conftest import CompilerLog, last_json, write_module

pytest.importorskip("redis")

MODULE = "remote_ext"
HOST_SCRIPT = textwrap.dedent("""
    import json, os, sys, time
    started = time.monotonic()
    import cpp_extension_tools as c
    try:
        module = c.cached_load_torch_cpp_extension({name!r}, {sources!r}, verbose=bool(os.environ.get("VERBOSE")))
        print(json.dumps({{"ok": module.answer(), "seconds": time.monotonic() - started}}))
    except Exception as error:
        print(json.dumps({{"error": type(error).__name__, "message": str(error)}}))
""")


class Cluster:
    """The session's module, compilers and secret, and a way to start hosts against a Redis URL."""

    def __init__(self, folder: Path, server: RedisServer) -> None:
        self.folder = folder
        self.server = server
        (folder / "compilers").mkdir(exist_ok=True)
        self.compilers = CompilerLog(folder / "compilers")
        self.sources = write_module(folder / "src")
        self.secret = folder / "secret"
        self.secret.write_bytes(b"a-cluster-secret-of-enough-bytes\n")
        self.secret.chmod(0o600)
        self.script = folder / "host.py"
        self.script.write_text(HOST_SCRIPT.format(name=MODULE, sources=self.sources))
        self.hosts = 0

    def env(self, url: str | None = None, **extra: str) -> dict[str, str]:
        self.hosts += 1
        root = self.folder / "hosts" / f"{time.monotonic_ns()}-{self.hosts}"
        env = {**os.environ, **self.compilers.env, "CACHED_CPP_EXTENSION_BUILD_DIR": str(root),
               "CACHED_CPP_EXTENSION_REMOTE_CACHE": url or self.server.url,
               "CACHED_CPP_EXTENSION_REMOTE_SECRET_FILE": str(self.secret),
               "CACHED_CPP_EXTENSION_HOST_NAME": f"node{self.hosts}", "CACHED_CPP_EXTENSION_PROGRESS": "0"}
        env.update(extra)
        return {k: v for k, v in env.items() if v != ""}

    def start(self, env: dict[str, str]) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, str(self.script)], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def host(self, url: str | None = None, **extra: str) -> tuple[Any, str]:
        """Run one host to the end: (its JSON report, its stderr)."""
        out, err = self.start(self.env(url, **extra)).communicate(timeout=300)
        return last_json(out), err

    def entry_names(self) -> list[bytes]:
        return sorted(self.redis().scan_iter(match="cpp_extension_tools:1:entry:*"))

    def redis(self) -> Any:
        return self.server.client()


@pytest.fixture(scope="session")
def _session_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    folder = tmp_path_factory.mktemp("remote")
    server = RedisServer(folder).start()
    try:
        yield Cluster(folder, server)
    finally:
        server.stop()


@pytest.fixture
def cluster(_session_cluster: Cluster) -> Cluster:
    _session_cluster.redis().flushall()
    _session_cluster.compilers.reset()
    return _session_cluster


@pytest.fixture(scope="session")
def good_entry(_session_cluster: Cluster) -> tuple[bytes, dict[bytes, bytes]]:
    """(the Redis name, the fields) of an entry pushed by a real build (one build for the session)."""
    _session_cluster.redis().flushall()
    report, err = _session_cluster.host()
    assert report == {"ok": 42, "seconds": report.get("seconds")}, err
    [name] = _session_cluster.entry_names()
    return name, _session_cluster.redis().hgetall(name)


def _remote_warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "remote" in line]


def _entry_key(redis_name: bytes) -> Any:
    from cpp_extension_tools._remote.entry import PREFIX, EntryKey

    name, config_key, digest = redis_name.decode()[len(PREFIX + "entry:"):].split(":")
    return EntryKey(name, config_key, digest)


def test_a_second_host_downloads_with_no_compile_and_a_warm_host_never_asks(cluster: Cluster) -> None:
    first, err = cluster.host()
    assert first["ok"] == 42, err
    assert len(cluster.compilers.compiles()) == 2
    assert len(cluster.entry_names()) == 1
    cluster.compilers.reset()
    env = cluster.env()
    second, err = cluster.host(**{k: env[k] for k in ("CACHED_CPP_EXTENSION_BUILD_DIR",)})
    assert second["ok"] == 42, err
    assert cluster.compilers.calls() == []  # not even a link
    assert _remote_warnings(err) == []
    # Warm on that host: a remote that does not answer is never asked (asking would warn).
    dead = f"redis://127.0.0.1:{cluster.server.port + 1 if cluster.server.port < 65535 else 1}/0"
    warm, err = cluster.host(dead, CACHED_CPP_EXTENSION_BUILD_DIR=env["CACHED_CPP_EXTENSION_BUILD_DIR"])
    assert warm["ok"] == 42 and "remote" not in err, err


@pytest.mark.slow
@pytest.mark.parametrize("hosts", [4, 16])
def test_hosts_starting_at_once_build_once(cluster: Cluster, hosts: int) -> None:
    processes = [cluster.start(cluster.env(COMPILE_DELAY="1")) for _ in range(hosts)]
    outputs = [p.communicate(timeout=600) for p in processes]
    assert [last_json(out)["ok"] for out, _ in outputs] == [42] * hosts, outputs
    assert len(cluster.compilers.compiles()) == 2, "\n".join(err for _, err in outputs)
    assert len(cluster.compilers.links()) == 1


def _tampered(case: str, secret: bytes, name: bytes, fields: dict[bytes, bytes]) -> dict[bytes, bytes]:
    from cpp_extension_tools._remote.entry import Entry, EntryKey

    fields = dict(fields)

    def flip(field: bytes, at: int) -> None:
        value = bytearray(fields[field])
        value[at] ^= 0x01
        fields[field] = bytes(value)

    if case == "binary":
        flip(b"binary", len(fields[b"binary"]) // 2)
    elif case == "manifest":
        flip(b"manifest", fields[b"manifest"].index(b'"created_at"') + 16)
    elif case == "signature":
        flip(b"signature", 10)
    else:
        key = _entry_key(name)
        if case == "other_secret":
            secret = b"another-secret-of-sixteen-bytes!"
        else:  # signed, with the right secret, for another key: moved under this one
            key = EntryKey(key.name, key.config_key, "0" * 64)
        entry = Entry.signed(secret, key, fields[b"manifest"], fields[b"binary"])
        fields.update({b"signature": entry.signature})
    return fields


@pytest.mark.slow
@pytest.mark.parametrize("case", ["binary", "manifest", "signature", "other_secret", "other_key", "not_a_hash"])
def test_a_bad_entry_is_rejected_rebuilt_and_replaced(cluster: Cluster, good_entry: tuple[bytes, dict[bytes, bytes]],
                                                      case: str) -> None:
    from cpp_extension_tools._remote.entry import Entry

    name, fields = good_entry
    secret = cluster.secret.read_bytes().strip()
    cluster.redis().flushall()
    cluster.compilers.reset()
    if case == "not_a_hash":  # something else written under the entry's name (WRONGTYPE for HGETALL)
        cluster.redis().set(name, b"not an entry")
    else:
        cluster.redis().hset(name, mapping=_tampered(case, secret, name, fields))
    report, err = cluster.host()
    assert report["ok"] == 42, err
    assert len(cluster.compilers.compiles()) == 2  # built locally
    rejections = [line for line in err.splitlines() if "rejecting the remote entry" in line]
    assert len(rejections) == 1, err
    replaced = Entry.from_fields(cluster.redis().hgetall(name))
    assert replaced is not None and replaced.is_signed_by(secret, _entry_key(name))


LIBRARY_SCRIPT = textwrap.dedent("""
    import json, os
    import cpp_extension_tools as c
    path = c.cached_load_torch_cpp_extension({name!r}, {sources!r}, is_python_module=False)
    print(json.dumps({{"path": path, "exists": os.path.isfile(path)}}))
""")


def test_a_plain_library_is_shared_through_the_remote_too(cluster: Cluster) -> None:
    """is_python_module=False artifacts (named like modules, loaded with torch.ops.load_library) download too."""
    script = cluster.folder / "library_host.py"
    script.write_text(LIBRARY_SCRIPT.format(name="remote_library", sources=cluster.sources))
    reports = []
    for _ in range(2):
        out = subprocess.run([sys.executable, str(script)], env=cluster.env(), capture_output=True, text=True,
                             timeout=300)
        reports.append(last_json(out.stdout))
        assert reports[-1]["exists"], out.stderr
        if len(reports) == 1:
            assert len(cluster.compilers.compiles()) == 2, out.stderr
            cluster.compilers.reset()
    assert cluster.compilers.compiles() == []  # the second host downloaded it
    assert reports[0]["path"] != reports[1]["path"]  # each host its own cache root


def test_hosts_waiting_for_a_builder_whose_build_fails_build_at_once_instead_of_one_after_another(
        cluster: Cluster) -> None:
    """A failed cluster build leaves no entry: the waiting hosts must not elect builders one at a time."""
    broken = cluster.folder / "broken"
    broken.mkdir(exist_ok=True)
    (broken / "broken.c").write_text("this is not C\n")
    script = cluster.folder / "broken_host.py"
    script.write_text(HOST_SCRIPT.format(name="remote_broken", sources=[str(broken / "broken.c")]))
    builder = subprocess.Popen([sys.executable, str(script)], env=cluster.env(COMPILE_DELAY="3"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(cluster.redis().scan_iter(match="cpp_extension_tools:1:lock:remote_broken:*")):
        assert time.monotonic() < deadline and builder.poll() is None, "the builder never took the cluster lock"
        time.sleep(0.05)
    waiter = subprocess.Popen([sys.executable, str(script)], env=cluster.env(VERBOSE="1"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outputs = [process.communicate(timeout=300) for process in (builder, waiter)]
    assert [last_json(out)["error"] for out, _ in outputs] == ["BuildError", "BuildError"], outputs
    assert "the cluster's builder left no entry; building here" in outputs[1][1], outputs[1][1]


def test_without_a_secret_the_remote_is_not_used_with_one_warning(cluster: Cluster) -> None:
    report, err = cluster.host(CACHED_CPP_EXTENSION_REMOTE_SECRET_FILE="")
    assert report["ok"] == 42, err
    warnings = _remote_warnings(err)
    assert len(warnings) == 1 and "CACHED_CPP_EXTENSION_REMOTE_SECRET_FILE" in warnings[0], err
    assert cluster.entry_names() == []


@pytest.mark.parametrize("mode, shared, refused", [(0o644, "", True), (0o604, "1", True), (0o640, "", True),
                                                    (0o640, "1", False), (0o600, "", False)])
def test_a_secret_file_others_can_read_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: int,
                                                   shared: str, refused: bool) -> None:
    from cpp_extension_tools._remote.signing import load_secret

    secret = tmp_path / "secret"
    secret.write_bytes(b"0123456789abcdef0123")
    secret.chmod(mode)
    monkeypatch.setenv("CACHED_CPP_EXTENSION_SHARED_CACHE", shared)
    if refused:
        with pytest.raises(RemoteSecretError, match="chmod 600"):
            load_secret(str(secret))
    else:
        assert load_secret(str(secret)) == b"0123456789abcdef0123"


def test_a_short_secret_is_refused(tmp_path: Path) -> None:
    from cpp_extension_tools._remote.signing import load_secret

    secret = tmp_path / "secret"
    secret.write_bytes(b"short")
    secret.chmod(0o600)
    with pytest.raises(RemoteSecretError, match="at least 16"):
        load_secret(str(secret))


def test_a_missing_client_is_an_error_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from cpp_extension_tools._remote.client import connect

    monkeypatch.setitem(sys.modules, "redis", None)  # what `import redis` sees when it is not installed
    with pytest.raises(RemoteClientMissingError, match=r"cpp_extension_tools\[remote\]"):
        connect("redis://127.0.0.1:1/0")


def test_the_password_is_hidden() -> None:
    from cpp_extension_tools._remote.url import redacted

    assert redacted("redis://user:s3cret@host:6379/2") == "redis://user:***@host:6379/2"
    assert redacted("rediss://:s3cret@[::1]:6380") == "rediss://:***@[::1]:6380"
    assert redacted("redis://host:6379") == "redis://host:6379"


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    servers: list[RedisServer] = []

    def start(password: str | None = None) -> RedisServer:
        servers.append(RedisServer(tmp_path, password).start())
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.mark.parametrize("failure", ["stopped", "wrong_password", "paused"])
def test_a_failing_remote_means_a_local_build_bounded_and_one_warning(cluster: Cluster, own_server: Any,
                                                                      failure: str) -> None:
    server = own_server(password="the-right-one" if failure == "wrong_password" else None)
    url = server.url
    if failure == "stopped":
        server.stop()
    elif failure == "wrong_password":
        url = f"redis://:not-the-password@127.0.0.1:{server.port}/0"
    else:
        server.signal(signal.SIGSTOP)
    started = time.monotonic()
    report, err = cluster.host(url, CACHED_CPP_EXTENSION_REMOTE_TIMEOUT="1",
                               CACHED_CPP_EXTENSION_REMOTE_CONNECT_TIMEOUT="1")
    elapsed = time.monotonic() - started
    assert report["ok"] == 42, err
    assert len(cluster.compilers.compiles()) == 2
    warnings = _remote_warnings(err)
    assert len(warnings) == 1 and f"127.0.0.1:{server.port}" in warnings[0], err
    assert "not-the-password" not in err and "Traceback" not in err
    # A paused server costs the read timeout once (the push is not tried again after the failure).
    assert elapsed < 60, elapsed


@pytest.mark.slow
def test_a_killed_builder_host_is_replaced_within_the_lock_expiry(cluster: Cluster) -> None:
    expiry = {"CACHED_CPP_EXTENSION_REMOTE_LOCK_EXPIRY": "2"}
    builder = cluster.start(cluster.env(COMPILE_DELAY="60", **expiry))
    redis = cluster.redis()
    deadline = time.monotonic() + 60
    while not list(redis.scan_iter(match="cpp_extension_tools:1:lock:*")):
        assert time.monotonic() < deadline and builder.poll() is None, "the builder never took the cluster lock"
        time.sleep(0.05)
    waiter = cluster.start(cluster.env(VERBOSE="1", CACHED_CPP_EXTENSION_LOCK_TIMEOUT="40", **expiry))
    assert waiter.stderr is not None
    seen = []
    while not seen or "waiting for the cluster build" not in seen[-1]:  # the waiter waits on the lock
        seen.append(waiter.stderr.readline())
        assert seen[-1], f"the waiter ended without waiting: {seen}"
    assert re.search(r"held by pid \d+ on host node\d+", seen[-1]), seen
    builder.send_signal(signal.SIGKILL)
    builder.communicate(timeout=60)
    killed_at = time.monotonic()
    out, err = waiter.communicate(timeout=300)
    assert last_json(out)["ok"] == 42, err
    assert time.monotonic() - killed_at < 2 + 30, "the waiter did not take over soon after the lock expired"
    assert len(cluster.entry_names()) == 1


def _cli(env: dict[str, str], *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cpp_extension_tools", *arguments], env=env, capture_output=True,
                          text=True, timeout=120)


def test_the_command_line_shows_lists_and_clears_the_remote(cluster: Cluster,
                                                            good_entry: tuple[bytes, dict[bytes, bytes]]) -> None:
    import json

    name, fields = good_entry
    cluster.redis().hset(name, mapping=fields)
    env = cluster.env()
    info = json.loads(_cli(env, "--json", "info").stdout)["remote cache"]
    assert info["reachable"] is True and info["entries"] == 1 and info["size_bytes"] > len(fields[b"binary"]), info
    listed = _cli(env, "list", "--remote")
    assert listed.returncode == 0 and MODULE in listed.stdout and "1 entries" in listed.stdout, listed
    assert json.loads(_cli(env, "--json", "list", "--remote", "other_module").stdout)["entries"] == []
    assert _cli(env, "clear", "--remote", "other_module").returncode == 0
    assert cluster.entry_names() == [name]
    cleared = _cli(env, "clear", "--remote", MODULE)
    assert cleared.returncode == 0 and "deleted 1 entries" in cleared.stdout, cleared
    assert cluster.entry_names() == []


def test_info_hides_the_password_and_says_when_the_remote_does_not_answer(cluster: Cluster, own_server: Any) -> None:
    import json

    server = own_server(password="hunter2-hunter2")
    env = cluster.env(f"redis://:hunter2-hunter2@127.0.0.1:{server.port}/0")
    result = _cli(env, "--json", "info")
    info = json.loads(result.stdout)["remote cache"]
    assert info["reachable"] is True and info["entries"] == 0, info
    assert "hunter2" not in result.stdout + result.stderr and info["url"].startswith("redis://:***@")
    server.stop()
    info = json.loads(_cli(env, "--json", "info").stdout)["remote cache"]
    assert info["reachable"] is False and "Connection" in info["error"], info


@pytest.mark.slow
def test_redis_killed_while_a_host_waits_means_local_builds_and_one_warning_each(cluster: Cluster,
                                                                                  own_server: Any) -> None:
    server = own_server()
    builder = cluster.start(cluster.env(server.url, COMPILE_DELAY="15"))
    redis = server.client()
    deadline = time.monotonic() + 60
    while not list(redis.scan_iter(match="cpp_extension_tools:1:lock:*")):  # type: ignore[attr-defined]
        assert time.monotonic() < deadline and builder.poll() is None, "the builder never took the cluster lock"
        time.sleep(0.05)
    waiter = cluster.start(cluster.env(server.url, VERBOSE="1"))
    assert waiter.stderr is not None
    seen = [waiter.stderr.readline()]
    while "waiting for the cluster build" not in seen[-1]:
        assert seen[-1], f"the waiter ended without waiting: {seen}"
        seen.append(waiter.stderr.readline())
    server.stop()
    for process in (builder, waiter):
        out, err = process.communicate(timeout=300)
        assert last_json(out)["ok"] == 42, err
        failures = [line for line in err.splitlines() if "the remote cache" in line and "failed" in line]
        assert len(failures) == 1 and "Traceback" not in err, err
    assert len(cluster.compilers.compiles()) == 4  # each host built for itself once the server was gone


def test_a_host_in_a_network_namespace_that_cannot_reach_the_server_builds_locally(cluster: Cluster) -> None:
    import shutil

    unshare = shutil.which("unshare")
    if unshare is None or subprocess.run([unshare, "-n", "true"], capture_output=True).returncode != 0:
        pytest.skip("cannot create a network namespace here (unshare -n needs root or user namespaces)")
    started = time.monotonic()
    completed = subprocess.run([unshare, "-n", sys.executable, str(cluster.script)], env=cluster.env(),
                               capture_output=True, text=True, timeout=300)
    assert last_json(completed.stdout)["ok"] == 42, completed.stderr
    warnings = _remote_warnings(completed.stderr)
    assert len(warnings) == 1 and f"127.0.0.1:{cluster.server.port}" in warnings[0], completed.stderr
    assert len(cluster.compilers.compiles()) == 2 and cluster.entry_names() == []
    assert time.monotonic() - started < 60
