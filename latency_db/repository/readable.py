"""Rows other programs wrote: a malformed row is left out and counted, never an error for every reader.

Several profilers, of several versions, share one database, and anyone with access to it can write to it. A row
whose values cannot be read (JSON that does not parse, a timestamp that is not one, text or NaN where a number
belongs: SQLite stores what it is given) raises one of :data:`UNREADABLE_ERRORS` when it is loaded, or when a view
of it is built (an API model that validates it). The listings read such rows one by one and leave them out
(:func:`read_rows`, :func:`readable_views`), saying how many in :attr:`ReadRows.unreadable`; the rows that can be
read are answered as they are.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from sqlalchemy import Select
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

#: What reading or showing a malformed stored value raises (the one definition): json's JSONDecodeError and a
#: timestamp that does not parse are ValueErrors, and so is pydantic's ValidationError; a value of the wrong shape
#: (a list where an object belongs) raises TypeError.
UNREADABLE_ERRORS: tuple[type[Exception], ...] = (ValueError, TypeError)

T = TypeVar("T")
V = TypeVar("V")


class ReadRows(list[T]):
    """A list of rows read from the store, and how many malformed rows were left out of it (``unreadable``)."""

    def __init__(self, rows: Iterable[T] = (), unreadable: int = 0) -> None:
        super().__init__(rows)
        self.unreadable = unreadable


def read_rows(session: Session, stmt: Select[Any], entity: Any) -> ReadRows[Any]:
    """The ``entity`` objects ``stmt`` (a select of that entity) returns, in its order, without the rows that cannot
    be loaded (counted in ``unreadable``).

    One query when every row loads; when one does not, the ids are read with the same filters, order and limit,
    and each row is loaded on its own.
    """
    try:
        return ReadRows(session.scalars(stmt, execution_options={"populate_existing": True}))
    except UNREADABLE_ERRORS as exc:
        log.warning("a %s row cannot be read (%s): reading the rows one by one", entity.__tablename__, exc)
    rows: ReadRows[Any] = ReadRows()
    for row_id in session.scalars(stmt.with_only_columns(entity.id)):
        try:
            rows.append(session.get(entity, row_id, populate_existing=True))
        except UNREADABLE_ERRORS as exc:
            log.warning("left out %s row %s: it cannot be read (%s)", entity.__tablename__, row_id, exc)
            rows.unreadable += 1
    return rows


def readable_views(rows: Iterable[T], view: Callable[[T], V], what: str) -> ReadRows[V]:
    """``view(row)`` of every row whose view can be built; the others are left out and counted in ``unreadable``
    (with the rows ``rows`` itself left out, when it is a :class:`ReadRows`)."""
    views: ReadRows[V] = ReadRows(unreadable=getattr(rows, "unreadable", 0))
    for row in rows:
        try:
            views.append(view(row))
        except UNREADABLE_ERRORS as exc:
            log.warning("left out %s %s: a stored value cannot be read (%s)", what, getattr(row, "id", ""),
                        str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            views.unreadable += 1
    return views
