"""What a newcomer sees without any set-up (issue 15): warnings on stderr, progress for slow builds and
waits, and build errors whose first lines say the cause. Each in a fresh process: logging's handlers and
the terminal are process-wide."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import select
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cpp_extension_tools._build import progress as _progress
from tests.conftest import CompilerLog, last_json, run_python, write_module

NAME = "newcomer_ext"

_BUILD = """
import json, sys
import cpp_extension_tools as c
spec = json.loads(sys.argv[1])
m = c.cached_load_torch_cpp_extension(spec["name"], spec["sources"], build_directory=spec["root"])
print(json.dumps({"a": m.a(), "pid": __import__("os").getpid()}))
"""


def _spec(tmp_path: Path, name: str = NAME) -> str:
    sources = write_module(tmp_path / "src", functions={"a": 1, "b": 2})
    return json.dumps({"name": name, "sources": sources, "root": str(tmp_path / "cache")})


def _slow_env(compilers: CompilerLog, **extra: str) -> dict[str, str]:
    # One compile at a time, 1 s each: three sources make a build of more than 3 s.
    return dict(os.environ, COMPILE_DELAY="1", MAX_JOBS="1", **compilers.env, **extra)


def _run_in_terminal(spec: str, env: dict[str, str]) -> tuple[int, str, str]:
    """(exit status, stdout, what the process wrote to its stderr, a pseudo-terminal)."""
    leader, follower = pty.openpty()
    process = subprocess.Popen([sys.executable, "-c", _BUILD, spec], stdout=subprocess.PIPE, stderr=follower,
                               stdin=subprocess.DEVNULL, env=env)
    os.close(follower)
    chunks: list[bytes] = []
    while True:
        ready, _, _ = select.select([leader], [], [], 0.2)
        if ready:
            try:
                data = os.read(leader, 65536)
            except OSError:  # EIO: every writer closed the terminal
                data = b""
            if data:
                chunks.append(data)
                continue
        if process.poll() is not None and not ready:
            break
        if ready and not data:
            break
    os.close(leader)
    assert process.stdout is not None
    stdout = process.stdout.read().decode()
    process.wait(timeout=60)
    return process.returncode, stdout, b"".join(chunks).decode(errors="replace")


def _run_piped(spec: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _BUILD, spec], capture_output=True, text=True, env=env,
                          timeout=600, check=False)


# --- 1. warnings without logging set-up ---------------------------------------------------------------

_WARN = """
import logging, sys
{setup}
import cpp_extension_tools
logging.getLogger("cpp_extension_tools").warning("probe warning %d", 7)
logging.getLogger("cpp_extension_tools").info("probe info")
"""


def test_a_warning_reaches_stderr_without_logging_set_up() -> None:
    result = run_python(_WARN.format(setup=""))
    assert result.stderr.count("probe warning 7") == 1, result.stderr
    assert "probe info" not in result.stderr


def test_a_warning_goes_to_the_application_handler_once(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    setup = f"logging.basicConfig(filename={str(log)!r}, format='APP %(message)s')"
    result = run_python(_WARN.format(setup=setup))
    assert "probe warning" not in result.stderr, result.stderr
    assert log.read_text().splitlines() == ["APP probe warning 7"]


def test_verbose_output_and_warnings_show_once(tmp_path: Path, compilers: CompilerLog) -> None:
    code = _BUILD.replace("build_directory=spec[\"root\"]", "build_directory=spec[\"root\"], verbose=True")
    code += "\nimport logging; logging.getLogger('cpp_extension_tools').warning('probe warning after')\n"
    result = subprocess.run([sys.executable, "-c", code, _spec(tmp_path)], capture_output=True, text=True,
                            check=True, env=dict(os.environ, **compilers.env), timeout=600)
    assert f"[cpp_extension_tools] building {NAME}" in result.stderr, result.stderr
    assert result.stderr.count("probe warning after") == 1
    assert "\r" not in result.stderr  # auto: no progress display beside verbose output


# --- 2. progress ---------------------------------------------------------------------------------------

def test_a_slow_build_shows_live_progress_on_a_terminal(tmp_path: Path, compilers: CompilerLog) -> None:
    spec = _spec(tmp_path)
    status, stdout, terminal = _run_in_terminal(spec, _slow_env(compilers))
    assert status == 0, terminal
    assert last_json(stdout) == {"a": 1, "pid": last_json(stdout)["pid"]}  # type: ignore[index]
    log = re.search(rf"cpp_extension_tools: building {NAME} \(3 sources\), log: (\S+build\.log)", terminal)
    assert log is not None, repr(terminal)
    assert Path(log[1]).is_file()
    assert re.search(r"\r  \[\d/4\] \d+\.\d s", terminal), repr(terminal)  # 3 compiles and the link
    assert "\r" in terminal
    assert re.search(rf"\rcpp_extension_tools: built {NAME} in \d+\.\d s *\r?\n", terminal), repr(terminal)
    # A cache hit, in a fresh process: nothing at all.
    status, stdout, terminal = _run_in_terminal(spec, _slow_env(compilers))
    assert status == 0 and terminal == "", repr(terminal)


def test_a_slow_build_with_stderr_a_pipe_writes_two_plain_lines(tmp_path: Path, compilers: CompilerLog) -> None:
    spec = _spec(tmp_path)
    result = _run_piped(spec, _slow_env(compilers))
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 2, result.stderr
    assert re.fullmatch(rf"cpp_extension_tools: building {NAME} \(3 sources\), log: \S+/build\.log", lines[0])
    assert re.fullmatch(rf"cpp_extension_tools: built {NAME} in \d+\.\d s", lines[1])
    assert _run_piped(spec, _slow_env(compilers)).stderr == ""  # a cache hit


def test_progress_off(tmp_path: Path, compilers: CompilerLog) -> None:
    status, _, terminal = _run_in_terminal(_spec(tmp_path),
                                           _slow_env(compilers, CACHED_CPP_EXTENSION_PROGRESS="0"))
    assert status == 0 and terminal == "", repr(terminal)


def test_a_process_waiting_for_another_build_says_for_whom(tmp_path: Path, compilers: CompilerLog) -> None:
    spec = _spec(tmp_path)
    env = dict(_slow_env(compilers), COMPILE_DELAY="1.5")
    processes = [subprocess.Popen([sys.executable, "-c", _BUILD, spec], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in processes]
    assert all(p.returncode == 0 for p in processes), outputs
    pids = [p.pid for p in processes]
    builders = [i for i, (_, err) in enumerate(outputs) if f"built {NAME} in" in err]
    assert len(builders) == 1, outputs
    waiter = outputs[1 - builders[0]][1]
    assert re.search(rf"cpp_extension_tools: waiting for the build lock of '{NAME}' \(\S+\), held by pid "
                     rf"{pids[builders[0]]} on host \S+ since [\d-]+ [\d:]+ \(\d s so far\)", waiter), waiter
    assert re.search(rf"cpp_extension_tools: waited \d+\.\d s for the build lock of '{NAME}'", waiter), waiter


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_display_with_a_fake_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(_progress, "clock", lambda: now[0])
    quick, slow, terminal = io.StringIO(), io.StringIO(), _Terminal()
    fast = _progress.BuildProgress("m", 2, "/log", quick)
    displays = [_progress.BuildProgress("m", 2, "/log", slow), _progress.BuildProgress("m", 1, "/log", terminal)]
    for step in range(1, 4):
        now[0] += 0.5
        for display in (fast, *displays):
            display.feed(f"[{step}/3] cc -c x.c")
    fast.end(True)
    assert quick.getvalue() == ""  # 1.5 s: nothing
    now[0] += 1.0
    for display in displays:
        display.tick()
        display.end(False)
    assert slow.getvalue() == ("cpp_extension_tools: building m (2 sources), log: /log\n"
                               "cpp_extension_tools: building m failed after 2.5 s\n")
    assert terminal.getvalue() == ("cpp_extension_tools: building m (1 source), log: /log\n"
                                   "\r  [3/3] 2.5 s\rcpp_extension_tools: building m failed after 2.5 s\n")


# --- 3. errors that say the cause first ---------------------------------------------------------------

_FAIL = """
import json, sys
import cpp_extension_tools as c
spec = json.loads(sys.argv[1])
try:
    c.cached_load_torch_cpp_extension(spec["name"], spec["sources"], build_directory=spec["root"],
                                      extra_ldflags=spec.get("ldflags", []))
except c.BuildError as e:
    print(json.dumps({"message": str(e), "command": e.command}))
"""


def _failure(tmp_path: Path, name: str, files: dict[str, str], ldflags: tuple[str, ...] = ()) -> dict[str, str]:
    folder = tmp_path / "src"
    folder.mkdir(exist_ok=True)
    for file, text in files.items():
        (folder / file).write_text(textwrap.dedent(text))
    spec = {"name": name, "sources": [str(folder / f) for f in files], "root": str(tmp_path / "cache"),
            "ldflags": list(ldflags)}
    result = subprocess.run([sys.executable, "-c", _FAIL, json.dumps(spec)], capture_output=True, text=True,
                            check=True, timeout=600)
    report = last_json(result.stdout)
    assert isinstance(report, dict), result.stdout
    message = report["message"]
    assert message.count("Error building extension") == 1, message
    for internal in ("RuntimeError", "CalledProcessError", "Traceback", 'File "', "ninja: build stopped"):
        assert internal not in message, message
    return report


_INIT = """\
#include <Python.h>
static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, .m_name = "two_inits", .m_size = -1};
PyMODINIT_FUNC PyInit_two_inits(void) { return PyModule_Create(&def); }
"""


def test_two_init_functions_say_multiple_definition(tmp_path: Path) -> None:
    report = _failure(tmp_path, "two_inits", {"capi.c": _INIT, "other.c": _INIT})
    head = report["message"].splitlines()[:4]
    assert head[0] == "Error building extension 'two_inits': linking two_inits.so failed (ninja exit status 1)"
    assert any("multiple definition of" in line and "PyInit_two_inits" in line for line in head), head
    assert "two_inits.so" in report["command"] and "capi.o" in report["command"], report


def test_an_undefined_function_says_undefined_reference(tmp_path: Path) -> None:
    source = "int foo(void);\nvoid *PyInit_undef_ext(void) { return (void *)(long)foo(); }\n"
    report = _failure(tmp_path, "undef_ext", {"undef.c": source}, ldflags=("-Wl,--no-undefined",))
    head = report["message"].splitlines()[:3]
    assert any("undefined reference to" in line and "foo" in line for line in head), head
    assert "-Wl,--no-undefined" in report["command"]


def test_a_compile_error_shows_the_compiler_line_first(tmp_path: Path) -> None:
    source = "#include <Python.h>\nint broken(void) { return undeclared_symbol; }\n"
    report = _failure(tmp_path, "compile_ext", {"broken.c": source})
    lines = report["message"].splitlines()
    broken = tmp_path / "src" / "broken.c"
    assert lines[0] == f"Error building extension 'compile_ext': compiling {broken} failed (ninja exit status 1)"
    assert lines[1].startswith(f"{broken}:2:") and "error:" in lines[1] and "undeclared_symbol" in lines[1]
    assert f"-c {broken}" in report["command"]


def test_a_binary_without_its_init_function_says_which_one_is_missing(tmp_path: Path) -> None:
    report = _failure(tmp_path, "no_init_ext", {"other.c": _INIT})  # defines PyInit_two_inits only
    first = report["message"].splitlines()[0]
    assert "it does not define PyInit_no_init_ext" in first and "PYBIND11_MODULE" in first, first


# --- 4. issue 17: the ABI warning torch's load() gives, and the message of a library without PyInit_ ----------

def test_the_abi_rules_are_torchs() -> None:
    from cpp_extension_tools._build.abi import abi_warning

    assert abi_warning("c++ (Debian 12.2.0-14+deb12u1) 12.2.0", "2.13.0+cpu") is None
    assert abi_warning("Ubuntu clang version 18.1.3 (1ubuntu1)", "2.13.0") is None
    old = abi_warning("g++ (GCC) 4.9.2", "2.13.0")
    assert old is not None and "older than GCC 5" in old and "4.9.2" in old
    other = abi_warning("icpx 2024.1", "2.13.0")
    assert other is not None and "neither gcc nor clang" in other and "TORCH_DONT_CHECK_COMPILER_ABI" in other
    assert abi_warning("g++ (GCC) 4.9.2", "2.6.0a0+git1234abc") is None  # torch built from source: its compiler


def test_an_abi_incompatible_compiler_is_warned_once_per_build_never_on_a_hit(tmp_path: Path) -> None:
    real = CompilerLog(tmp_path)  # the real gcc behind a wrapper that claims an old version
    fake = tmp_path / "old-cxx"
    fake.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        if [ "$1" = "--version" ]; then echo "g++ (GCC) 4.9.2"; exit 0; fi
        exec "{real.cxx}" "$@"
        """))
    fake.chmod(0o755)
    env = dict(os.environ, CC=real.cc, CXX=str(fake))
    spec = _spec(tmp_path)
    first = _run_piped(spec, env)
    assert first.returncode == 0, first.stderr
    assert first.stderr.count("may be ABI-incompatible with torch") == 1, first.stderr
    assert "4.9.2" in first.stderr
    hit = _run_piped(spec, env)
    assert hit.returncode == 0 and hit.stderr == "", hit.stderr


def test_a_library_without_pyinit_says_to_pass_is_python_module_false(tmp_path: Path) -> None:
    report = _failure(tmp_path, "ops_lib", {"ops.c": "int registered_op(void) { return 1; }\n"})
    first = report["message"].splitlines()[0]
    assert "it does not define PyInit_ops_lib" in first and "is_python_module=False" in first, first
    assert "Nothing was published" in first
    assert not list((tmp_path / "cache" / "ops_lib").glob("artifacts/*/manifest.json"))
