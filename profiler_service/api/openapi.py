"""The OpenAPI document of one service: exactly what THIS service accepts, so a schema fuzzer finds no mismatch.

FastAPI's generated document is patched in three ways:

- every 422 is documented as :class:`~profiler_service.api.schemas.ErrorBody` (``{detail, code}``, what the error
  handlers answer), never FastAPI's array-valued ``HTTPValidationError``;
- the request bodies carry this service's own values: the served backends and their dtypes as enums, ``batch`` and
  ``wait_s`` maxima, ``maxItems`` of ``ops``, and the op-spec pattern with channels and resolution bounded by the
  service's limits (``nas_ops.spec.spec_pattern``);
- every operation documents the refusals of the browser guard (``browser_safety``): 400 for a Host that is not one
  of the service's names, and for an operation that changes something 403 for a foreign Origin and 415 without a
  JSON content type or Authorization.

What no schema can say stays a documented 422: the multiply-add and memory limits of an op or a network
(``over_limit``), and an architecture whose ops do not chain (``invalid_architecture``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from nas_ops.spec import MAX_CHANNELS, MAX_RESOLUTION, spec_pattern
from profiler_service.engine.backends import Backend
from profiler_service.settings import ProfilerSettings

ERROR_BODY_REF = {"$ref": "#/components/schemas/ErrorBody"}
VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")
REQUEST_BODIES = ("LookupRequest", "MeasureRequest", "ArchitectureRequest")
HTTP_METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


def document_errors_as_error_body(schema: dict[str, Any]) -> None:
    """Every operation's 422 answers ErrorBody; FastAPI's validation-error schemas are dropped."""
    for path_item in schema.get("paths", {}).values():
        for method, operation in path_item.items():
            if method not in HTTP_METHODS:
                continue
            responses = operation.setdefault("responses", {})
            if operation.get("parameters") or operation.get("requestBody") or "422" in responses:
                responses["422"] = {
                    "description": "a value is malformed, out of range or over this service's limits",
                    "content": {"application/json": {"schema": ERROR_BODY_REF}},
                }
    components = schema.get("components", {}).get("schemas", {})
    for name in VALIDATION_SCHEMAS:
        components.pop(name, None)


#: What the browser guard (``browser_safety``) answers before any route: every operation may get the 400, an
#: operation that changes something the 403 and the 415.
BROWSER_REFUSALS = {
    "400": "host_not_allowed: the Host header is not one of this service's names (allowed_hosts)",
    "403": "origin_refused: the request comes from a web page of another origin (allowed_origins)",
    "415": "json_required: neither 'Content-Type: application/json' nor an Authorization header",
}


def document_browser_refusals(schema: dict[str, Any]) -> None:
    """Every operation documents the browser guard's refusals (as ErrorBody)."""
    for path_item in schema.get("paths", {}).values():
        for method, operation in path_item.items():
            if method not in HTTP_METHODS:
                continue
            responses = operation.setdefault("responses", {})
            for status, description in BROWSER_REFUSALS.items():
                if status == "400" or method not in ("get", "head", "options"):
                    responses.setdefault(status, {"description": description,
                                                  "content": {"application/json": {"schema": ERROR_BODY_REF}}})


def apply_service_values(schema: dict[str, Any], settings: ProfilerSettings, backends: dict[str, Backend]) -> None:
    """The served backends, their dtypes and this service's limits in the request bodies and the table filters."""
    names = sorted(backends)
    dtypes = sorted({dtype for backend in backends.values() for dtype in backend.dtypes})
    pattern = spec_pattern(min(settings.max_channels, MAX_CHANNELS), min(settings.max_resolution, MAX_RESOLUTION))
    components = schema.get("components", {}).get("schemas", {})
    for name in REQUEST_BODIES:
        properties = components.get(name, {}).get("properties", {})
        if not properties:
            continue
        properties["backend"]["enum"] = names
        if properties["backend"].get("default") not in names:  # the default backend is not served here
            properties["backend"].pop("default", None)
            components[name].setdefault("required", []).append("backend")
        properties["dtype"]["enum"] = dtypes
        properties["batch"]["maximum"] = settings.max_batch
        if "wait_s" in properties:
            properties["wait_s"]["maximum"] = settings.max_wait_s
        if "ops" in properties:
            properties["ops"]["maxItems"] = settings.max_ops_per_request
            properties["ops"]["items"]["pattern"] = pattern
    for parameter in schema.get("paths", {}).get("/v1/table", {}).get("get", {}).get("parameters", []):
        if parameter["name"] == "backend":
            for option in parameter["schema"].get("anyOf", [parameter["schema"]]):
                if option.get("type") == "string":
                    option["enum"] = names


def install_service_openapi(app: FastAPI, settings: ProfilerSettings,
                            served_backends: Callable[[], dict[str, Backend]]) -> None:
    """Replace ``app.openapi`` by the patched document (built once; ``served_backends()`` gives the backends)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            document_errors_as_error_body(schema)
            document_browser_refusals(schema)
            apply_service_values(schema, settings, served_backends())
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
