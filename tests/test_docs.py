"""The documentation: every example in it runs, and the site builds.

Each fenced ``python`` block in ``docs/*.md`` (and in ``README.md``) is one of:

- a program, the default: it runs in a fresh interpreter, in development
  mode with warnings as errors, and must exit cleanly. When the next
  block is a ``text``
  block titled ``Output``, what the program prints must be exactly that;
- a test module, titled after its file (``title="test_reports.py"``): it is
  written under that name and run with pytest, and must pass;
- a sketch, titled with the word ``sketch`` (``title="app.py (sketch)"``):
  code that needs what the test environment lacks, such as a web framework.
  It is compiled, not run, and there may be only :data:`MAX_SKETCHES` of them;
- an include, made of pymdownx snippet lines only
  (``--8<-- "docs/examples/flask_app.py:main"``): it shows (part of) a
  program of ``docs/examples/``, which ``tests/test_examples.py`` runs and
  checks against the ``Output`` block after it.

Failures name the file and line of the block, and tracebacks point into the
Markdown file itself.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import textwrap
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

import asyncjob
import asyncjob.stores
import asyncjob.stores.kit
import asyncjob.testing

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"

#: How many examples may be left unrun. Raise it only with a good reason.
MAX_SKETCHES = 2
#: An example that hangs fails after this many seconds. It bounds a hang,
#: not the example's speed, which is no test's business (see bench/): no
#: machine, however busy, takes this long for an example that works.
SUBPROCESS_TIMEOUT = 60.0

#: Signs in an example's stderr of something left unclean, such as a task
#: that was never awaited; the program may still have exited with 0.
UNCLEAN = (
    "Exception ignored",
    "Task was destroyed but it is pending",
    "Task exception was never retrieved",
    "was never awaited",
)

#: Runs one program block: compiled under the Markdown file's name, padded
#: so that traceback line numbers are the Markdown file's.
DRIVER = """\
import sys
path, first_line = sys.argv[1], int(sys.argv[2])
code = compile("\\n" * (first_line - 1) + sys.stdin.read(), path, "exec")
exec(code, {"__name__": "__main__", "__file__": path})
"""

#: The configuration the testing page tells readers to use.
PYTEST_INI = """\
[pytest]
asyncio_default_fixture_loop_scope = function
"""

OPENING = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\n]*?)[ \t]*$")
TITLE = re.compile(r'\btitle="(?P<title>[^"]*)"')
TEST_MODULE = re.compile(r"^test_\w+\.py$")
#: A pymdownx snippet line: ``--8<-- "docs/examples/app.py"``, or one of the
#: file's sections, ``--8<-- "docs/examples/app.py:main"``.
SNIPPET = re.compile(r'^-+8<-+[ \t]+"(?P<path>[^":]+)(?::[^"]*)?"[ \t]*$')


@dataclass(frozen=True)
class Block:
    """One fenced code block of a Markdown file."""

    path: Path
    #: The line of the block's first line of code, counting from 1.
    line: int
    #: The line of the closing fence.
    end: int
    info: str
    code: str

    @property
    def language(self) -> str:
        """The block's language, as the fence names it."""
        return self.info.split(maxsplit=1)[0].lower() if self.info else ""

    @property
    def title(self) -> str:
        """The block's ``title="..."`` attribute, or ``""``."""
        match = TITLE.search(self.info)
        return match["title"] if match else ""

    @property
    def where(self) -> str:
        """``docs/page.md:LINE``, for messages."""
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def is_python(self) -> bool:
        """True for the blocks that the tests run or compile."""
        return self.language in ("python", "py", "python3")

    @property
    def is_sketch(self) -> bool:
        """True for a block marked as not runnable."""
        return re.search(r"\bsketch\b", self.title) is not None

    @property
    def is_test_module(self) -> bool:
        """True for a block that is a pytest module."""
        return TEST_MODULE.match(self.title) is not None

    @property
    def included(self) -> list[str]:
        """The files a block of snippet lines only includes; ``[]`` for code."""
        lines = [line for line in self.code.splitlines() if line.strip()]
        found = [SNIPPET.match(line) for line in lines]
        return [match["path"] for match in found if match] if lines and all(found) else []

    @property
    def is_include(self) -> bool:
        """True for a block that shows a program of docs/examples/."""
        return bool(self.included)

    def padded(self) -> str:
        """The code, after blank lines that put it at its Markdown line."""
        return "\n" * (self.line - 1) + self.code


@dataclass(frozen=True)
class Example:
    """A Python block, and the output it must print (``None``: not checked)."""

    block: Block
    output: str | None


def read_blocks(path: Path) -> list[Block]:
    """Every fenced block of a Markdown file, in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = OPENING.match(lines[i])
        if opening is None:
            i += 1
            continue
        indent, fence = len(opening["indent"]), opening["fence"]
        closing = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not closing.match(lines[j]):
            # Inside an admonition or a tab, the fence's indent is not code.
            body.append(re.sub(rf"^[ \t]{{0,{indent}}}", "", lines[j]))
            j += 1
        if j == len(lines):
            raise AssertionError(f"{path.relative_to(ROOT)}:{i + 1}: the fence is never closed")
        code = textwrap.dedent("\n".join(body)) + "\n"
        blocks.append(Block(path, i + 2, j + 1, opening["info"], code))
        i = j + 1
    return blocks


def read_examples(path: Path) -> list[Example]:
    """The Python blocks of a Markdown file, each with its expected output."""
    blocks = read_blocks(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    examples: list[Example] = []
    for i, block in enumerate(blocks):
        if not block.is_python:
            continue
        after = blocks[i + 1] if i + 1 < len(blocks) else None
        # An Output block counts when only blank lines separate it from the code.
        owned = (
            after is not None
            and after.title == "Output"
            and not "".join(lines[block.end : after.line - 2]).strip()
        )
        examples.append(Example(block, after.code if owned and after else None))
    return examples


def sources() -> list[Path]:
    """The Markdown files whose examples are tested."""
    pages = sorted(DOCS.glob("*.md"))
    return [*pages, README] if README.is_file() else pages


EXAMPLES = [example for path in sources() for example in read_examples(path)]
PROGRAMS = [
    e for e in EXAMPLES if not (e.block.is_sketch or e.block.is_test_module or e.block.is_include)
]
INCLUDES = [e.block for e in EXAMPLES if e.block.is_include]
TEST_MODULES = [e.block for e in EXAMPLES if e.block.is_test_module]
SKETCHES = [e.block for e in EXAMPLES if e.block.is_sketch]


def ids(blocks: list[Block]) -> list[str]:
    """Test ids that say where each block is."""
    return [block.where for block in blocks]


def run(args: list[str], cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command in a fresh interpreter, its output captured."""
    return subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error", *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )


def report(result: subprocess.CompletedProcess[str]) -> str:
    """What a failing block printed, for the assertion message."""
    return f"\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


@pytest.mark.parametrize("example", PROGRAMS, ids=ids([e.block for e in PROGRAMS]))
def test_example_runs(example: Example, tmp_path: Path) -> None:
    """A program in the docs runs cleanly, and prints what the docs say it
    prints."""
    block = example.block
    result = run(
        ["-c", DRIVER, str(block.path), str(block.line)],
        cwd=tmp_path,
        stdin=block.code,
    )
    assert result.returncode == 0, f"{block.where}: the example failed{report(result)}"
    unclean = [sign for sign in UNCLEAN if sign in result.stderr]
    assert not unclean, f"{block.where}: the example left {unclean}{report(result)}"
    if example.output is not None:
        assert result.stdout.rstrip() == example.output.rstrip(), (
            f"{block.where}: the example's output differs from the Output block after it"
            f"{report(result)}"
        )


@pytest.mark.parametrize("block", TEST_MODULES, ids=ids(TEST_MODULES))
def test_example_test_module_passes(block: Block, tmp_path: Path) -> None:
    """A test module in the docs passes under pytest, with the configuration
    that the docs recommend."""
    (tmp_path / "pytest.ini").write_text(PYTEST_INI)
    (tmp_path / block.title).write_text(block.padded())
    result = run(
        ["-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", ".", block.title],
        cwd=tmp_path,
    )
    assert result.returncode == 0, f"{block.where}: the tests failed{report(result)}"
    assert " passed" in result.stdout, f"{block.where}: no test ran{report(result)}"


@pytest.mark.parametrize("block", SKETCHES, ids=ids(SKETCHES))
def test_sketch_compiles(block: Block) -> None:
    """A sketch is at least valid Python; it is then reported as skipped."""
    compile(block.padded(), str(block.path), "exec")
    pytest.skip(f"{block.where}: a sketch ({block.title!r}), compiled but not run")


def test_sketches_are_few() -> None:
    """Examples left unrun stay few, so that they cannot silently grow."""
    listing = "\n".join(f"  {block.where}  {block.title!r}" for block in SKETCHES)
    assert len(SKETCHES) <= MAX_SKETCHES, (
        f"{len(SKETCHES)} examples are sketches, not run (at most {MAX_SKETCHES}):\n{listing}"
    )


def test_every_python_fence_is_found() -> None:
    """The block reader misses no Python fence, however it is written."""
    for path in sources():
        fences = re.findall(
            r"^[ \t]*(?:`{3,}|~{3,})[ \t]*(?:python3?|py)\b",
            path.read_text(encoding="utf-8"),
            re.MULTILINE | re.IGNORECASE,
        )
        found = [e for e in EXAMPLES if e.block.path == path]
        assert len(found) == len(fences), f"{path.relative_to(ROOT)}: a fence was missed"


def test_every_guide_has_a_running_example() -> None:
    """Each guide page shows code that runs, not only prose."""
    guides = {path.name for path in DOCS.glob("*.md")} - {"reference.md", "changelog.md"}
    with_programs = {e.block.path.name for e in PROGRAMS} | {b.path.name for b in TEST_MODULES}
    with_programs |= {b.path.name for b in INCLUDES}  # run by tests/test_examples.py
    assert guides <= with_programs, f"no runnable example in {sorted(guides - with_programs)}"


@pytest.mark.parametrize("block", INCLUDES, ids=ids(INCLUDES))
def test_includes_show_tested_programs(block: Block) -> None:
    """An include shows a program of docs/examples/, which
    tests/test_examples.py runs, or a file of the Django project that
    tests/test_django.py runs; not code that nothing would run."""
    for path in block.included:
        assert Path(path).parent == Path("docs/examples") or path.startswith(
            "tests/django_project/"
        ), f"{block.where}: {path} is not a program of docs/examples/ or the Django project"
        assert (ROOT / path).is_file(), f"{block.where}: {path} does not exist"


def test_output_blocks_follow_examples() -> None:
    """Every ``Output`` block belongs to the example just before it."""
    for path in sources():
        outputs = [b for b in read_blocks(path) if b.title == "Output"]
        checked = [e for e in EXAMPLES if e.block.path == path and e.output is not None]
        assert len(outputs) == len(checked), (
            f"{path.relative_to(ROOT)}: an Output block does not directly follow a program"
        )


#: A package that an install line asks for: ``asyncjob-runner``,
#: ``"asyncjob-runner[tg]"``, ``'.[demo]'``…
INSTALLED = re.compile(r"""["']?(?P<name>[\w.-]+?)(?:\[(?P<extras>[\w,]+)\])?["']?$""")


def test_install_lines_name_the_distribution() -> None:
    """Every ``pip install`` line that installs asyncjob names its
    distribution (``asyncjob`` on the package index is another project),
    with extras that exist."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = set(project["optional-dependencies"])
    found = 0
    for path in [README, *sorted(DOCS.glob("*.md")), ROOT / "bench" / "README.md"]:
        for line in path.read_text(encoding="utf-8").splitlines():
            for command in re.findall(r"pip install ([^`&|;]*)", line):
                for word in command.split():
                    match = INSTALLED.match(word)
                    if word.startswith("-") or match is None:
                        continue
                    if match["name"].startswith("asyncjob") or match["name"] == ".":
                        found += 1
                        where = f"{path.relative_to(ROOT)}: {line.strip()!r}"
                        assert match["name"] in (project["name"], "."), where
                        assert set((match["extras"] or "").split(",")) - {""} <= extras, where
    assert found >= 4, "the install lines were not found"


def test_reference_covers_the_public_api() -> None:
    """Every exported name appears in the API reference."""
    documented = set(re.findall(r"^:::\s+(\S+)", (DOCS / "reference.md").read_text(), re.M))
    exported = {f"asyncjob.{name}" for name in asyncjob.__all__}
    for module in (asyncjob.stores, asyncjob.stores.kit, asyncjob.testing):
        exported |= {
            f"{module.__name__}.{name}"
            for name in module.__all__
            # Names the package exports too are documented there.
            if getattr(asyncjob, name, None) is not getattr(module, name)
        }
    assert exported <= documented, f"not in docs/reference.md: {sorted(exported - documented)}"


def test_site_builds_strict(tmp_path: Path) -> None:
    """``mkdocs build --strict`` succeeds: no broken link, reference or include."""
    for module in ("mkdocs", "material", "mkdocstrings_handlers.python"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed: pip install -e '.[docs]' to build the docs")
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr}"
    assert (site / "index.html").is_file()
