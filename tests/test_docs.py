"""The documentation (docs/*.md) cannot drift from the code.

- Every ```python block runs, each in a fresh interpreter; every shell block (```bash, ```sh, ```console)
  runs here too, unless all its commands are in CI_COVERED, which names the test or CI step that runs
  each of them (and the text there that shows it does).
- Quoted error messages (```text blocks marked message-from) must be printable by the source they
  name: each is matched against the f-strings and %-format strings of those files.
- The reference pages list every setting, command, option and public name the code has.

Markdown conventions: HTML comments (invisible in the rendered pages) right above a fenced block.

    <!-- docs-test: file=PATH -->           the block is the content of PATH, written into the page's
                                            working folder for the blocks after it (a package, a setup.py,
                                            a C file); it runs when a later block imports or builds it
    <!-- docs-test: setup=NAME -->          write the fixture files SETUPS[NAME] first
    <!-- docs-test: message-from=FILES -->  a ```text block quoting a message FILES print (comma-separated;
                                            paths in the repository, or torch:PATH inside torch)
    <!-- docs-test: skip reason="..." -->   not run here; only for what cannot run on this machine
                                            (a GPU), and the reason is required

Each page runs in a working folder of its own, its blocks in order. All pages share one cache root,
$HOME/.cache/cpp_extension_tools with HOME a temporary folder (the root the multiprocessing page sets),
so example_package is built once for the whole module.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import inspect
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cpp_extension_tools import _settings, cached_load_torch_cpp_extension, setuptools_build
from cpp_extension_tools._cli import main as _cli
from tests.conftest import REPO

DOCS = REPO / "docs"
PAGES = sorted(DOCS.glob("*.md"))

PYTHON_LANGUAGES = {"python"}
SHELL_LANGUAGES = {"bash", "sh", "console"}
INERT_LANGUAGES = {"text", "c", "cpp", "cuda", "json", "toml"}  # shown, never run (unless file=)

# Commands shown in the docs that this module does not run, with where they are run instead: a file in
# the repository and a piece of its text that shows it. Every entry must be shown somewhere in the docs.
CI_COVERED: dict[str, tuple[str, str]] = {
    # CI (.ci/run) runs the test entry point, which runs ruff, mypy, the docs build and every test.
    "./dev.sh test": (".ci/run", "./dev.sh test"),
    # The same build_docs function; test_dev_sh_builds_the_docs_in_the_test_entry_point checks the call.
    "./dev.sh docs": ("dev.sh", "build_docs"),
    # Installing this checkout with pip, as a user would (into a target folder, not the test's venv).
    "pip install --no-build-isolation .": ("tests/test_processes.py", '"--no-build-isolation", "--target"'),
    # The compiler launcher with ccache and its own storage (skipped where ccache is missing; ./dev.sh test
    # installs it as root).
    "export CACHED_CPP_EXTENSION_COMPILER_LAUNCHER=ccache": ("tests/test_compiler_launcher.py",
                                                            'monkeypatch.setenv(LAUNCHER, "ccache")'),
    "export CCACHE_DIR=/shared/ccache": ("tests/test_compiler_launcher.py", 'monkeypatch.setenv("CCACHE_DIR"'),
    # The benchmark suite: the full run takes 15 minutes; the test suite runs the same entry point --quick.
    ".venv/bin/python -m bench": ("tests/test_bench.py", '"-m", "bench", "--quick"'),
    ".venv/bin/python -m bench --quick --out /tmp/bench-quick": ("tests/test_bench.py",
                                                                 '"-m", "bench", "--quick", "--out"'),
    # The kernel comparison's functions run inside python -m bench --quick (tests/test_bench.py).
    ".venv/bin/python bench/example_kernels.py": ("bench/_scenarios.py", "from bench import example_kernels"),
}

# Files the pages' blocks need that are not shown where they are used (see the setup= directive).
_MY_EXT_C = """\
#include <Python.h>
#define CONCAT_(a, b) a##b
#define CONCAT(a, b) CONCAT_(a, b)
#define STRINGIFY_(x) #x
#define STRINGIFY(x) STRINGIFY_(x)
static PyObject *answer(PyObject *self, PyObject *unused) { (void)self; (void)unused; return PyLong_FromLong(42); }
static PyMethodDef methods[] = {{"answer", answer, METH_NOARGS, NULL}, {NULL, NULL, 0, NULL}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, .m_name = STRINGIFY(TORCH_EXTENSION_NAME),
                                    .m_size = 0, .m_methods = methods};
PyMODINIT_FUNC CONCAT(PyInit_, TORCH_EXTENSION_NAME)(void) { return PyModuleDef_Init(&module); }
"""
SETUPS: dict[str, dict[str, str]] = {
    "my-ext-c": {"my_ext.c": _MY_EXT_C},  # the module of getting-started.md, in the working folder
    "my-package-sources": {"my_package/csrc/my_ext.c": _MY_EXT_C},  # the same, inside my_package
}

# Environment variables the library reads that the configuration page need not list.
NOT_SETTINGS = {"PATH": "the ordinary program search path",
                "TORCH_EXTENSIONS_DIR": "torch's own setting, read by the patch_torch() drop-ins as torch reads it"}

_DIRECTIVE = re.compile(r"^<!-- docs-test: (?P<body>.*) -->$")
_FENCE = re.compile(r"^(?P<fence>`{3,})(?P<info>.*)$")


# -- parsing the pages ---------------------------------------------------------

@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    language: str
    text: str
    directives: dict[str, str] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def _parse_directive(body: str, where: str) -> dict[str, str]:
    words = shlex.split(body)
    if not words:
        raise AssertionError(f"{where}: empty docs-test directive")
    result = {}
    for word in words:
        key, sep, value = word.partition("=")
        if key not in ("file", "setup", "message-from", "skip", "reason"):
            raise AssertionError(f"{where}: unknown docs-test directive {key!r}")
        if key != "skip" and not sep:
            raise AssertionError(f"{where}: {key} needs a value ({key}=...)")
        result[key] = value
    return result


def parse_blocks(page: Path) -> list[Block]:
    """The fenced blocks of ``page``, in order, with the docs-test directives right above each."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    pending: dict[str, str] = {}
    pending_line = 0
    index = 0
    while index < len(lines):
        line = lines[index]
        directive = _DIRECTIVE.match(line)
        if directive:
            where = f"{page.relative_to(REPO)}:{index + 1}"
            for key, value in _parse_directive(directive["body"], where).items():
                if key in pending:
                    raise AssertionError(f"{where}: {key} given twice for one block")
                pending[key] = value
            pending_line = pending_line or index + 1
            index += 1
            continue
        if line.startswith("<!--") and "docs-test" in line:
            raise AssertionError(f"{page.relative_to(REPO)}:{index + 1}: malformed docs-test directive "
                                 "(expected <!-- docs-test: KEY=VALUE ... --> on one line)")
        fence = _FENCE.match(line)
        if fence:
            end = index + 1
            while end < len(lines) and not (lines[end].startswith(fence["fence"]) and not lines[end].strip("`")):
                end += 1
            if end == len(lines):
                raise AssertionError(f"{page.relative_to(REPO)}:{index + 1}: unclosed code block")
            blocks.append(Block(page, index + 1, fence["info"].strip(), "\n".join(lines[index + 1:end]) + "\n",
                                pending))
            pending, pending_line = {}, 0
            index = end + 1
            continue
        if pending:
            raise AssertionError(f"{page.relative_to(REPO)}:{pending_line}: a docs-test directive must be "
                                 "right above the code block it is for")
        index += 1
    if pending:
        raise AssertionError(f"{page.relative_to(REPO)}:{pending_line}: a docs-test directive without a block")
    return blocks


def all_blocks() -> list[Block]:
    return [block for page in PAGES for block in parse_blocks(page)]


def shell_commands(block: Block) -> list[str]:
    """The commands of a shell block, each normalized (continuations joined, comments dropped)."""
    lines = block.text.splitlines()
    if block.language == "console":  # "$ command" lines; the others are output
        lines = [line[2:] for line in lines if line.startswith("$ ")]
    joined: list[str] = []
    carry = ""
    for line in lines:
        if line.rstrip().endswith("\\"):
            carry += line.rstrip()[:-1] + " "
            continue
        joined.append(carry + line)
        carry = ""
    commands = []
    for line in joined:
        words = shlex.split(line, comments=True)
        if words:
            commands.append(" ".join(words))
    return commands


def is_ci_covered(block: Block) -> bool:
    covered = [command in CI_COVERED for command in shell_commands(block)]
    if any(covered) and not all(covered):
        raise AssertionError(f"{block.where}: a shell block either runs here or is covered by CI as a whole; "
                             "put the commands listed in CI_COVERED in a block of their own")
    return all(covered)


# -- static checks (fast) --------------------------------------------------------

def test_every_block_has_a_known_kind_and_valid_directives() -> None:
    blocks = all_blocks()
    assert blocks, "no code blocks found in docs/"
    for block in blocks:
        language = block.language
        if language.startswith("{"):  # a MyST directive (toctree, literalinclude, include, eval-rst)
            assert not block.directives, f"{block.where}: docs-test directives apply to code blocks only"
            continue
        known = PYTHON_LANGUAGES | SHELL_LANGUAGES | INERT_LANGUAGES
        assert language in known, (f"{block.where}: code block language {language!r} is not one this test "
                                   f"knows how to check ({', '.join(sorted(known))})")
        d = block.directives
        if "skip" in d:
            assert d.get("reason", "").strip(), f"{block.where}: skip needs reason=\"...\""
        assert "reason" not in d or "skip" in d, f"{block.where}: reason= belongs to skip"
        if "file" in d:
            path = Path(d["file"])
            assert d["file"] and not path.is_absolute() and ".." not in path.parts, f"{block.where}: bad file path"
            assert language not in SHELL_LANGUAGES, f"{block.where}: a file= block cannot be a shell block"
        if "setup" in d:
            assert d["setup"] in SETUPS, f"{block.where}: unknown setup {d['setup']!r} (known: {sorted(SETUPS)})"
        if "message-from" in d:
            assert language == "text", f"{block.where}: message-from is for ```text blocks"
        if language in INERT_LANGUAGES and language != "text":
            assert "file" in d, f"{block.where}: a ```{language} block must be a file= block (or literalinclude)"


def test_every_shell_command_runs_here_or_in_ci() -> None:
    shown: set[str] = set()
    for block in all_blocks():
        if block.language in SHELL_LANGUAGES:
            commands = shell_commands(block)
            assert commands, f"{block.where}: a shell block without commands"
            shown.update(commands)
            is_ci_covered(block)  # raises for a block that mixes both kinds
    stale = sorted(set(CI_COVERED) - shown)
    assert not stale, f"CI_COVERED lists commands the docs no longer show: {stale}"
    for command, (path, evidence) in CI_COVERED.items():
        text = (REPO / path).read_text(encoding="utf-8")
        assert evidence in text, f"{command!r}: {path} no longer contains {evidence!r}"


def test_dev_sh_builds_the_docs_in_the_test_entry_point() -> None:
    text = (REPO / "dev.sh").read_text(encoding="utf-8")
    cases = dict(re.findall(r"^(\w+)\)\n(.*?)^    ;;", text, re.MULTILINE | re.DOTALL))
    assert "build_docs" in cases["docs"] and "build_docs" in cases["test"], "dev.sh: docs and test must build the docs"
    assert "-W" in text and "sphinx" in text
    assert "./dev.sh test" in (REPO / ".ci" / "run").read_text(encoding="utf-8")


# Quoted messages: each ```text block marked message-from must be produced by a format string of the files
# it names. Variable parts of a format string match anything; a variable part that is long text (over 40
# characters, with spaces) must itself be a message of those files, so nested messages are checked too.
_WILDCARD = "(.*?)"
_PERCENT = re.compile(r"%[-+ #0]*\d*(?:\.\d+)?[sdrfi]")


def _literal(text: str) -> str:
    return re.escape(re.sub(r"\s+", " ", text)).replace("\\ ", " ")  # spaces unescaped: the pattern is stripped


def _templates(source: str) -> list[re.Pattern[str]]:
    patterns = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.JoinedStr):
            parts = [_literal(v.value) if isinstance(v, ast.Constant) and isinstance(v.value, str) else _WILDCARD
                     for v in node.values]
            literal_size = sum(len(v.value) for v in node.values if isinstance(v, ast.Constant))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            pieces = _PERCENT.split(node.value)
            parts = [p for piece in pieces for p in (_literal(piece.replace("%%", "%")), _WILDCARD)][:-1]
            literal_size = sum(len(piece) for piece in pieces)
        else:
            continue
        if literal_size >= 12:
            patterns.append(re.compile("".join(parts).strip()))
    return patterns


def _source_of(reference: str) -> str:
    if reference.startswith("torch:"):
        spec = importlib.util.find_spec("torch")
        assert spec is not None and spec.origin is not None
        return (Path(spec.origin).parent / reference.removeprefix("torch:")).read_text(encoding="utf-8")
    return (REPO / reference).read_text(encoding="utf-8")


def _is_message(text: str, templates: list[re.Pattern[str]], depth: int = 0) -> bool:
    for template in templates:
        match = template.fullmatch(text)
        if match is None:
            continue
        if all(len(g) <= 40 or " " not in g or (depth < 4 and _is_message(g, templates, depth + 1))
               for g in match.groups()):
            return True
    return False


def test_quoted_messages_are_the_ones_the_code_prints() -> None:
    checked = 0
    for block in all_blocks():
        if "message-from" not in block.directives:
            continue
        templates = [t for ref in block.directives["message-from"].split(",") for t in _templates(_source_of(ref))]
        text = re.sub(r"\s+", " ", block.text).strip()
        assert _is_message(text, templates), (f"{block.where}: this message is not one that "
                                              f"{block.directives['message-from']} prints:\n{text}")
        checked += 1
    assert checked >= 10


def test_quoted_message_check_rejects_a_changed_message() -> None:
    templates = _templates(_source_of("cpp_extension_tools/_cache/lock.py"))
    good = ("waiting for the build lock of 'm' (<root>/m), held by pid 1 on host h since 2026-01-01 00:00:00 "
            "(10 s so far)")
    assert _is_message(good, templates)
    assert not _is_message(good.replace("held by", "owned by"), templates)
    assert not _is_message(good.replace("pid 1 on host h", "process 1 on machine h"), templates)


def _code_spans(page: str) -> set[str]:
    return set(re.findall(r"`([^`\n]+)`", (DOCS / page).read_text(encoding="utf-8")))


def _environment_variables_read() -> set[str]:
    pattern = re.compile(r'os\.environ(?:\.get)?[\[(]"([A-Z0-9_]+)"|_ENV = "([A-Z0-9_]+)"|'
                         r'resolve_compiler\("([A-Z]+)"|\b((?:CACHED_CPP_EXTENSION|CPP_EXTENSION_TOOLS|'
                         r'EXAMPLE_PACKAGE)_[A-Z_]+)')
    from cpp_extension_tools._key import COMPILER_VARIABLES, CUDA_COMPILER_VARIABLES

    found = set(COMPILER_VARIABLES + CUDA_COMPILER_VARIABLES)  # read by the compilers, and in the key
    for path in [*(REPO / "cpp_extension_tools").rglob("*.py"), *(REPO / "example_package").glob("*.py")]:
        for groups in pattern.findall(path.read_text(encoding="utf-8")):
            found.update(g for g in groups if g)
    return found - set(NOT_SETTINGS)


def test_configuration_page_lists_every_setting() -> None:
    spans = _code_spans("configuration.md")
    variables = _environment_variables_read()
    assert "CACHED_CPP_EXTENSION_BUILD_DIR" in variables and "CC" in variables  # the scan works
    arguments = set(inspect.signature(cached_load_torch_cpp_extension).parameters)
    fields = {f.name for f in dataclasses.fields(setuptools_build.PrebuiltExtension)}
    missing = sorted(v for v in variables | arguments if v not in spans)
    # PrebuiltExtension rows may name two fields at once ("`sources`, `include_paths`").
    missing += sorted(f for f in fields if f not in spans)
    assert not missing, f"docs/configuration.md does not list: {missing}"


def _registry_row(setting: _settings.Setting[Any]) -> str:
    return f"| `{setting.name}` | {setting.default_text} | {setting.doc} |"


def test_configuration_table_is_the_settings_registry() -> None:
    """The environment rows of the table are _settings.SETTINGS, in order: name, default text and doc line."""
    own = re.compile(r"^\| `(CACHED_CPP_EXTENSION_|CPP_EXTENSION_TOOLS_)[A-Z_]+` \|")
    rows = [line for line in (DOCS / "configuration.md").read_text(encoding="utf-8").splitlines()
            if own.match(line)]
    expected = [_registry_row(setting) for setting in _settings.SETTINGS]
    assert rows == expected, ("docs/configuration.md's rows of the library's variables differ from "
                              "cpp_extension_tools/_settings.py; the rows should read:\n" + "\n".join(expected))


def test_cli_page_lists_every_command_and_option() -> None:
    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    parser = _cli.build_parser()
    subparsers = next(a for a in parser._actions if a.choices and isinstance(a.choices, dict))
    missing = []
    for name, sub in subparsers.choices.items():
        if f"`{name}" not in text:
            missing.append(name)
        for action in sub._actions:
            missing += [f"{name} {o}" for o in action.option_strings
                        if o.startswith("--") and o != "--help" and o not in text]
    assert not missing, f"docs/cli.md does not describe: {missing}"


def test_api_page_documents_every_public_name() -> None:
    import cpp_extension_tools

    text = (DOCS / "api.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\.\. (?:auto\w+|py:data):: (\w+)", text, re.MULTILINE))
    public = set(cpp_extension_tools.__all__) | set(setuptools_build.__all__)
    assert not sorted(public - documented), f"docs/api.md does not document: {sorted(public - documented)}"


def test_readme_links_to_the_docs() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "](docs/" in readme and "./dev.sh docs" in readme


# The architecture page names the code in code spans: a module by its dotted path in the package
# (`_cache.store`, the file cpp_extension_tools/_cache/store.py), a function, class or method after it
# (`_cache.store.ModuleStore.find`), a file or folder of the package (`_build/worker.py`, `_env/`) or of
# the repository (`bench/warm_path.py`), a test as `tests/test_x.py::test_name`. Each must exist.
PACKAGE = REPO / "cpp_extension_tools"
_IN_PACKAGE = re.compile(r"_[a-z]\w*(?:\.\w+)*")
_PACKAGE_PATH = re.compile(r"_[a-z]\w*/(?:[\w/]+\.py)?")
_REPO_PATH = re.compile(r"(?:cpp_extension_tools|bench|tests|docs)/[\w/.-]+")
_TEST = re.compile(r"(tests/test_\w+\.py)::(test_\w+)")


def _members(body: list[ast.stmt]) -> dict[str, ast.stmt]:
    """The functions, classes and assigned names a module or class body defines."""
    found: dict[str, ast.stmt] = {}
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found[node.name] = node
        elif isinstance(node, ast.Assign):
            found.update((t.id, node) for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            found[node.target.id] = node
    return found


def _missing_in_package(dotted: str) -> str | None:
    """Why ``dotted`` (a module of the package, then names inside it) names nothing; None when it exists."""
    parts = dotted.split(".")
    for size in range(len(parts), 0, -1):
        base = PACKAGE.joinpath(*parts[:size])
        path = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
        if path.is_file():
            break
    else:
        return f"no module cpp_extension_tools.{parts[0]}"
    body: list[ast.stmt] = ast.parse(path.read_text(encoding="utf-8")).body
    for name in parts[size:]:
        node = _members(body).get(name)
        if node is None:
            return f"{path.relative_to(REPO)} defines no {name!r} (looking for {dotted})"
        body = node.body if isinstance(node, ast.ClassDef) else []
    return None


def _missing_test(path: str, name: str) -> str | None:
    file = REPO / path
    if not file.is_file():
        return f"no file {path}"
    defined = {node.name for node in ast.walk(ast.parse(file.read_text(encoding="utf-8")))
               if isinstance(node, ast.FunctionDef)}
    return None if name in defined else f"{path} has no test {name}"


def _reference(span: str) -> tuple[str, str | None] | None:
    """(the kind of reference ``span`` is, why it names nothing or None), or None for other code spans."""
    test = _TEST.fullmatch(span)
    if test:
        return "test", _missing_test(test[1], test[2])
    if _IN_PACKAGE.fullmatch(span):
        return "code", _missing_in_package(span)
    if _PACKAGE_PATH.fullmatch(span):
        return "code", None if (PACKAGE / span).exists() else f"no {span} in cpp_extension_tools/"
    if _REPO_PATH.fullmatch(span):
        return "file", None if (REPO / span).exists() else f"no {span} in the repository"
    return None


def test_architecture_page_names_only_modules_functions_and_tests_that_exist() -> None:
    references = [(span, found) for span in sorted(_code_spans("architecture.md"))
                  if (found := _reference(span)) is not None]
    kinds = [kind for _, (kind, _) in references]
    assert kinds.count("code") >= 80 and kinds.count("test") >= 30, "the check finds the names it is for"
    missing = [f"`{span}`: {why}" for span, (_, why) in references if why is not None]
    assert not missing, "docs/architecture.md names what does not exist:\n" + "\n".join(missing)


def test_architecture_reference_check_rejects_what_does_not_exist() -> None:
    assert _reference("_api.load_request") == ("code", None)
    assert _reference("_api._BinaryChanged") == ("code", None)
    assert _reference("tests/test_docs.py::test_readme_links_to_the_docs") == ("test", None)
    for span in ("_api.no_such_function", "_api._BinaryChanged.no_such_method", "_no_such_module",
                 "_no_such_package/", "tests/test_docs.py::test_no_such_test", "tests/test_none.py::test_x",
                 "bench/no_such_file.py"):
        found = _reference(span)
        assert found is not None and found[1] is not None, span
    assert _reference("-march=native") is None and _reference("/proc/self/fd") is None


# -- running the pages ---------------------------------------------------------------

@pytest.fixture(scope="module")
def docs_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("docs-home")


def _environment(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CACHED_CPP_EXTENSION_", "CCACHE_")) and k not in ("CC", "CXX", "VIRTUAL_ENV")}
    env.update(HOME=str(home), CACHED_CPP_EXTENSION_BUILD_DIR=str(home / ".cache" / "cpp_extension_tools"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               PATH=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]),
               PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INDEX="1")
    return env


def _run(block: Block, command: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.monotonic()
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise AssertionError(f"{block.where}: the {block.language} block failed (exit status {result.returncode})"
                             f"\n--- block ---\n{block.text}--- stdout ---\n{result.stdout[-4000:]}"
                             f"--- stderr ---\n{result.stderr[-6000:]}")
    return time.monotonic() - started


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_page_blocks_run(page: Path, docs_home: Path, tmp_path: Path) -> None:
    env = _environment(docs_home)
    workdir = tmp_path / page.stem
    workdir.mkdir()
    for block in parse_blocks(page):
        d = block.directives
        for relative, content in SETUPS.get(d.get("setup", ""), {}).items():
            (workdir / relative).parent.mkdir(parents=True, exist_ok=True)
            (workdir / relative).write_text(content)
        if "skip" in d:
            continue
        if "file" in d:
            target = workdir / d["file"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(block.text)
            if block.language == "python":
                compile(block.text, block.where, "exec")  # at least valid; it runs when a later block uses it
            continue
        if block.language == "python":
            script = workdir / f"_docs_block_{block.line}.py"
            script.write_text(block.text)
            _run(block, [sys.executable, script.name], workdir, env)
        elif block.language in SHELL_LANGUAGES and not is_ci_covered(block):
            script_text = "\n".join(shell_commands(block)) if block.language == "console" else block.text
            _run(block, ["bash", "-euo", "pipefail", "-c", script_text], workdir, env)
