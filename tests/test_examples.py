"""The example programs of the documentation run, and print what the pages say.

``docs/examples/*.py`` are small complete applications (TurboGears2, Flask,
Starlette, aiohttp), each with a ``main()`` that drives it in-process with
the framework's test client. The pages include them, whole or in sections,
with pymdownx snippets::

    ```python title="docs/examples/flask_app.py"
    --8<-- "docs/examples/flask_app.py:main"
    ```

followed by a ``text`` block titled ``Output``: what the program prints.
Each program runs as a script in a fresh interpreter, in development mode
with warnings as errors, and must exit cleanly and print exactly that
output.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from .test_docs import DOCS, ROOT, SUBPROCESS_TIMEOUT, UNCLEAN, Block, read_blocks, report

EXAMPLES = DOCS / "examples"

#: Warnings of the frameworks themselves that ``-W error`` must not turn
#: into errors: WebOb 1.8, which TurboGears2 2.5 runs on, imports the cgi
#: module, deprecated since Python 3.11.
IGNORED_WARNINGS = ("ignore:'cgi' is deprecated:DeprecationWarning",)

#: A snippet line of pymdownx: ``--8<-- "path"`` or ``--8<-- "path:section"``.
SNIPPET = re.compile(r'^-+8<-+[ \t]+"(?P<path>[^":]+)(?::[^"]*)?"[ \t]*$')


@dataclass(frozen=True)
class Shown:
    """An example program, as the pages show it."""

    path: Path
    #: Where the pages include it, as ``docs/page.md:LINE``.
    places: tuple[str, ...]
    #: What it must print: the Output block after one of its includes.
    output: str | None


def included(block: Block) -> list[Path]:
    """The files a block includes, when it is made of snippet lines only."""
    lines = [line for line in block.code.splitlines() if line.strip()]
    matches = [SNIPPET.match(line) for line in lines]
    if not lines or not all(matches):
        return []
    return [ROOT / match["path"] for match in matches if match]


def shown_examples() -> dict[Path, Shown]:
    """Every file of docs/examples/, with where the pages include it and
    the output they show for it."""
    places: dict[Path, list[str]] = {path: [] for path in EXAMPLES.glob("*.py")}
    outputs: dict[Path, list[str]] = {path: [] for path in places}
    for page in sorted(DOCS.glob("*.md")):
        lines = page.read_text(encoding="utf-8").splitlines()
        blocks = read_blocks(page)
        for i, block in enumerate(blocks):
            files = included(block) if block.is_python else []
            for path in files:
                places.setdefault(path, []).append(block.where)
            after = blocks[i + 1] if i + 1 < len(blocks) else None
            if (
                files
                and after is not None
                and after.title == "Output"
                and not "".join(lines[block.end : after.line - 2]).strip()
            ):
                for path in set(files):
                    outputs.setdefault(path, []).append(after.code)
    return {
        path: Shown(path, tuple(places[path]), next(iter(outputs.get(path, [])), None))
        for path in sorted(places)
        if path.parent == EXAMPLES
    }


SHOWN = shown_examples()


def test_there_are_examples() -> None:
    """The examples are found (a moved folder would otherwise test nothing)."""
    names = {path.name for path in SHOWN}
    assert {"turbogears_app.py", "flask_app.py", "starlette_app.py", "aiohttp_app.py"} <= names


@pytest.mark.parametrize("shown", SHOWN.values(), ids=[path.name for path in SHOWN])
def test_example_is_shown_with_its_output(shown: Shown) -> None:
    """Each example is included by a page, which shows what it prints; each
    file a page includes from docs/examples/ exists."""
    name = shown.path.relative_to(ROOT)
    assert shown.path.is_file(), f"{', '.join(shown.places)}: {name} does not exist"
    assert shown.places, f"{name} is not included by any page of docs/"
    assert shown.output is not None, (
        f"{name}: no include of it is followed by a text block titled Output"
    )


@pytest.mark.parametrize("shown", SHOWN.values(), ids=[path.name for path in SHOWN])
def test_example_runs(shown: Shown, tmp_path: Path) -> None:
    """The program runs cleanly, and prints what its page shows."""
    name = shown.path.relative_to(ROOT)
    warnings = [arg for rule in IGNORED_WARNINGS for arg in ("-W", rule)]
    result = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error", *warnings, str(shown.path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )
    assert result.returncode == 0, f"{name}: the example failed{report(result)}"
    unclean = [sign for sign in UNCLEAN if sign in result.stderr]
    assert not unclean, f"{name}: the example left {unclean}{report(result)}"
    if shown.output is not None:
        assert result.stdout.rstrip() == shown.output.rstrip(), (
            f"{name}: the output differs from the Output block after its include "
            f"in {shown.places[0]}{report(result)}"
        )
