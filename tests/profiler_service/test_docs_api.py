"""docs/api.md documents every endpoint of the OpenAPI schema (and names none the service lacks)."""

from __future__ import annotations

import re
from pathlib import Path

from profiler_service.api.app import create_app
from profiler_service.settings import ProfilerSettings

API_MD = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def _schema_endpoints(tmp_path: Path) -> set[str]:
    app = create_app(ProfilerSettings(db=f"sqlite:///{tmp_path / 'docs.db'}"))
    return {f"{method.upper()} {path}" for path, operations in app.openapi()["paths"].items()
            for method in operations}


def test_every_endpoint_of_the_schema_is_in_api_md(tmp_path: Path) -> None:
    text = API_MD.read_text(encoding="utf-8")
    endpoints = _schema_endpoints(tmp_path)
    assert len(endpoints) >= 15
    assert sorted(e for e in endpoints if f"`{e}`" not in text) == []


def test_api_md_names_no_endpoint_the_service_lacks(tmp_path: Path) -> None:
    """The endpoint table at the top of api.md lists exactly the schema's endpoints."""
    table = re.findall(r"^\| `((?:GET|POST|PUT|DELETE|PATCH) /v1/\S*)` \|", API_MD.read_text("utf-8"), re.M)
    documented = set(table)
    assert len(table) == len(documented) and documented == _schema_endpoints(tmp_path)
