"""The FastAPI application factory."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from profiler_service import __version__
from profiler_service.api.browser_safety import BrowserGuard, SecurityHeaders, json_or_authorization
from profiler_service.api.docs import install_offline_docs
from profiler_service.api.db_errors import install_db_error_handlers
from profiler_service.api.errors import install_error_handlers
from profiler_service.api.openapi import install_service_openapi
from profiler_service.api.routers import canaries, device, fleet, health, jobs, lookup, measure, metrics, page, spaces, table
from profiler_service.settings import ProfilerSettings
from profiler_service.api.state import ServiceState, select_backends
from profiler_service.engine.backends import Backend


API_PREFIX = "/v1"


class BodySizeLimit:
    """413 for a request body over ``max_bytes`` (by Content-Length, or counted while it streams)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._reject(send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                # an HTTPException: FastAPI's body reader passes it on (any other error it turns into a 400)
                raise BodyTooLarge(self.max_bytes)
            return message

        try:
            await self.app(scope, counting_receive, send)
        except BodyTooLarge:  # raised outside a route (the route's handler answers it otherwise)
            await self._reject(send)

    async def _reject(self, send: Send) -> None:
        body = b'{"detail": "%s", "code": "too_large"}' % BodyTooLarge(self.max_bytes).detail.encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class RequestCounter:
    """Counts every request by method, route template and status in the service's metrics (a pure ASGI middleware:
    an error raised while the body streams in, like :class:`BodyTooLarge`, passes through unchanged)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # an exception that escapes the app becomes a 500 outside this middleware

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            # The route's template (not the raw path) keeps the label set small: /v1/jobs/{job_id}.
            route = scope.get("route")
            in_api = route is not None and scope["path"].startswith(API_PREFIX)
            path = API_PREFIX + route.path if in_api else "unmatched"
            service = getattr(scope["app"].state, "service", None)
            if service is not None:
                service.metrics.requests.labels(scope["method"], path, str(status)).inc()


class BodyTooLarge(StarletteHTTPException):
    """A request body over the limit, found while it streams in (a chunked body declares no length)."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"request body larger than {max_bytes} bytes")


def create_app(settings: ProfilerSettings | None = None, state: ServiceState | None = None) -> FastAPI:
    """The service app. Its lifespan opens the database (already migrated to head) and runs the job worker.

    ``state``: a service state already opened (``serve`` opens it before the server starts, so that a database
    error is one clear line, not a traceback from inside the server); None: the lifespan opens it.
    """
    settings = settings or ProfilerSettings()
    stopping = threading.Event()  # set when the server begins to shut down: long-polls answer at once

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service = state if state is not None else ServiceState(settings)
        service.worker.start()  # resumes jobs a killed process left pending
        app.state.service = service
        try:
            yield
        finally:
            stopping.set()
            service.close()  # the worker stops after the item in flight

    app = FastAPI(
        title="proxyless-hw profiler",
        version=__version__,
        description="Measures candidate ops on this device and serves their latency F(o) for ProxylessNAS.",
        lifespan=lifespan,
        docs_url=None,  # served from packaged assets instead of a CDN: install_offline_docs
        redoc_url=None,
        dependencies=[Depends(json_or_authorization(settings))],  # no POST a page of another site could send
    )
    app.state.stopping = stopping
    install_error_handlers(app)
    install_db_error_handlers(app)
    install_offline_docs(app)

    def served_backends() -> dict[str, Backend]:
        service = getattr(app.state, "service", None)
        return service.backends if service is not None else select_backends(settings.backend_names())

    install_service_openapi(app, settings, served_backends)
    for module in (health, device, lookup, measure, jobs, canaries, table, metrics, fleet, spaces):
        app.include_router(module.router, prefix=API_PREFIX)
    app.include_router(page.router)
    app.mount(page.ASSETS_URL, page.assets(), name="web")

    app.add_middleware(RequestCounter)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
    app.add_middleware(BrowserGuard, settings=settings)  # before anything reads the request: browser_safety
    app.add_middleware(SecurityHeaders)  # outermost: every answer, a refusal of the guard's included
    return app
