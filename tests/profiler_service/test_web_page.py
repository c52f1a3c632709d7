"""The web page's files: served at / and /web, installed with the package, naming no other host."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

from fastapi.testclient import TestClient

from profiler_service.api.routers.page import ASSETS_DIR

ROOT = Path(__file__).resolve().parents[2]
ASSETS = sorted(p for p in ASSETS_DIR.iterdir() if p.is_file())


def test_page_is_served_at_the_root_with_its_assets(client: TestClient) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.text == (ASSETS_DIR / "index.html").read_text(encoding="utf-8")
    assert "default-src 'self'" in response.headers["content-security-policy"]
    for asset, media_type in (("web/app.js", "text/javascript"), ("web/style.css", "text/css")):
        assert f'"{asset}"' in response.text
        served = client.get("/" + asset)
        assert served.status_code == 200 and served.headers["content-type"].startswith(media_type)
        assert served.text == (ASSETS_DIR / asset.removeprefix("web/")).read_text(encoding="utf-8")


def test_head_of_the_page_answers_like_get(client: TestClient) -> None:
    response = client.head("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert response.content == b""


def test_unknown_asset_is_a_json_404_and_the_page_is_not_in_the_api_schema(client: TestClient) -> None:
    response = client.get("/web/missing.js")
    assert response.status_code == 404 and set(response.json()) == {"detail", "code"}
    paths = client.get("/openapi.json").json()["paths"]
    assert "/" not in paths and not any(p.startswith("/web") for p in paths)


def test_assets_name_no_other_host() -> None:
    """No CDN, no font service: the page must work on a device without internet."""
    for asset in ASSETS:
        text = asset.read_text(encoding="utf-8")
        assert not re.search(r"https?://|(src|href)=\"//|url\(\s*['\"]?//|@import", text), asset.name


def test_every_element_the_script_looks_up_is_in_the_page() -> None:
    script = (ASSETS_DIR / "app.js").read_text(encoding="utf-8")
    page = (ASSETS_DIR / "index.html").read_text(encoding="utf-8")
    looked_up = set(re.findall(r"\$\(\"([a-z0-9-]+)\"\)", script))
    assert looked_up, "the script looks nothing up?"
    assert looked_up <= set(re.findall(r'id="([a-z0-9-]+)"', page))


def test_assets_are_package_data() -> None:
    """``pip install .`` (not only an editable install) ships every file of the page."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = config["tool"]["setuptools"]["package-data"]["profiler_service"]
    package_dir = ROOT / "profiler_service"
    for asset in ASSETS:
        relative = asset.relative_to(package_dir).as_posix()
        assert any(fnmatch.fnmatch(relative, pattern) for pattern in patterns), relative
