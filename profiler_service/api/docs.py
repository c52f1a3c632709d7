"""The API docs (Swagger UI at ``/docs``) served from assets installed with the package: devices are often offline.

FastAPI's default ``/docs`` page loads Swagger UI from a CDN, so on a device without internet the docs are blank.
The ``swagger-ui-bundle-v2`` distribution ships the Swagger UI files inside a Python package; they are mounted at
:data:`DOCS_ASSETS_URL` and the page references nothing else (no validator badge either: ``validatorUrl: null``).

The page's Content-Security-Policy (:func:`docs_policy`) allows this origin only, and of inline scripts only the
one that starts Swagger UI, by its SHA-256 hash; inline styles are allowed (Swagger UI writes ``style``
attributes into the descriptions it renders), and ``frame-ancestors 'none'`` forbids framing it.
"""

from __future__ import annotations

import base64
import hashlib
import re

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

DOCS_URL = "/docs"
DOCS_ASSETS_URL = "/docs/assets"
INLINE_SCRIPT = re.compile(r"<script([^>]*)>(.*?)</script>", re.S | re.I)


def install_offline_docs(app: FastAPI) -> None:
    """Serve Swagger UI at ``/docs`` from the packaged assets (create the app with ``docs_url=None``)."""
    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")

    @app.get(DOCS_URL, include_in_schema=False)
    def docs() -> HTMLResponse:
        page = get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - API docs",
            swagger_js_url=f"{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS_URL}/favicon-32x32.png",
            swagger_ui_parameters={"validatorUrl": None},
        )
        page.headers["Content-Security-Policy"] = docs_policy(bytes(page.body).decode())
        return page


def inline_scripts(html: str) -> list[str]:
    """The text of every ``<script>`` element of ``html`` that has no ``src``."""
    return [body for attributes, body in INLINE_SCRIPT.findall(html) if "src=" not in attributes and body.strip()]


def docs_policy(html: str) -> str:
    """The Content-Security-Policy of the docs page ``html``: this origin, plus its inline scripts by hash."""
    hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'"
                      for s in inline_scripts(html))
    return (f"default-src 'self'; script-src 'self' {hashes}; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; "
            "form-action 'none'")
