"""`python -m plcbridge.tools.imports`: the import graph of plcbridge checked for cycles and
for the imports the layering forbids. Exit status 1 with each problem on a line.

It reads the source (ast, nothing is imported), so it sees lazy imports inside functions too:
a cycle through a lazy import is still two modules that cannot be understood one without the
other. Imports under `if TYPE_CHECKING:` are left out: they exist for the type checker only.

The repository's folders are mapped onto the package as pyproject.toml's package-dir does
(inference/ is plcbridge.inference, ...), so the check runs on a checkout without installing.
Import-linter does this kind of check, but finds modules through the installed package, which
an editable install with a package-dir mapping does not lay out as folders.
"""

from __future__ import annotations

import ast
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# (importer prefix, imported prefix, why): no module under the first may import one under the second.
FORBIDDEN: tuple[tuple[str, str, str], ...] = (
    ("plcbridge.config", "plcbridge.adapters", "the schema is data: it must not load protocol or camera drivers"),
    ("plcbridge.contract", "plcbridge.adapters", "the contract is the one truth both ends import; it depends on nothing"),
    ("plcbridge.contract", "plcbridge.simulators", "the contract is the one truth both ends import; it depends on nothing"),
    ("plcbridge.simulators", "plcbridge.adapters", "the simulator is the PLC the bridge did not write: it shares the "
                                                   "contract, never the bridge's client code"),
    ("plcbridge.adapters", "plcbridge.simulators", "adapters talk to PLCs, never to our simulator"),
)
# The runtime never imports the tools (the reverse is how tools work).
RUNTIME_FREE_OF_TOOLS = "plcbridge.tools"


def package_dirs(root: Path = ROOT) -> dict[str, Path]:
    """Package name -> folder, from pyproject.toml's [tool.setuptools] package-dir."""
    conf = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    return {pkg: root / folder for pkg, folder in conf.items()}


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Every first-party module name -> its file."""
    out: dict[str, Path] = {}
    dirs = package_dirs(root)
    for pkg, folder in dirs.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([pkg, *parts])
            # A folder mapped to its own package (plcbridge.inference) is not also plcbridge's.
            if not any(other != pkg and other.startswith(pkg + ".") and name.startswith(other) for other in dirs):
                out[name] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, name: str, is_package: bool, known: set[str]) -> Iterator[tuple[str, int]]:
    """(imported first-party module, line) for each import in the tree."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in known:
                    yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in known:
                    yield sub, node.lineno
                elif target in known:
                    yield target, node.lineno
        stack.extend(ast.iter_child_nodes(node))


def graph(root: Path = ROOT) -> dict[str, dict[str, int]]:
    """Module -> {imported module: first line}."""
    mods = modules(root)
    known = set(mods)
    out: dict[str, dict[str, int]] = {}
    for name, path in mods.items():
        edges: dict[str, int] = {}
        for target, line in _imports(ast.parse(path.read_text(), str(path)), name, path.name == "__init__.py", known):
            if target != name:
                edges.setdefault(target, line)
        out[name] = edges
    return out


def cycles(g: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in g.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(g):
        if v not in index:
            visit(v)
    return found


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def problems(root: Path = ROOT) -> list[str]:
    g = graph(root)
    out = [f"import cycle: {' <-> '.join(c)}" for c in cycles(g)]
    mods = modules(root)
    for importer, edges in sorted(g.items()):
        for target, line in sorted(edges.items()):
            where = f"{mods[importer].relative_to(root)}:{line}"
            for src, dst, why in FORBIDDEN:
                if _under(importer, src) and _under(target, dst):
                    out.append(f"{where}: {importer} imports {target}: {why}")
            if _under(target, RUNTIME_FREE_OF_TOOLS) and not _under(importer, RUNTIME_FREE_OF_TOOLS) \
                    and importer != "plcbridge.cli":
                out.append(f"{where}: {importer} imports {target}: the runtime never imports the tools (only the CLI)")
    return out


def main() -> int:
    found = problems()
    for line in found:
        print(line)
    n = len(graph())
    print(f"plcbridge imports: {n} modules, {len(found)} problem(s)", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
