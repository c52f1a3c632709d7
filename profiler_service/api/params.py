"""Path and query parameters of the API, bounded by what the database columns hold.

A value outside a column's range would reach the driver and fail there (SQLite: "Python int too large to convert
to SQLite INTEGER"; PostgreSQL: integer out of range): a 500. Each integer parameter carries the range of the column
it is compared with, on the narrowest supported backend (PostgreSQL ``integer`` is 32-bit, SQLite's is 64-bit), so
FastAPI answers a 422 naming the bound, and the OpenAPI schema shows it.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query
from sqlalchemy import BigInteger, Column, Integer, SmallInteger

from latency_db.models import Job, Measurement


def column_int_range(column: Column) -> tuple[int, int]:
    """(min, max) of an integer column on every supported backend."""
    kind = column.type
    if isinstance(kind, BigInteger):
        bits = 64
    elif isinstance(kind, SmallInteger):
        bits = 16
    elif isinstance(kind, Integer):
        bits = 32  # PostgreSQL integer; SQLite stores up to 64 bits, the narrower range holds on both
    else:
        raise TypeError(f"column {column.name}: {kind!r} is not an integer type")
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


JOB_ID_MAX = column_int_range(Job.__table__.c.id)[1]
BATCH_MAX = column_int_range(Measurement.__table__.c.batch)[1]
THREADS_MAX = column_int_range(Measurement.__table__.c.threads)[1]

JobId = Annotated[int, Path(ge=1, le=JOB_ID_MAX, description="a job id", examples=[1])]
BatchFilter = Annotated[int | None, Query(ge=1, le=BATCH_MAX, description="only rows of this batch size")]
ThreadsFilter = Annotated[int | None, Query(ge=1, le=THREADS_MAX, description="only rows of this thread count")]
