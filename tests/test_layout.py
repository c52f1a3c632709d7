"""The dependency rule of docs/architecture.md, read from the sources (nothing is run).

nas_ops <- latency_db <- profiler_service; search_client -> nas_ops only; inside the service, engine/ <- isolation/
<- jobs/ <- api/; no package imports benchmarks; and no import cycle between modules (function-local imports count: a cycle
broken only by importing inside a function is still a cycle).
"""

from __future__ import annotations

import pytest

from tests.imports import PACKAGES, ROOT, imported_modules, module_name, sources

OURS = ("nas_ops", "latency_db", "profiler_service", "search_client", "benchmarks")


def _offending(package: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    found = {}
    for path in sources(package):
        bad = sorted(name for name in imported_modules(path)
                     if any(name == f or name.startswith(f + ".") for f in forbidden))
        if bad:
            found[str(path.relative_to(ROOT))] = bad
    return found


@pytest.mark.parametrize(("package", "forbidden"), [
    ("nas_ops", ("latency_db", "profiler_service", "search_client", "benchmarks")),
    ("latency_db", ("profiler_service", "search_client", "benchmarks")),
    ("profiler_service", ("search_client", "benchmarks")),
    ("profiler_service/engine", ("profiler_service.api", "profiler_service.jobs", "profiler_service.isolation")),
    ("profiler_service/isolation", ("profiler_service.api", "profiler_service.jobs")),
    ("profiler_service/jobs", ("profiler_service.api",)),
    ("search_client", ("latency_db", "profiler_service", "benchmarks")),
])
def test_imports_point_one_way(package: str, forbidden: tuple[str, ...]) -> None:
    assert _offending(package, forbidden) == {}


def _cycles() -> list[list[str]]:
    """The strongly connected components of more than one module in the import graph of the packages. An edge into
    a package's ``__init__`` is left out: ``from pkg import submodule`` runs ``pkg/__init__`` first, which may
    import its submodules, and that is the package's own business, not a dependency between modules."""
    paths = {module_name(p): p for package in PACKAGES for p in sources(package)}
    packages = {name for name, path in paths.items() if path.name == "__init__.py"}
    graph = {name: sorted({n for n in imported_modules(path) if n in paths and n != name and n not in packages})
             for name, path in paths.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return cycles


def test_no_import_cycles() -> None:
    assert _cycles() == []


def test_the_cycle_check_sees_a_function_local_import(tmp_path, monkeypatch) -> None:
    """A cycle hidden in a function body is found (the check reads every import of a file)."""
    package = tmp_path / "cyclic"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from cyclic.b import g\n")
    (package / "b.py").write_text("def g():\n    from cyclic.a import f\n")
    import tests.imports as imports
    import tests.test_layout as layout
    monkeypatch.setattr(layout, "PACKAGES", ("cyclic",))
    monkeypatch.setattr(layout, "ROOT", tmp_path)
    monkeypatch.setattr(imports, "ROOT", tmp_path)
    assert layout._cycles() == [["cyclic.a", "cyclic.b"]]


def test_the_layout_of_docs_architecture_exists() -> None:
    for package in OURS:
        assert (ROOT / package / "__init__.py").is_file(), package
    for sub in ("engine", "isolation", "jobs", "api"):
        assert (ROOT / "profiler_service" / sub / "__init__.py").is_file(), sub
    assert not (ROOT / "profiler_service" / "jobs" / "views.py").exists()  # job views are the API's
