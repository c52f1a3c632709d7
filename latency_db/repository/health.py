"""Database liveness check."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.orm import Session


def ping(session: Session) -> None:
    """Run ``SELECT 1``; raises the driver's error (wrapped by SQLAlchemy) when the database is unreachable."""
    value = session.execute(text("SELECT 1")).scalar_one()
    if value != 1:
        raise RuntimeError(f"database ping returned {value!r} instead of 1")
