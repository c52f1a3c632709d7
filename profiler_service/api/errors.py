"""API errors: every error response is ``{"detail": "<one clear message>", "code": "<short_code>"}``."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error answered to the caller with ``status`` and a message (raised by routes and helpers)."""

    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers


def bad_request(detail: str, code: str = "invalid_input") -> ApiError:
    """422: the request is well-formed JSON but a value is wrong."""
    return ApiError(422, code, detail)


def not_found(detail: str) -> ApiError:
    return ApiError(404, "not_found", detail)


def _error_response(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail, "code": code}, status_code=status, headers=headers)


def _location(loc: tuple | list) -> str:
    """('body', 'ops', 3) -> 'ops[3]'."""
    parts: list[str] = []
    for item in loc:
        if item in ("body", "query", "path") and not parts:
            continue
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "request"


def validation_message(exc: RequestValidationError) -> str:
    """One line naming each bad field, e.g. ``ops[3]: Value error, op spec field 'kernel': ...``."""
    messages = []
    for err in exc.errors()[:5]:
        msg = str(err.get("msg", "invalid"))
        messages.append(f"{_location(err.get('loc', ()))}: {msg}")
    more = len(exc.errors()) - len(messages)
    return "; ".join(messages) + (f"; and {more} more" if more > 0 else "")


def undecodable_body_message(exc: UnicodeDecodeError) -> str:
    """The 422 message of a JSON body that is not UTF-8 text."""
    return f"request body: not valid UTF-8, so not JSON ({exc.reason} at byte {exc.start})"


#: The 422 message of a JSON body nested deeper than the parser follows (Python's recursion limit, about 1,000).
TOO_DEEP_MESSAGE = "request body: JSON nested too deeply to parse (no request of this API nests more than a few levels)"


def install_error_handlers(app: FastAPI) -> None:
    """Make every error JSON with a message; an unexpected exception is logged and answered as a 500."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _error_response(exc.status, exc.code, exc.detail, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        malformed = any(err.get("type") == "json_invalid" for err in exc.errors())
        return _error_response(422, "invalid_json" if malformed else "invalid_input", validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        # FastAPI answers a malformed JSON body 422, but an undecodable one, or one nested deeper than the parser
        # recurses, 400: all three are one mistake, one answer
        if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError):
            return _error_response(422, "invalid_json", undecodable_body_message(exc.__cause__))
        if exc.status_code == 400 and isinstance(exc.__cause__, RecursionError):
            return _error_response(422, "invalid_json", TOO_DEEP_MESSAGE)
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(exc.status_code, "http_error")
        return _error_response(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return _error_response(500, "internal_error", f"internal error: {type(exc).__name__}")
