"""Which way the service's and the store's imports point (read from the sources, not run): latency_db never imports
profiler_service; inside profiler_service, engine/ imports nothing of api/ or jobs/, and jobs/ nothing of api/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _imported_modules(path: Path) -> set[str]:
    """The modules ``path`` imports by absolute name (the service and the store use no relative imports)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"
            found.add(node.module or "")
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


@pytest.mark.parametrize(("package", "forbidden"), [
    ("latency_db", ("profiler_service", "search_client")),
    ("profiler_service/engine", ("profiler_service.api", "profiler_service.jobs", "search_client")),
    ("profiler_service/jobs", ("profiler_service.api", "search_client")),
])
def test_imports_point_one_way(package: str, forbidden: tuple[str, ...]) -> None:
    offending = {
        str(path.relative_to(ROOT)): sorted(name for name in _imported_modules(path)
                                            if any(name == f or name.startswith(f + ".") for f in forbidden))
        for path in sorted((ROOT / package).rglob("*.py"))
    }
    assert {path: names for path, names in offending.items() if names} == {}
