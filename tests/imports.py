"""The imports of the project's sources, read with ``ast`` (nothing is run): for the layout tests."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("nas_ops", "latency_db", "profiler_service", "search_client", "benchmarks")


def module_name(path: Path) -> str:
    """The dotted module name of a source file under :data:`ROOT` (a package's ``__init__`` is the package)."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every name ``path`` imports, anywhere in the file (function-local imports included): the module of each
    ``import`` and ``from ... import``, and ``module.name`` for each name taken from a module, since that name may be
    a submodule. Relative imports are resolved against the file's package."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[:len(package) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def sources(package: str) -> list[Path]:
    """The Python files of a package (a folder under :data:`ROOT`), sorted."""
    return sorted((ROOT / package).rglob("*.py"))
