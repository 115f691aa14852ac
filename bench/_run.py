"""Fresh processes that load a module with one tool, and compilers that log what they did and how long.

Compile counts come from the logging compilers, never from either tool's own output.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

__all__ = ["CompilerLog", "Workspace"]

REPO_ROOT = Path(__file__).resolve().parent.parent
TOOLS = ("ours", "torch")

# Run as a file (spawn workers re-import the main module, which `python -c` code cannot offer).
# Only sys, json and time are imported before the timer starts, besides torch: a process that loads
# a torch extension has imported torch.
CHILD = r'''
import json, sys, time
import torch


def load(spec):
    start = time.perf_counter()
    if spec["tool"] == "ours":
        import cpp_extension_tools
        imported = time.perf_counter()
        module = cpp_extension_tools.cached_load_torch_cpp_extension(
            spec["name"], spec["sources"], extra_include_paths=spec["includes"],
            extra_cflags=spec.get("cflags"), build_directory=spec["build_directory"])
    else:
        import os
        import torch.utils.cpp_extension
        imported = time.perf_counter()
        os.makedirs(spec["build_directory"], exist_ok=True)
        module = torch.utils.cpp_extension.load(
            spec["name"], spec["sources"], extra_include_paths=spec["includes"],
            extra_cflags=spec.get("cflags"), build_directory=spec["build_directory"])
    end = time.perf_counter()
    got = {name: getattr(module, name)() for name in spec["expected"]}
    if got != spec["expected"]:
        raise SystemExit(f"{spec['tool']}: the module returned {got}, expected {spec['expected']}")
    return {"total_s": end - start, "call_s": end - imported}


def fan_out(spec):
    import multiprocessing
    context = multiprocessing.get_context("spawn")
    start = time.perf_counter()
    with context.Pool(spec["workers"]) as pool:
        results = pool.map(load, [spec] * spec["workers"])
    return {"wall_s": time.perf_counter() - start, "workers": results}


if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    print(json.dumps(fan_out(spec) if spec.get("workers") else load(spec)))
'''

WRAPPER = """#!/bin/sh
start=$(date +%s%N)
"{real}" "$@"
status=$?
printf '%s %s %s\\n' "$start" "$(date +%s%N)" "$*" >> "{log}"
exit $status
"""


class CompilerLog:
    """CC/CXX wrappers that append `start_ns end_ns arguments` for every call."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.log = folder / "calls.log"
        self.env = {"CC": self._wrapper(folder / "cc", shutil.which("gcc") or "cc"),
                    "CXX": self._wrapper(folder / "cxx", shutil.which("g++") or "c++")}

    def _wrapper(self, path: Path, real: str) -> str:
        path.write_text(WRAPPER.format(real=real, log=self.log))
        path.chmod(0o755)
        return str(path)

    def reset(self) -> None:
        self.log.unlink(missing_ok=True)

    def _calls(self) -> list[tuple[float, list[str]]]:
        if not self.log.exists():
            return []
        calls = []
        for line in self.log.read_text().splitlines():
            start, end, *words = line.split(" ")
            calls.append(((int(end) - int(start)) / 1e9, words))
        return calls

    def compiles(self) -> list[tuple[str, float]]:
        """(source file name, seconds) per compile."""
        return [(Path(words[words.index("-c") + 1]).name, seconds) for seconds, words in self._calls()
                if "-c" in words]

    def links(self) -> list[float]:
        return [seconds for seconds, words in self._calls() if "-shared" in words and "-c" not in words]


class Workspace:
    """A scratch folder with the child script, the logging compilers and one cache folder per use."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.child = folder / "bench_child.py"
        self.child.write_text(CHILD)
        self.compilers = CompilerLog(folder / "compilers")
        self._caches = 0

    def new_cache(self, tool: str) -> str:
        self._caches += 1
        return str(self.folder / "caches" / f"{tool}-{self._caches}")

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        # Users have .pyc files; without them every process would compile the tools' Python again.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        # torch's load() puts ccache/sccache in front of the compiler when one is on PATH; the reference
        # would then be served compiled objects from earlier repetitions. Both tools compile for real.
        env["TORCH_NO_COMPILER_WRAPPER"] = "1"
        env.pop("CACHED_CPP_EXTENSION_COMPILER_LAUNCHER", None)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        env.update(self.compilers.env)
        env.update(extra or {})
        return env

    def run(self, spec: dict[str, Any], extra_env: dict[str, str] | None = None) -> dict[str, Any]:
        # torch's process gets a session of its own, as our build worker does: the kernel's autogroup
        # scheduler gives each session its own share of the CPUs, which would otherwise favour ours on a
        # loaded machine.
        completed = subprocess.run([sys.executable, str(self.child), json.dumps(spec)], cwd=self.folder,
                                   env=self.env(extra_env), capture_output=True, text=True, check=False,
                                   start_new_session=spec["tool"] == "torch")
        if completed.returncode != 0:
            raise RuntimeError(f"benchmark process failed ({completed.returncode}): {spec['tool']}\n"
                               f"{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}")
        result: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
        return result

    def run_python(self, code: str, extra_env: dict[str, str] | None = None) -> Any:
        """Run code in a fresh process; its last stdout line is JSON."""
        completed = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=self.folder,
                                   env=self.env(extra_env), capture_output=True, text=True, check=False)
        if completed.returncode != 0:
            raise RuntimeError(f"benchmark process failed ({completed.returncode}):\n{completed.stderr[-3000:]}")
        return json.loads(completed.stdout.strip().splitlines()[-1])


def spec(tool: str, files: Any, build_directory: str, **extra: Any) -> dict[str, Any]:
    return {"tool": tool, "name": f"bench_{tool}", "sources": files.sources, "includes": [str(files.folder)],
            "build_directory": build_directory, "expected": files.expected(), **extra}
