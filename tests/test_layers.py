"""The package layout shows the architecture: layers as packages, imports only going down.

Reads every module of `src/kerrera` with `ast` (no import is executed) and checks:
- each import of a Kerrera module from another package goes to a lower layer (or the
  same one); the lower layers never import testing, cli, contrib or web;
- the packages import each other in no cycle;
- no private name (`_x`) is imported across a package boundary.
Imports under `if TYPE_CHECKING:` are left out: they never run, and a lower layer may
name a higher layer's type in an annotation.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "kerrera"

#: Bottom to top. A module may import its own package and any package listed before it.
LAYERS = [
    "core", "telemetry", "engine", "notifier", "peer", "services", "queue", "events",
    "app", "kerrera", "testing", "cli", "contrib", "web",
]  # fmt: skip
RANK = {name: i for i, name in enumerate(LAYERS)}
TOP = {"testing", "cli", "contrib", "web"}


def _package(module: str) -> str:
    """`kerrera.queue.producer` -> `queue`; `kerrera` (the public surface) -> `kerrera`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "kerrera"


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in node.body:
                lines.update(range(inner.lineno, (inner.end_lineno or inner.lineno) + 1))
    return lines


def _is_module(name: str) -> bool:
    base = SRC.parent / name.replace(".", "/")
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def imports() -> list[tuple[str, str, str, int]]:
    """(importing module, imported module, imported name or '', line) for every runtime
    import of a Kerrera module."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        skip = _type_checking_lines(tree)
        here = _module_name(path)
        for node in ast.walk(tree):
            if getattr(node, "lineno", 0) in skip:
                continue
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("kerrera"):
                        found.append((here, alias.name, "", node.lineno))
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                if not node.module.startswith("kerrera"):
                    continue
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    if _is_module(sub):  # `from kerrera.x import submodule`
                        found.append((here, sub, "", node.lineno))
                    else:
                        found.append((here, node.module, alias.name, node.lineno))
    return found


def test_imports_only_go_down() -> None:
    wrong = []
    for here, target, _name, line in imports():
        mine, theirs = _package(here), _package(target)
        if mine == theirs:
            continue
        if RANK[theirs] > RANK[mine] or (theirs in TOP and mine not in TOP):
            wrong.append(f"{here}:{line} imports {target} ({mine} -> {theirs})")
    assert not wrong, "imports that go up a layer:\n" + "\n".join(wrong)


def test_the_packages_import_each_other_in_no_cycle() -> None:
    edges: dict[str, set[str]] = defaultdict(set)
    for here, target, _name, _line in imports():
        if _package(here) != _package(target):
            edges[_package(here)].add(_package(target))
    seen: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        seen[node] = 1
        for nxt in sorted(edges[node]):
            if seen.get(nxt) == 1:
                raise AssertionError("cycle between packages: " + " -> ".join([*path, nxt]))
            if nxt not in seen:
                visit(nxt, [*path, nxt])
        seen[node] = 2

    for start in sorted(edges):
        if start not in seen:
            visit(start, [start])


def test_no_private_name_crosses_a_package_boundary() -> None:
    wrong = []
    for here, target, name, line in imports():
        if _package(here) == _package(target):
            continue
        private_module = any(part.startswith("_") for part in target.split(".")[1:])
        if private_module or (name.startswith("_") and name != "__version__"):
            wrong.append(f"{here}:{line} imports {target} {name}".rstrip())
    assert not wrong, "private names imported across packages:\n" + "\n".join(wrong)


def test_every_package_says_what_it_owns() -> None:
    missing = [
        str(init.relative_to(SRC))
        for init in sorted(SRC.glob("*/__init__.py"))
        if len((ast.get_docstring(ast.parse(init.read_text())) or "").split()) < 8
    ]
    assert not missing, f"packages without a docstring saying what they own: {missing}"
