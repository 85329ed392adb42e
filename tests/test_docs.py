"""The documentation's code runs: every ```python block of docs/**/*.md and README.md.

Blocks of one page run in order in one namespace, as a reader would run them
(a later block may use a name an earlier one defined), with the page's own
temporary folder as the working directory. Each block is one test.

A block written for a backend other than the active one (``$D2LX_BACKEND``,
else torch) is skipped with a reason. A block's backends are the ones it
names: ``from d2lx import jax``, ``d2lx.use_backend("jax")``, ``import jax``
(or ``torch``, ``tensorflow``, ``mxnet``), the content tab it sits in
(``=== "JAX"``), an explicit marker comment ``# docs-test: backend=jax``, or
the page itself (``docs/backends/jax.md``). Blocks that name none are
backend-neutral and run everywhere.
``# docs-test: skip=<reason>`` skips a block that cannot run here. Shell
commands are ```bash blocks, not python, so they are not run; but every
``d2lx ...`` command line in them must parse with the real CLI parser.
"""

from __future__ import annotations

import os
import re
import shlex
import textwrap
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from d2lx import registry

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = [*sorted((ROOT / "docs").rglob("*.md")), ROOT / "README.md"]
KNOWN = ("torch", "jax", "tensorflow", "mxnet")

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)(?P<rest>.*)$")
_TAB = re.compile(r'^(?P<indent>[ \t]*)===\+?\s+"(?P<title>[^"]+)"')
_MARK_BACKEND = re.compile(r"#\s*docs-test:\s*backend\s*=\s*(\w+)")
_MARK_SKIP = re.compile(r"#\s*docs-test:\s*skip\s*=\s*(.+)")
_BACKEND_PATTERNS = [
    re.compile(r"from\s+d2lx\s+import\s+(\w+)"),
    re.compile(r"use_backend\(\s*['\"](\w+)['\"]"),
    re.compile(r"^\s*(?:import|from)\s+(torch|jax|tensorflow|mxnet)\b", re.M),
]


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    backends: set[str] = field(default_factory=set)
    skip: str | None = None

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def extract_blocks(path: Path) -> list[Block]:
    """Fenced code blocks of a Markdown file, dedented (blocks inside tabs are indented)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence, lang = match["indent"], match["fence"], match["lang"].lower()
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not (
            lines[j].strip().startswith(fence) and lines[j].strip().strip(fence[0]) == ""
        ):
            body.append(lines[j][len(indent):] if lines[j].startswith(indent) else lines[j].lstrip())
            j += 1
        code = textwrap.dedent("\n".join(body)) + "\n"
        backends, skip = _classify(code)
        tab = _tab_backend(lines, i, len(indent))
        if tab is not None:
            backends.add(tab)
        if not backends and path.parent.name == "backends" and path.stem in KNOWN:
            backends.add(path.stem)  # docs/backends/<name>.md is that backend's page
        blocks.append(Block(path, i + 1, lang, code, backends, skip))
        i = j + 1
    return blocks


def _tab_backend(lines: list[str], fence_line: int, indent: int) -> str | None:
    """The backend of the content tab (``=== "JAX"``) that holds an indented block."""
    if indent == 0:
        return None
    for k in range(fence_line - 1, -1, -1):
        tab = _TAB.match(lines[k])
        if tab and len(tab["indent"]) < indent:
            title = tab["title"].strip().lower()
            name = registry.ALIASES.get(title, title)
            return name if name in KNOWN else None
        if lines[k].strip() and len(lines[k]) - len(lines[k].lstrip()) < indent:
            return None  # left the indented region without meeting a tab
    return None


def _classify(code: str) -> tuple[set[str], str | None]:
    names: set[str] = set()
    for marker in _MARK_BACKEND.findall(code):
        names.add(marker)
    for pattern in _BACKEND_PATTERNS:
        for name in pattern.findall(code):
            if name in registry.ALIASES:
                name = registry.ALIASES[name]
            if name in KNOWN or name in registry.registered_backends():
                names.add(name)
    skip = _MARK_SKIP.search(code)
    return names, (skip.group(1).strip() if skip else None)


def active_backend() -> str | None:
    env = os.environ.get(registry.BACKEND_ENV_VAR, "").strip()
    if env:
        return registry.canonical_name(env)
    return "torch" if registry.is_installed("torch") else None


ALL_BLOCKS = [b for path in DOC_FILES for b in extract_blocks(path)]
PYTHON_BLOCKS = [b for b in ALL_BLOCKS if b.lang in ("python", "py")]
SHELL_BLOCKS = [b for b in ALL_BLOCKS if b.lang in ("bash", "sh", "shell", "console")]


# -- the collection itself works ---------------------------------------------------------
def test_the_docs_have_python_blocks_for_every_backend_and_neutral_ones() -> None:
    assert len(PYTHON_BLOCKS) >= 20, [b.id for b in PYTHON_BLOCKS]
    covered = set().union(*(b.backends for b in PYTHON_BLOCKS))
    assert covered >= set(KNOWN), f"no block written for {set(KNOWN) - covered}"
    assert any(not b.backends for b in PYTHON_BLOCKS), "no backend-neutral block found"


def test_extraction_dedents_tabbed_blocks_and_classifies_them(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        '=== "JAX"\n\n    ```python\n    from d2lx import jax as d2l\n    x = 1\n    ```\n\n'
        "```python\nimport d2lx\n```\n\n```bash\nd2lx fit\n```\n"
        "```python\n# docs-test: skip=needs a GPU\nimport flax\n```\n"
        '=== "MXNet"\n\n    ```python\n    print(model.net.weight.data())\n    ```\n'
    )
    tab, neutral, shell, skipped, mxnet_tab = extract_blocks(page)
    assert (tab.code, tab.backends, tab.line) == ("from d2lx import jax as d2l\nx = 1\n", {"jax"}, 3)
    assert neutral.backends == set() and neutral.lang == "python"
    assert shell.lang == "bash"
    assert skipped.skip == "needs a GPU"
    assert mxnet_tab.backends == {"mxnet"}  # from the tab title alone


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=lambda b: b.id)
def test_python_block_compiles(block: Block) -> None:
    """Syntax is checked on every backend, including blocks that are skipped below."""
    compile(block.code, block.id, "exec")


# -- run the blocks ----------------------------------------------------------------------
@dataclass
class PageState:
    namespace: dict[str, Any]
    folder: Path
    done: int = -1  # index of the last block executed
    failed: str | None = None  # id of the block that failed


_PAGES: dict[Path, PageState] = {}


def _runnable(block: Block, active: str | None) -> str | None:
    """Why ``block`` is skipped here, or None if it runs."""
    if block.skip:
        return block.skip
    if active is None:
        return "no backend: $D2LX_BACKEND is unset and torch is not installed"
    others = block.backends - {active}
    if others:
        return f"written for {', '.join(sorted(others))}; the active backend is {active}"
    return None


def _execute(block: Block, state: PageState) -> None:
    cwd = os.getcwd()
    os.chdir(state.folder)
    try:
        exec(compile(block.code, block.id, "exec"), state.namespace)
    finally:
        os.chdir(cwd)


@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)), ids=lambda i: PYTHON_BLOCKS[i].id)
def test_python_block_runs(index: int, tmp_path_factory: pytest.TempPathFactory,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    block = PYTHON_BLOCKS[index]
    active = active_backend()
    reason = _runnable(block, active)
    if reason:
        pytest.skip(reason)
    monkeypatch.setenv("CI", "1")  # no progress bars in the test log
    monkeypatch.setenv("MPLBACKEND", "Agg")
    state = _PAGES.get(block.path)
    if state is None:
        module = types.ModuleType("__docs__")
        state = PageState(module.__dict__, tmp_path_factory.mktemp(block.path.stem))
        _PAGES[block.path] = state
    page = [i for i, b in enumerate(PYTHON_BLOCKS) if b.path == block.path]
    # Run the earlier blocks of the page first if this test runs alone (-k) or out of order.
    for i in page:
        if i >= index:
            break
        if i > state.done and _runnable(PYTHON_BLOCKS[i], active) is None and state.failed is None:
            try:
                _execute(PYTHON_BLOCKS[i], state)
            except Exception:
                state.failed = PYTHON_BLOCKS[i].id
            state.done = i
    if state.failed is not None:
        pytest.fail(f"an earlier block of this page failed ({state.failed}), so this one cannot run")
    try:
        _execute(block, state)
    except Exception:
        state.failed = block.id
        raise
    finally:
        state.done = max(state.done, index)


# -- shell blocks: every `d2lx ...` line is a valid command --------------------------------
def _d2lx_commands(block: Block) -> list[list[str]]:
    commands: list[list[str]] = []
    for raw in block.code.splitlines():
        line = raw.strip().removeprefix("$ ")
        for part in re.split(r"&&|;|\|", line):
            words = shlex.split(part, comments=True)
            while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
                words.pop(0)  # VAR=value prefixes
            if words[:1] == ["d2lx"]:
                commands.append(words[1:])
    return commands


SHELL_COMMANDS = [(b, argv) for b in SHELL_BLOCKS for argv in _d2lx_commands(b)]


def test_the_docs_show_every_subcommand() -> None:
    shown = {argv[0] for _, argv in SHELL_COMMANDS if argv}
    assert {"fit", "info", "sweep"} <= shown, shown


@pytest.mark.parametrize(("block", "argv"), SHELL_COMMANDS,
                         ids=[f"{b.id}:{' '.join(a)}" for b, a in SHELL_COMMANDS])
def test_documented_command_parses(block: Block, argv: list[str]) -> None:
    from d2lx.cli import build_parser

    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"`d2lx {' '.join(argv)}` in {block.id} does not parse (exit {exc.code})")
