"""The import graph of a package, read from its source with ``ast``: arrows, levels, circles.

    python -m tools.import_graph regularization_pipeline/core [--packages]

prints the number of modules, import arrows between them, the longest chain (levels) and
every circle; ``--packages`` draws one node per subpackage (or top-level module). Every import
counts: inside a function (still a dependency) and under ``if TYPE_CHECKING:`` (a circle the
type checker sees is one a reader must untangle too). ``--chains`` prints the longest chain of
each module. tests/docs/test_architecture.py holds core to its layering with it.
"""

from __future__ import annotations

import ast
import sys
from functools import cache
from pathlib import Path


def module_name(path: Path, root: Path) -> str:
    """The dotted name, from the outermost folder that is still a package."""
    while (root.parent / "__init__.py").exists():
        root = root.parent
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(tree: ast.AST) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def graph(package: Path) -> dict[str, set[str]]:
    """module -> the modules of the same package it imports (packages' ``__init__`` left out
    as targets: importing ``a.b`` to reach ``a.b.c`` is an arrow to ``a.b.c`` only)."""
    package = package.resolve()
    modules = {
        module_name(path, package): path
        for path in package.rglob("*.py")
        if path.name != "__main__.py"
    }
    packages = {name for name, path in modules.items() if path.name == "__init__.py"}
    arrows: dict[str, set[str]] = {}
    for name, path in modules.items():
        if name in packages:
            continue
        targets = _imports(ast.parse(path.read_text(encoding="utf-8")))
        arrows[name] = {t for t in targets if t in modules and t not in packages and t != name}
    return arrows


def circles(arrows: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in arrows.get(node, ()):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(arrows):
        if node not in index:
            connect(node)
    return found


def longest_chain(arrows: dict[str, set[str]], start: str) -> list[str]:
    """The longest chain of imports from ``start`` down, ``start`` first (ties: by name)."""
    if circles(arrows):
        raise ValueError("chains are undefined while there are circles")
    return list(_chain(frozenset((k, frozenset(v)) for k, v in arrows.items()), start))


@cache
def _chain(arrows: frozenset[tuple[str, frozenset[str]]], start: str) -> tuple[str, ...]:
    targets = dict(arrows).get(start, frozenset())
    below = max((_chain(arrows, t) for t in sorted(targets)), key=len, default=())
    return (start, *below)


def levels(arrows: dict[str, set[str]]) -> int:
    """The longest chain of imports, counted in modules (1: nothing imports anything)."""
    return max((len(longest_chain(arrows, node)) for node in arrows), default=0)


def collapse(arrows: dict[str, set[str]], package: str) -> dict[str, set[str]]:
    """The same graph one level down from ``package``: each subpackage (or top-level module)
    one node, an arrow where any of its modules imports another's."""

    def top(name: str) -> str:
        return ".".join(name.split(".")[: package.count(".") + 2])

    collapsed: dict[str, set[str]] = {}
    for source, targets in arrows.items():
        collapsed.setdefault(top(source), set()).update(
            top(t) for t in targets if top(t) != top(source)
        )
    return collapsed


def main(argv: list[str]) -> int:
    by_package = "--packages" in argv
    with_chains = "--chains" in argv
    argv = [a for a in argv if a not in ("--packages", "--chains")]
    package = Path(argv[0] if argv else "regularization_pipeline/core")
    arrows = graph(package)
    if by_package:
        arrows = collapse(arrows, module_name(package.resolve() / "__init__.py", package.resolve()))
    found = circles(arrows)
    print(f"{package}: {len(arrows)} modules, {sum(map(len, arrows.values()))} import arrows")
    print(f"circles: {len(found)}" + "".join(f"\n  {' <-> '.join(c)}" for c in found))
    if not found:
        print(f"levels: {levels(arrows)}")
    if with_chains and not found:
        chains = sorted(
            (longest_chain(arrows, node) for node in arrows), key=lambda c: (-len(c), c)
        )
        for chain in chains:
            print(f"  {len(chain):2d}  {' -> '.join(chain)}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
