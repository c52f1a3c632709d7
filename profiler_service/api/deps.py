"""FastAPI dependencies, as Annotated aliases: the service state, a DB session, the bearer-token check."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from profiler_service.api.errors import ApiError
from profiler_service.api.state import ServiceState


def get_state(request: Request) -> ServiceState:
    return request.app.state.service


def get_session(state: Annotated[ServiceState, Depends(get_state)]) -> Iterator[Session]:
    """A read session for one request (a deferred transaction); routes that write open their own
    ``latency_db.transactions.write_session`` instead."""
    with state.sessions() as session:
        yield session


#: Declares the bearer scheme in the OpenAPI schema; the check itself is require_token's (with its messages).
bearer_scheme = HTTPBearer(auto_error=False, description="the service's token (--token / PROFILER_TOKEN); "
                           "required by every mutating endpoint when one is configured")


def require_token(request: Request, state: Annotated[ServiceState, Depends(get_state)],
                  _: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]) -> None:
    """401 unless the request carries ``Authorization: Bearer <token>`` (when the service has a token)."""
    expected = state.settings.token_value()
    if expected is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise ApiError(401, "auth_required", "this endpoint needs 'Authorization: Bearer <token>'",
                       {"WWW-Authenticate": "Bearer"})
    if not secrets.compare_digest(given.strip().encode(), expected.encode()):
        raise ApiError(401, "auth_refused", "invalid bearer token", {"WWW-Authenticate": "Bearer"})


StateDep = Annotated[ServiceState, Depends(get_state)]
SessionDep = Annotated[Session, Depends(get_session)]
TokenDep = Annotated[None, Depends(require_token)]
