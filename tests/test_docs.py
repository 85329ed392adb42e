"""The documentation's code runs, and the outputs it shows are what the code prints.

Every ```python block of docs/**/*.md and README.md runs. Blocks of one page
run in order in one namespace, as a reader would run them (a later block may
use a name an earlier one defined), with the page's own temporary folder as
the working directory. Each block is one test.

A block written for a backend other than the active one (``$D2LX_BACKEND``,
else torch) is skipped with a reason. A block's backends are the ones it
names: ``from d2lx import jax``, ``d2lx.use_backend("jax")``, ``import jax``
(or ``torch``, ``tensorflow``, ``mxnet``), the content tab it sits in
(``=== "JAX"``), an explicit marker comment ``# docs-test: backend=jax``, or
the page itself (``docs/backends/jax.md``). Blocks that name none are
backend-neutral and run everywhere.
``# docs-test: skip=<reason>`` skips a block that cannot run here.

Shell commands are ```bash blocks. Every ``d2lx ...`` command line in them
must parse with the real CLI parser; they run only when an output is shown.

**Outputs.** A code block followed directly (nothing but blank lines, or
content-tab headers, in between) by a fenced ```text block whose info string
carries ``title="Output"`` shows what it prints, and that output is checked:

* a python block's standard output, run as above;
* a bash block's ``d2lx ...`` commands, run in order in a subprocess
  (``python -m d2lx``, with ``CI=1``; stdout and stderr together, as a
  terminal shows them), in the page's own temporary folder (``d2lx info``,
  which names install commands relative to the checkout, in the checkout).
  A command belongs to the backend its ``--backend``/``--backends`` or
  ``D2LX_BACKEND=`` prefix names, else to the block's tab or page, else to
  the default backend (torch), and is skipped on any other.

Several output blocks may follow one code block, one per content tab
(``=== "JAX"``): the one for the active backend is checked. Lines are
compared one by one after normalising whitespace; numbers may differ by a
relative 1e-4 or an absolute 1e-6 (float32 rounding across machines), and
``...`` in an expected line stands for any text (a timing).

Shown outputs are never typed by hand: ``D2LX_DOCS_UPDATE=1`` makes this
test write what the code printed into the output blocks of the active
backend (keeping expected lines that still match, so ``...`` survives).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import math
import os
import re
import shlex
import subprocess
import sys
import textwrap
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from d2lx import registry
from d2lx.errors import D2lxError

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = [*sorted((ROOT / "docs").rglob("*.md")), ROOT / "README.md"]
KNOWN = ("torch", "jax", "tensorflow", "mxnet")
UPDATE = os.environ.get("D2LX_DOCS_UPDATE") == "1"
#: Relative and absolute tolerance for numbers in shown outputs.
RTOL, ATOL = 1e-4, 1e-6

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)(?P<rest>.*)$")
_TAB = re.compile(r'^(?P<indent>[ \t]*)===\+?\s+"(?P<title>[^"]+)"')
_OUTPUT_TITLE = re.compile(r'\btitle="Output"')
_MARK_BACKEND = re.compile(r"#\s*docs-test:\s*backend\s*=\s*(\w+)")
_MARK_SKIP = re.compile(r"#\s*docs-test:\s*skip\s*=\s*(.+)")
_BACKEND_PATTERNS = [
    re.compile(r"from\s+d2lx\s+import\s+(\w+)"),
    re.compile(r"use_backend\(\s*['\"](\w+)['\"]"),
    re.compile(r"^\s*(?:import|from)\s+(torch|jax|tensorflow|mxnet)\b", re.M),
]
SHELL_LANGS = ("bash", "sh", "shell", "console")


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    backends: set[str] = field(default_factory=set)
    skip: str | None = None
    info: str = ""  # the fence's info string after the language (title="Output"...)
    end: int = 0  # 1-based line of the closing fence
    indent: str = ""
    outputs: list[Block] = field(default_factory=list)  # the output blocks shown right after it

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def is_output(self) -> bool:
        return self.lang == "text" and _OUTPUT_TITLE.search(self.info) is not None

    def output_for(self, backend: str) -> Block | None:
        """The output block shown for ``backend`` (an untabbed one is every backend's)."""
        found = [o for o in self.outputs if not o.backends or backend in o.backends]
        assert len(found) <= 1, f"{self.id}: several outputs for {backend}: {[o.id for o in found]}"
        return found[0] if found else None


def extract_blocks(path: Path) -> list[Block]:
    """Fenced code blocks of a Markdown file, dedented (blocks inside tabs are indented)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    page_backend = path.stem if path.parent.name == "backends" and path.stem in KNOWN else None
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
        block = Block(path, i + 1, lang, code, info=match["rest"].strip(), end=j + 1, indent=indent)
        if not block.is_output:  # an output's text names no backend: only its tab or page do
            block.backends, block.skip = _classify(code)
        tab = _tab_backend(lines, i, len(indent))
        if tab is not None:
            block.backends.add(tab)
        if not block.backends and page_backend is not None:
            block.backends.add(page_backend)  # docs/backends/<name>.md is that backend's page
        blocks.append(block)
        i = j + 1
    _attach_outputs(lines, blocks)
    return blocks


def _attach_outputs(lines: list[str], blocks: list[Block]) -> None:
    """Give each code block the output blocks that follow it directly (across content tabs)."""
    for k, block in enumerate(blocks):
        if block.is_output:
            continue
        previous = block
        for candidate in blocks[k + 1:]:
            between = lines[previous.end:candidate.line - 1]
            if not candidate.is_output or any(ln.strip() and not _TAB.match(ln) for ln in between):
                break
            block.outputs.append(candidate)
            previous = candidate


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
SHELL_BLOCKS = [b for b in ALL_BLOCKS if b.lang in SHELL_LANGS]
OUTPUT_BLOCKS = [b for b in ALL_BLOCKS if b.is_output]


# -- comparing a shown output with a printed one ----------------------------------------------
_NUMBER = r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?"
_TOKEN = re.compile(rf"(?P<wild>\.\.\.)|(?<![\w.])(?P<num>{_NUMBER})(?![\w.])")


def _normalise(line: str) -> str:
    """One space between words, none inside brackets' edges (NumPy pads ``[ 0.1 -0.2]``)."""
    line = " ".join(line.split())
    return re.sub(r"([\[(]) ", r"\1", re.sub(r" ([\])])", r"\1", line))


def _lines(text: str) -> list[str]:
    lines = [_normalise(line) for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    while lines and not lines[0]:
        lines.pop(0)
    return lines


def line_matches(expected: str, actual: str) -> bool:
    """``actual`` is ``expected`` up to whitespace, numbers within tolerance, and ``...`` wildcards."""
    pattern, numbers, last = [], [], 0
    for token in _TOKEN.finditer(expected):
        pattern.append(re.escape(expected[last:token.start()]))
        if token["wild"]:
            pattern.append(".*?")
        else:
            pattern.append(f"({_NUMBER})")
            numbers.append(float(token["num"]))
        last = token.end()
    pattern.append(re.escape(expected[last:]))
    found = re.fullmatch("".join(pattern), actual)
    if found is None:
        return False
    return all(math.isclose(float(got), want, rel_tol=RTOL, abs_tol=ATOL)
               for got, want in zip(found.groups(), numbers))


def output_problems(expected: str, actual: str) -> list[str]:
    """The differences between a shown output and a printed one, in words (empty: they agree)."""
    want, got = _lines(expected), _lines(actual)
    problems = [f"line {i + 1}: shown {w!r}, printed {g!r}"
                for i, (w, g) in enumerate(zip(want, got)) if not line_matches(w, g)]
    if len(want) != len(got):
        problems.append(f"shown {len(want)} lines, printed {len(got)}:\n" + "\n".join(got))
    return problems


def merged_output(expected: str, actual: str) -> list[str]:
    """What an output block should hold now: the printed lines (shown ones kept where they still match)."""
    want, got = expected.strip("\n").splitlines(), actual.rstrip().strip("\n").splitlines()
    if len(want) != len(got):
        return [line.rstrip() for line in got]
    return [w if line_matches(_normalise(w), _normalise(g)) else g.rstrip() for w, g in zip(want, got)]


_UPDATES: dict[Path, list[tuple[Block, list[str]]]] = {}


def _check_output(block: Block, output: Block, actual: str) -> None:
    if UPDATE:
        _UPDATES.setdefault(output.path, []).append((output, merged_output(output.code, actual)))
        return
    problems = output_problems(output.code, actual)
    if problems:
        pytest.fail(f"{block.id} printed something else than its output block {output.id} shows:\n"
                    + "\n".join(problems))


@pytest.fixture(scope="module", autouse=True)
def _write_updated_outputs() -> Iterator[None]:
    """With ``D2LX_DOCS_UPDATE=1``: put what the code printed into its output blocks, at the end."""
    yield
    for path, updates in _UPDATES.items():
        lines = path.read_text(encoding="utf-8").splitlines()
        for output, new in sorted(updates, key=lambda u: -u[0].line):
            lines[output.line:output.end - 1] = [output.indent + ln if ln else "" for ln in new]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    _UPDATES.clear()


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


def test_outputs_attach_to_the_code_block_they_follow(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        '```python\nprint(1)\n```\n\n```text title="Output"\n1\n```\n\n'
        '```python\nprint(2)\n```\n\n=== "PyTorch"\n\n    ```text title="Output"\n    2.0\n    ```\n\n'
        '=== "JAX"\n\n    ```text title="Output"\n    2.00\n    ```\n\n'
        'Some words.\n\n```text title="Output"\norphan\n```\n'
        '```bash\nd2lx info\n```\n```text\nnot an output\n```\n'
    )
    one, out1, two, torch_out, jax_out, orphan, shell, text = extract_blocks(page)
    assert one.outputs == [out1] and out1.code == "1\n" and out1.is_output
    assert two.outputs == [torch_out, jax_out]
    assert two.output_for("jax") is jax_out and two.output_for("mxnet") is None
    assert torch_out.backends == {"torch"} and torch_out.code == "2.0\n"
    assert shell.outputs == [] and not text.is_output and orphan.is_output


def test_output_comparison_allows_rounding_spacing_and_wildcards_only() -> None:
    shown = "error in estimating w: [ 0.061872 -0.132087]\nfit time: ... s"
    assert output_problems(shown, "error in estimating w: [0.0618721 -0.132087]\nfit time: 0.09 s\n") == []
    assert output_problems("loss 1e-08", "loss 0") == []  # absolute tolerance
    assert output_problems(shown, "error in estimating w: [ 0.061972 -0.132087]\nfit time: 1 s")  # a digit
    assert output_problems(shown, "error in estimating b: [ 0.061872 -0.132087]\nfit time: 1 s")  # a word
    assert output_problems(shown, "error in estimating w: [ 0.061872 -0.132087]")  # a line missing
    assert output_problems("96 steps", "97 steps") and output_problems("(2000, 2)", "(2000, 3)")
    assert output_problems("backend torch (2.13.0+cpu)", "backend torch (2.13.1+cpu)")


def test_a_wrong_number_in_a_shown_output_fails(tmp_path: Path) -> None:
    """The whole path, extraction to comparison, on a page whose output block holds one wrong digit."""
    page = tmp_path / "page.md"
    page.write_text('```python\nprint(f"loss {0.1 + 0.2:.6f}")\n```\n\n'
                    '```text title="Output"\nloss 0.300001\n```\n')
    block, output = extract_blocks(page)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(block.code, {})
    assert printed.getvalue() == "loss 0.300000\n"
    assert output_problems(block.output_for("torch").code, printed.getvalue()) == []  # within 1e-4
    output.code = "loss 0.300100\n"
    assert output_problems(block.output_for("torch").code, printed.getvalue())  # beyond it


def test_every_shown_output_is_checked() -> None:
    attached = {id(o) for b in ALL_BLOCKS for o in b.outputs}
    orphans = [o.id for o in OUTPUT_BLOCKS if id(o) not in attached]
    assert not orphans, f"output blocks that follow no code block, so nothing checks them: {orphans}"
    for block in ALL_BLOCKS:
        if block.outputs:
            assert block.lang in ("python", "py", *SHELL_LANGS), f"{block.id}: output of a {block.lang} block"
            if block.lang in SHELL_LANGS:
                assert _d2lx_commands(block), f"{block.id}: an output, but no d2lx command to produce it"
            for backend in KNOWN:
                block.output_for(backend)  # at most one per backend


def test_text_right_after_code_is_a_checked_output() -> None:
    """A ```text block straight after a code block reads as its output: it must be one, to be checked."""
    for path in DOC_FILES:
        blocks = extract_blocks(path)
        lines = path.read_text(encoding="utf-8").splitlines()
        for before, after in itertools.pairwise(blocks):
            adjacent = not any(ln.strip() for ln in lines[before.end:after.line - 1])
            if adjacent and before.lang in ("python", "py", *SHELL_LANGS) and after.lang == "text":
                assert after.is_output, f'{after.id}: add title="Output" (and let the docs test fill it)'


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


def _execute(block: Block, state: PageState) -> str:
    """Run ``block`` in its page's namespace and folder; what it printed."""
    cwd = os.getcwd()
    os.chdir(state.folder)
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            exec(compile(block.code, block.id, "exec"), state.namespace)
    finally:
        os.chdir(cwd)
    return printed.getvalue()


@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)), ids=lambda i: PYTHON_BLOCKS[i].id)
def test_python_block_runs(index: int, tmp_path_factory: pytest.TempPathFactory,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    block = PYTHON_BLOCKS[index]
    active = active_backend()
    reason = _runnable(block, active)
    if reason:
        pytest.skip(reason)
    assert active is not None
    monkeypatch.setenv("CI", "1")  # no progress bars in the test log
    monkeypatch.setenv("MPLBACKEND", "Agg")
    state = _PAGES.get(block.path)
    if state is None:
        # A module of its own per page, importable by name as a script's __main__ is
        # (dataclasses, and so Flax modules, look up their class's module).
        name = "__docs__" + re.sub(r"\W", "_", str(block.path.relative_to(ROOT)))
        module = types.ModuleType(name)
        sys.modules[module.__name__] = module
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
        printed = _execute(block, state)
    except Exception:
        state.failed = block.id
        raise
    finally:
        state.done = max(state.done, index)
    output = block.output_for(active)
    if output is not None:
        _check_output(block, output, printed)


# -- shell blocks: every `d2lx ...` line is a valid command --------------------------------
def _d2lx_command_lines(block: Block) -> list[tuple[dict[str, str], list[str]]]:
    """Each ``d2lx ...`` command of a shell block: its ``VAR=value`` prefixes and its arguments."""
    commands: list[tuple[dict[str, str], list[str]]] = []
    for raw in block.code.splitlines():
        line = raw.strip().removeprefix("$ ")
        for part in re.split(r"&&|;|\|", line):
            words = shlex.split(part, comments=True)
            env = {}
            while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
                name, _, value = words.pop(0).partition("=")  # VAR=value prefixes
                env[name] = value
            if words[:1] == ["d2lx"]:
                commands.append((env, words[1:]))
    return commands


def _d2lx_commands(block: Block) -> list[list[str]]:
    return [argv for _, argv in _d2lx_command_lines(block)]


SHELL_COMMANDS = [(b, argv) for b in SHELL_BLOCKS for argv in _d2lx_commands(b)]
SHELL_OUTPUTS = [b for b in SHELL_BLOCKS if b.outputs]


def test_the_docs_show_every_subcommand() -> None:
    shown = {argv[0] for _, argv in SHELL_COMMANDS if argv}
    assert {"fit", "info", "sweep"} <= shown, shown


@pytest.mark.parametrize(("block", "argv"), SHELL_COMMANDS,
                         ids=[f"{b.id}:{' '.join(a)}" for b, a in SHELL_COMMANDS])
def test_documented_command_parses(block: Block, argv: list[str]) -> None:
    from d2lx.cli import _joined_values, build_parser

    try:
        build_parser().parse_args(_joined_values(argv))  # as d2lx's main() reads them
    except SystemExit as exc:
        if block.outputs:
            return  # a refusal shown with its output, which test_shell_block_prints_its_output checks
        pytest.fail(f"`d2lx {' '.join(argv)}` in {block.id} does not parse (exit {exc.code})")


def _backend_named(name: str) -> str:
    try:
        return registry.canonical_name(name)
    except D2lxError:  # a documented mistake (`--backend theano`): its own name
        return name


def _command_backends(block: Block, env: dict[str, str], argv: list[str]) -> set[str]:
    """The backends a command runs on: its options, its ``D2LX_BACKEND=``, its tab or page, else torch."""
    for i, word in enumerate(argv):
        name, _, value = word.partition("=")
        if name in ("--backend", "--backends"):
            value = value or (argv[i + 1] if i + 1 < len(argv) else "")
            return {_backend_named(v) for v in value.split(",") if v}
    if env.get(registry.BACKEND_ENV_VAR):
        return {_backend_named(env[registry.BACKEND_ENV_VAR])}
    return set(block.backends) or {registry.DEFAULT_BACKEND}


def _run_commands(block: Block, folder: Path) -> str:
    """A shell block's ``d2lx`` commands, in order, as a reader's terminal shows them."""
    shown = []
    for env, argv in _d2lx_command_lines(block):
        backends = _command_backends(block, env, argv)
        run_env = {**os.environ, "CI": "1", "TF_CPP_MIN_LOG_LEVEL": "3", "MPLBACKEND": "Agg", **env}
        if len(backends) == 1:  # the command's backend, not the test run's
            run_env[registry.BACKEND_ENV_VAR] = env.get(registry.BACKEND_ENV_VAR, next(iter(backends)))
        where = ROOT if argv[:1] == ["info"] else folder  # `info` names paths of the checkout
        done = subprocess.run([sys.executable, "-m", "d2lx", *argv], cwd=where, env=run_env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600, check=False)
        shown.append(done.stdout)
    return "".join(shown)


_SHELL_FOLDERS: dict[Path, tuple[Path, set[int]]] = {}


@pytest.mark.parametrize("block", SHELL_OUTPUTS, ids=lambda b: b.id)
def test_shell_block_prints_its_output(block: Block, tmp_path_factory: pytest.TempPathFactory) -> None:
    active = active_backend()
    if active is None:
        pytest.skip("no backend: $D2LX_BACKEND is unset and torch is not installed")
    wanted = set().union(*(_command_backends(block, env, argv) for env, argv in _d2lx_command_lines(block)))
    if block.skip or wanted - {active}:
        pytest.skip(block.skip or f"runs {', '.join(sorted(wanted))}; the active backend is {active}")
    folder, done = _SHELL_FOLDERS.setdefault(block.path, (tmp_path_factory.mktemp(block.path.stem), set()))
    # Earlier commands of the page first (a later one may resume a checkpoint they wrote).
    for earlier in SHELL_OUTPUTS:
        if earlier.path == block.path and earlier.line < block.line and earlier.line not in done:
            earlier_backends = set().union(*(_command_backends(earlier, e, a)
                                             for e, a in _d2lx_command_lines(earlier)))
            if not earlier.skip and earlier_backends <= {active}:
                _run_commands(earlier, folder)
            done.add(earlier.line)
    printed = _run_commands(block, folder)
    done.add(block.line)
    output = block.output_for(active)
    if output is not None:
        _check_output(block, output, printed)
