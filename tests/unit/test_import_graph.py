"""The shape of the code: libs never imports services (service code is run by module name),
and no module imports itself back through others. Imports inside functions and under
`TYPE_CHECKING` count too: a lazy import hides a cycle, it does not remove it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Each import root and the top-level packages under it: the server's code, the benches, and
# the two client packages clinicians install on their own (`pip install clients/core`).
PACKAGES = {
    ROOT: ("libs", "services", "load_test"),
    ROOT / "clients" / "core": ("dicomflow_client",),
    ROOT / "clients" / "desktop": ("dicomflow_desktop",),
}
CLIENTS = ("dicomflow_client", "dicomflow_desktop")


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {
        module_name(p, root): p
        for root, packages in PACKAGES.items()
        for package in packages
        for p in sorted((root / package).rglob("*.py"))
    }


def top(name: str) -> str:
    return name.partition(".")[0]


def imported(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules `name` imports (a `from package import module` names the module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for a in node.names:
                found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base)
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imported(name, path, known) for name, path in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_the_project() -> None:
    g = graph()
    assert "services.extractor.handlers" in g["services.extractor.bootstrap"]
    assert "libs.runtime.service" in g["services.extractor.bootstrap"]
    assert len(g) > 150


def test_the_graph_sees_the_clients_and_benches() -> None:
    g = graph()
    assert "dicomflow_client" in {top(t) for t in g["dicomflow_desktop.window"]}
    assert any(top(n) == "load_test" for n in g)


def test_libs_never_imports_services() -> None:
    upward = {
        (name, target)
        for name, targets in graph().items()
        if top(name) == "libs"
        for target in targets
        if top(target) in ("services", "load_test")
    }
    assert upward == set(), "run service code by module name (runpy) instead"


def test_the_clients_stand_alone() -> None:
    """The client packages are installed on clinicians' machines without the server's code:
    an import of libs or services there works in the repository and fails on a workstation."""
    reaching = {
        (name, target)
        for name, targets in graph().items()
        if top(name) in CLIENTS
        for target in targets
        if top(target) not in CLIENTS
    }
    assert reaching == set()


def test_no_import_cycles() -> None:
    assert cycles(graph()) == []


def test_a_cycle_is_found() -> None:
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(g) == [["a", "b", "c"]]


def test_relative_and_from_package_imports_are_resolved(tmp_path: Path) -> None:
    pkg = tmp_path / "libs" / "x"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\nfrom libs.x.c import thing\n")
    known = {"libs.x", "libs.x.a", "libs.x.b", "libs.x.c"}
    assert imported("libs.x.a", pkg / "a.py", known) == {"libs.x.b", "libs.x.c"}
