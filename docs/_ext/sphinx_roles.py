"""Render the package's Sphinx-style docstring markup in the API reference.

The docstrings of asyncjob are Google style, with Sphinx roles for
cross-references (``:class:`JobStatus```, ``:meth:`start```) and ``::`` before
literal blocks. mkdocstrings reads docstrings as Markdown, where those show
up verbatim. This griffe extension rewrites them before rendering:

- a role whose target is documented in the reference becomes a Markdown
  cross-reference (``[JobStatus][asyncjob.JobStatus]``), resolved the way
  Python would, from the docstring's own scope;
- any other role (``asyncio.CancelledError``, private names) becomes inline
  code;
- ``:doc:`threads``` becomes a link to the first heading of ``threads.md``;
- a paragraph ending in ``::`` loses one colon, and the indented block after
  it becomes a fenced Python block.

It changes nothing in the package, only what the reference shows.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import griffe

DOCS = Path(__file__).resolve().parent.parent
REFERENCE = DOCS / "reference.md"
PUBLIC_MODULES = ("asyncjob", "asyncjob.stores", "asyncjob.stores.kit", "asyncjob.testing")

ROLE = re.compile(r":(?:py:)?(?P<role>[a-z]+):`(?P<text>[^`]+)`")
TITLED = re.compile(r"^(?P<title>.*?)\s*<(?P<target>[^<>]+)>$")
HEADING = re.compile(r"^#\s+(?P<title>.+?)\s*(?:\{[^}]*\})?\s*$", re.MULTILINE)


def _slug(title: str) -> str:
    """The id Python-Markdown's toc extension gives a heading."""
    text = re.sub(r"[^\w\s-]", "", title).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


class SphinxRoles(griffe.Extension):
    """Turn Sphinx roles and literal-block markers into Markdown."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        """Rewrite every docstring of the package once it is loaded."""
        if pkg.path != "asyncjob":
            return
        self._pkg = pkg
        self._public = self._public_names()
        self._documented = self._documented_paths()
        for obj in _walk(pkg):
            if obj.docstring is not None:
                obj.docstring.value = self._rewrite(obj.docstring.value, obj)

    # -- which names the reference shows ----------------------------------

    def _public_names(self) -> dict[str, str]:
        """Map canonical paths (``asyncjob._runner.Runner``) to public ones."""
        public: dict[str, str] = {}
        for module_path in PUBLIC_MODULES:
            module = self._get(module_path)
            if module is None:
                continue
            for name in map(str, module.exports or ()):
                member = module.members.get(name)
                if member is None:
                    continue
                canonical = member.target_path if member.is_alias else member.path
                public.setdefault(canonical, f"{module_path}.{name}")
        return public

    def _documented_paths(self) -> set[str]:
        """The public paths that reference.md renders, with their members."""
        documented: set[str] = set()
        for root in re.findall(r"^:::\s+(\S+)", REFERENCE.read_text(), re.MULTILINE):
            documented.add(root)
            obj = self._get(root)
            if obj is not None and obj.is_class:
                for name, member in obj.all_members.items():
                    if not name.startswith("_") and member.docstring is not None:
                        documented.add(f"{root}.{name}")
        return documented

    def _get(self, path: str) -> Any:
        if path == "asyncjob":
            return self._pkg
        if not path.startswith("asyncjob."):
            return None
        try:
            return self._pkg[path.removeprefix("asyncjob.")]
        except (KeyError, griffe.AliasResolutionError):
            return None

    def _to_public(self, canonical: str) -> str | None:
        """The public path of a canonical one, through its longest known prefix."""
        parts = canonical.split(".")
        for cut in range(len(parts), 0, -1):
            public = self._public.get(".".join(parts[:cut]))
            if public is not None:
                return ".".join([public, *parts[cut:]])
        return None

    def _resolve(self, target: str, scope: griffe.Object) -> str | None:
        """The documented public path that ``target`` names from ``scope``."""
        candidates = [target] if target.startswith("asyncjob.") else []
        head, _, rest = target.partition(".")
        try:
            canonical = scope.resolve(head)
        except griffe.NameResolutionError:
            pass
        else:
            public = self._to_public(canonical + (f".{rest}" if rest else ""))
            if public is not None:
                candidates.append(public)
        candidates += [f"{module}.{target}" for module in PUBLIC_MODULES]
        return next((path for path in candidates if path in self._documented), None)

    # -- rewriting --------------------------------------------------------

    def _rewrite(self, text: str, scope: griffe.Object) -> str:
        text = _literal_blocks(text)
        return ROLE.sub(lambda match: self._role(match, scope), text)

    def _role(self, match: re.Match[str], scope: griffe.Object) -> str:
        role, text = match["role"], match["text"]
        titled = TITLED.match(text)
        title, target = (titled["title"], titled["target"]) if titled else (None, text)
        if role == "doc":
            return _doc_link(target, title)
        short = target.startswith("~")
        target = target.lstrip("~.")
        if title is None:
            title = target.rsplit(".", 1)[-1] if short else target
            if role in ("func", "meth"):
                title += "()"
        path = self._resolve(target, scope)
        if path is None:
            return f"`{title}`"
        return f"[`{title}`][{path}]"


def _doc_link(name: str, title: str | None) -> str:
    page = DOCS / f"{name.strip('/')}.md"
    heading = HEADING.search(page.read_text()) if page.is_file() else None
    if heading is None:
        return title or name
    return f"[{title or heading['title']}][{_slug(heading['title'])}]"


def _literal_blocks(text: str) -> str:
    """Turn ``paragraph::`` plus an indented block into a fenced block."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.rstrip().endswith("::") or i + 1 >= len(lines) or lines[i + 1].strip():
            out.append(line)
            i += 1
            continue
        # "text::" reads "text:"; a lone "::" disappears.
        intro = line.rstrip()[:-1]
        if intro.strip() != ":":
            out.append(intro)
        block: list[str] = []
        j = i + 1
        while j < len(lines) and (not lines[j].strip() or lines[j].startswith((" ", "\t"))):
            block.append(lines[j])
            j += 1
        while block and not block[-1].strip():
            block.pop()
        out += ["", "```python", *textwrap.dedent("\n".join(block)).strip("\n").splitlines()]
        out += ["```", ""]
        i = j
    return "\n".join(out)


def _walk(obj: griffe.Object) -> Iterator[griffe.Object]:
    """Every object defined in the package (aliases are not followed)."""
    yield obj
    for member in obj.members.values():
        if isinstance(member, griffe.Object):
            yield from _walk(member)
