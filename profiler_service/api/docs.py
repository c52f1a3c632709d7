"""The API docs (Swagger UI at ``/docs``) served from assets installed with the package: devices are often offline.

FastAPI's default ``/docs`` page loads Swagger UI from a CDN, so on a device without internet the docs are blank.
The ``swagger-ui-bundle-v2`` distribution ships the Swagger UI files inside a Python package; they are mounted at
:data:`DOCS_ASSETS_URL` and the page references nothing else (no validator badge either: ``validatorUrl: null``).
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

DOCS_URL = "/docs"
DOCS_ASSETS_URL = "/docs/assets"


def install_offline_docs(app: FastAPI) -> None:
    """Serve Swagger UI at ``/docs`` from the packaged assets (create the app with ``docs_url=None``)."""
    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")

    @app.get(DOCS_URL, include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - API docs",
            swagger_js_url=f"{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS_URL}/favicon-32x32.png",
            swagger_ui_parameters={"validatorUrl": None},
        )
