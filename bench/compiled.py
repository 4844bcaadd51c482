"""What compiling asyncjob's hot modules with mypyc buys the in-process path.

mypyc, the compiler of the mypy project (it builds mypy and Black), turns
type-checked modules into C extensions, and asyncjob is typed under ``mypy
--strict``: most of a job's path compiles as it is. This copies
``asyncjob/`` into a temporary directory, compiles there the modules of
:data:`MODULES` (what the wheel's mypyc hook compiles, unless told others),
and runs ``core.py`` against the compiled copy and against the sources,
alternating, each run in a process of its own (the copy first on
``PYTHONPATH``).

Needs mypy and setuptools (``pip install mypy setuptools``), a C compiler
and the Python headers::

    python bench/compiled.py [--repeat N] [--modules PATH,PATH...]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

#: The modules compiled by default: those the wheel's mypyc hook compiles
#: (``include`` of ``[tool.hatch.build.targets.wheel.hooks.mypyc]`` in
#: pyproject.toml), what lies behind the package's boundary on a job's path
#: in one process. ``--modules`` measures another choice, such as the
#: boundary too (``_runner/runner.py``, ``_core/spec.py``,
#: ``_engine/context.py``, ``_core/registry.py``).
MODULES: tuple[str, ...] = tuple(
    tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"][
        "wheel"
    ]["hooks"]["mypyc"]["include"]
)

#: core.py's figures compared: (key, label, baseline key).
FIGURES = (
    ("coro.asyncjob", "coroutine jobs, e2e", "coro.aiojobs"),
    ("sync.asyncjob", "sync jobs, e2e", "sync.pool"),
    ("p50.asyncjob", "perform->start p50", None),
)


def compile_copy(into: Path, modules: tuple[str, ...]) -> None:
    """Copy the package into ``into`` and compile ``modules`` there
    (where no ``pyproject.toml`` is: mypyc's build reads the one it finds)."""
    shutil.copytree(
        ROOT / "asyncjob", into / "asyncjob", ignore=shutil.ignore_patterns("__pycache__")
    )
    done = subprocess.run(
        [sys.executable, "-m", "mypyc", *modules], cwd=into, capture_output=True, text=True
    )
    if done.returncode != 0:
        sys.exit(f"mypyc failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    shutil.rmtree(into / "build", ignore_errors=True)
    # The copy's extension modules must be what a run imports, not the sources.
    first = modules[0].removesuffix(".py").replace("/", ".")
    check = f"import {first} as m; print(m.__file__)"
    found = subprocess.run(
        [sys.executable, "-c", check],
        cwd=into,  # not where the sources are: a command's own folder comes first
        env=_env(into),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not found.endswith(".so"):
        sys.exit(f"the compiled copy is not what is imported: {found}")


def _env(first: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(first)}


def run_core(first: Path, out: Path) -> dict[str, float]:
    """One repetition of ``core.py`` with ``first`` first on the path: its medians."""
    subprocess.run(
        [sys.executable, str(HERE / "core.py"), "--repeat", "1", "--json", str(out)],
        env=_env(first),
        check=True,
        stdout=subprocess.DEVNULL,
    )
    medians: dict[str, float] = json.loads(out.read_text())["medians"]
    return medians


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each (default 3)")
    parser.add_argument(
        "--modules",
        type=lambda text: tuple(text.split(",")),
        default=MODULES,
        help="the modules to compile, comma-separated paths (default: MODULES)",
    )
    args = parser.parse_args(argv)
    if args.repeat < 1:
        sys.exit("--repeat must be at least 1")
    missing = [name for name in ("mypyc", "setuptools") if importlib.util.find_spec(name) is None]
    if missing:
        sys.exit(f"needs {' and '.join(missing)}: pip install mypy setuptools")
    with tempfile.TemporaryDirectory(prefix="asyncjob-compiled-") as scratch:
        compiled = Path(scratch) / "compiled"
        compile_copy(compiled, args.modules)
        runs: dict[str, list[dict[str, float]]] = {"sources": [], "compiled": []}
        for i in range(args.repeat):
            for variant, first in (("sources", ROOT), ("compiled", compiled)):
                print(f"run {i + 1}/{args.repeat}: {variant}", file=sys.stderr, flush=True)
                runs[variant].append(run_core(first, Path(scratch) / f"{variant}-{i}.json"))
    print(
        f"core.py against the sources and against a copy with {len(args.modules)} modules "
        f"compiled by mypyc; Python {sys.version.split()[0]}, medians of {args.repeat} "
        "alternating runs; ratio = asyncjob / the run's own baseline\n"
    )
    print(f"{'measure':<22} {'sources':>16} {'compiled':>16} {'compiled/sources':>17}")
    for key, label, baseline in FIGURES:
        values = {v: statistics.median(run[key] for run in runs[v]) for v in runs}
        line = f"{label:<22}"
        for variant in ("sources", "compiled"):
            if baseline is None:
                line += f" {values[variant]:>13.3f} ms"
            else:
                ratio = statistics.median(run[key] / run[baseline] for run in runs[variant])
                line += f" {values[variant]:>8,.0f} ({ratio:.2f}x)"
        line += f" {values['compiled'] / values['sources']:>16.2f}x"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
