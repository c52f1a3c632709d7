"""The search client's layout by job: which subpackage may import what (read from the sources, not run)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "search_client"


def _imports(path: Path) -> set[str]:
    """Every module name ``path`` imports (absolute names; relative imports resolved against the package)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-node.level])
                names.add(f"{base}.{node.module}" if node.module else base)
            elif node.module:
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _modules(subpackage: str) -> list[Path]:
    return sorted((PACKAGE / subpackage).rglob("*.py"))


def _offending(subpackage: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    found = {}
    for path in _modules(subpackage):
        bad = sorted(name for name in _imports(path) if name.split(".")[0] in forbidden
                     or any(name == f or name.startswith(f + ".") for f in forbidden))
        if bad:
            found[str(path.relative_to(PACKAGE))] = bad
    return found


def test_the_subpackages_exist() -> None:
    for name in ("device", "table", "nas", "training", "cli", "plots"):
        assert (PACKAGE / name / "__init__.py").is_file(), name
    assert not (PACKAGE / "errors.py").exists()  # the exception tree lives in device/, the exit codes in cli/


def test_device_client_imports_neither_torch_nor_rich() -> None:
    assert _offending("device", ("torch", "rich", "search_client.table", "search_client.nas",
                                 "search_client.training", "search_client.cli", "search_client.plots")) == {}


@pytest.mark.parametrize("subpackage", ["nas", "training", "table"])
def test_algorithm_never_imports_the_cli_or_plots(subpackage: str) -> None:
    assert _offending(subpackage, ("search_client.cli", "search_client.plots", "rich", "typer")) == {}


def test_search_client_never_imports_the_service_or_the_database() -> None:
    for sub in ("device", "table", "nas", "training", "cli", "plots"):
        assert _offending(sub, ("profiler_service", "latency_db")) == {}, sub


def test_search_loop_holds_the_loop_only() -> None:
    """The loop module is the loop: config, schedule, checkpoint and logs live in their own modules."""
    source = (PACKAGE / "nas" / "search_loop.py").read_text(encoding="utf-8")
    tree = ast.parse(source)
    defined = {node.name for node in tree.body if isinstance(node, (ast.ClassDef, ast.FunctionDef))}
    assert defined.isdisjoint({"SearchConfig", "PhasedCosineLR", "weight_step", "entropy", "write_logs",
                               "evaluate"})
    assert len(source.splitlines()) < 400
    # one weight step for the whole package, one evaluation for search and retraining
    weight_steps = [p for p in _modules("nas") if "def weight_step(" in p.read_text(encoding="utf-8")]
    assert [p.name for p in weight_steps] == ["weight_step.py"]
    evaluations = [p for sub in ("nas", "training") for p in _modules(sub)
                   if "def evaluate(" in p.read_text(encoding="utf-8")]
    assert [p.name for p in evaluations] == ["train.py"]
