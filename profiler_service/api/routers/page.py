"""The web page: ``/`` serves ``web/index.html``; its script and style sheet are static files under ``/web``.

The assets are installed with the package (``[tool.setuptools.package-data]``) and name no other host: the page
works on a device without internet. Everything it shows comes from the JSON API under ``/v1``.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from profiler_service.api.browser_safety import CONTENT_SECURITY_POLICY

#: The folder of the page's files (index.html, app.js, style.css).
ASSETS_DIR = Path(__file__).resolve().parent.parent / "web"
#: Where the assets are served.
ASSETS_URL = "/web"

router = APIRouter(include_in_schema=False)


@router.api_route("/", methods=["GET", "HEAD"])
def page() -> FileResponse:
    """The page (always re-validated, so an upgraded service serves its new page); HEAD answers as GET does, for
    probes and link checkers."""
    return FileResponse(ASSETS_DIR / "index.html", media_type="text/html; charset=utf-8",
                        headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY, "Cache-Control": "no-cache"})


def assets() -> StaticFiles:
    """The static files app to mount at :data:`ASSETS_URL`."""
    return StaticFiles(directory=ASSETS_DIR)
