"""What makes ``POST /v1/lookup`` cheap: the op checks and the stored stats it already knows, kept per service.

A search client asks for the same hundreds of specs again and again. Two bounded caches spare their cost:

- :class:`CheckedOps`: the specs found canonical and within this service's limits at a (batch, dtype). Only
  successes are kept; a spec not known runs the full check (:func:`~profiler_service.api.limits.parse_op`), so a
  bad op answers exactly the 422 it always did, and the first bad op by index is still the one named.
- :class:`StoredStats`: per measurement context, each looked-up spec's answer as a JSON fragment (its Stats, or
  "missing"), labelled with the context's fingerprint in the store
  (:func:`~latency_db.repository.measurements.context_fingerprint`). Every lookup first reads the fingerprint (the
  context's version row, which every write raises); a different one (any write to the context, by this process or
  another one on a shared database) drops the context's fragments, and the specs it lacks are read again (one Core
  select).
  A lookup therefore answers what the store held when it read the fingerprint, never anything older.

A stored row that cannot be read (a statistic that is not a finite number: another program wrote it) is answered
as missing and counted in ``unreadable`` (:data:`UNREADABLE_FRAGMENT`); measuring the op again replaces the row.

The answer (:class:`LookupAnswer`) is the JSON of :class:`~profiler_service.api.schemas.LookupResponse`, its
fragments joined as bytes. The Stats fields are the model's (``Stats.model_fields``), read from the measurement
columns of the same names, so a field added to Stats flows through.
"""

from __future__ import annotations

import json
import logging
import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from latency_db.context import MeasurementContext
from latency_db.repository.measurements import context_fingerprint, lookup_columns
from latency_db.repository.readable import UNREADABLE_ERRORS
from profiler_service.api.limits import check_ops_request, parse_op
from profiler_service.api.schemas import LookupResponse, Stats
from profiler_service.api.state import ServiceState
from profiler_service.settings import ProfilerSettings

log = logging.getLogger(__name__)

#: Most (spec, batch, dtype) entries :class:`CheckedOps` keeps; when full it starts again from empty.
MAX_CHECKED_OPS = 100_000
#: Most measurement contexts :class:`StoredStats` keeps (the least recently looked-up one goes first).
MAX_CONTEXTS = 32
#: Most specs :class:`StoredStats` keeps per context; when full, the context starts again from empty.
MAX_SPECS_PER_CONTEXT = 100_000

STATS_FIELDS = tuple(Stats.model_fields)
#: The answer's fields that are not the context's nor the caller's: assembled here from the fragments.
ASSEMBLED_FIELDS = ("found", "missing")
_UNKNOWN: Any = object()  # marks a spec this cache has not looked up yet
#: The fragment of a spec whose stored row cannot be read: answered as missing, counted as unreadable.
UNREADABLE_FRAGMENT = b""


class CheckedOps:
    """The op specs known to pass :func:`~profiler_service.api.limits.parse_op` under one service's settings (its
    limits do not change while it runs), per (batch, dtype). The bound is approximate under concurrent lookups."""

    def __init__(self, settings: ProfilerSettings, max_entries: int = MAX_CHECKED_OPS) -> None:
        self.settings = settings
        self.max_entries = max_entries
        self._valid: dict[tuple[int, str], set[str]] = {}
        self._size = 0

    def check(self, ops: Sequence[str], batch: int, dtype: str) -> None:
        """What :func:`~profiler_service.api.limits.parse_ops` checks, with the same errors; the specs that pass
        are remembered."""
        check_ops_request(self.settings, ops, batch)
        valid = self._valid.get((batch, dtype), set())
        unknown = [(index, text) for index, text in enumerate(ops) if text not in valid]
        if not unknown:
            return
        for index, text in unknown:  # in index order: the first bad op is the one the 422 names
            parse_op(self.settings, index, text, batch, dtype)
        if self._size + len(unknown) > self.max_entries:
            self._valid, self._size = {}, 0
        self._valid.setdefault((batch, dtype), set()).update(text for _, text in unknown)
        self._size += len(unknown)


@dataclass
class ContextStats:
    """The JSON fragments of one context's looked-up specs (None: not stored), valid while the context's
    fingerprint is ``fingerprint``."""

    fingerprint: tuple[Any, ...]
    fragments: dict[str, bytes | None] = field(default_factory=dict)


class StoredStats:
    """Per (device, context): what :class:`ContextStats` holds, replaced when the store's fingerprint changes."""

    def __init__(self, max_contexts: int = MAX_CONTEXTS, max_specs: int = MAX_SPECS_PER_CONTEXT) -> None:
        self.max_contexts = max_contexts
        self.max_specs = max_specs
        self._contexts: OrderedDict[tuple[int, MeasurementContext], ContextStats] = OrderedDict()
        self._lock = threading.Lock()

    def fragments(self, session: Session, device_id: int, context: MeasurementContext,
                  op_specs: Sequence[str]) -> dict[str, bytes | None]:
        """The fragment of each distinct spec of ``op_specs``, in their order (None: not stored in the context;
        :data:`UNREADABLE_FRAGMENT`: stored, but its row cannot be read).

        Reads the context's fingerprint, then (after it, see ``context_fingerprint``) the specs this cache lacks
        for that fingerprint, in the same session.
        """
        fingerprint = context_fingerprint(session, device_id=device_id, context=context)
        entry = self._current(device_id, context, fingerprint)
        known = entry.fragments  # this lookup's view (another lookup may replace the dict, never empty it)
        answer = {spec: known.get(spec, _UNKNOWN) for spec in op_specs}
        unknown = [spec for spec, fragment in answer.items() if fragment is _UNKNOWN]
        if unknown:
            read = read_fragments(session, device_id, context, unknown)
            answer.update(read)
            if len(known) + len(read) > self.max_specs:
                entry.fragments = read
            else:
                known.update(read)
        return answer

    def _current(self, device_id: int, context: MeasurementContext, fingerprint: tuple[Any, ...]) -> ContextStats:
        key = (device_id, context)
        with self._lock:
            entry = self._contexts.get(key)
            if entry is None or entry.fingerprint != fingerprint:
                entry = self._contexts[key] = ContextStats(fingerprint)
            self._contexts.move_to_end(key)
            while len(self._contexts) > self.max_contexts:
                self._contexts.popitem(last=False)
            return entry


def read_fragments(session: Session, device_id: int, context: MeasurementContext,
                   op_specs: Sequence[str]) -> dict[str, bytes | None]:
    """The fragment of each of ``op_specs`` as stored now (None: not stored; :data:`UNREADABLE_FRAGMENT`: its row
    cannot be read). One Core select; the specs one by one when a row of them cannot be loaded."""
    def read(specs: Sequence[str]) -> dict[str, Any]:
        return lookup_columns(session, device_id=device_id, context=context, op_specs=specs, columns=STATS_FIELDS)

    try:
        rows: dict[str, Any] = read(op_specs)
    except UNREADABLE_ERRORS:
        rows = {}
        for spec in op_specs:
            try:
                rows.update(read([spec]))
            except UNREADABLE_ERRORS:
                rows[spec] = None
    return {spec: _fragment_or_unreadable(spec, rows[spec]) if spec in rows else None for spec in op_specs}


def _fragment_or_unreadable(op_spec: str, row: object) -> bytes:
    try:
        if row is not None:
            return stats_fragment(op_spec, row)
    except UNREADABLE_ERRORS as exc:
        log.warning("lookup: the stored row of %s cannot be read: %s", op_spec, str(exc).splitlines()[0])
    return UNREADABLE_FRAGMENT


def stats_of(row: object) -> Stats:
    """The Stats of a measurement row (an ORM object, or a row of its columns): the columns of the same names."""
    return Stats(**{name: getattr(row, name) for name in STATS_FIELDS})


def stats_fragment(op_spec: str, row: object) -> bytes:
    """``"<spec>":{<its Stats>}``: one member of the answer's ``found`` object."""
    return json.dumps(op_spec).encode() + b":" + stats_of(row).model_dump_json().encode()


@dataclass(frozen=True)
class LookupAnswer:
    """A lookup's ``found`` members (JSON fragments) and ``missing`` specs, in the order the request named them, and
    how many of the missing are stored but cannot be read (``unreadable``)."""

    found: list[bytes]
    missing: list[str]
    unreadable: int = 0

    @classmethod
    def of(cls, fragments: dict[str, bytes | None]) -> LookupAnswer:
        """From :meth:`StoredStats.fragments` (None or :data:`UNREADABLE_FRAGMENT`: missing)."""
        return cls(list(filter(None, fragments.values())),
                   [spec for spec, fragment in fragments.items() if not fragment],
                   sum(fragment == UNREADABLE_FRAGMENT for fragment in fragments.values()))

    def json(self, fields: dict[str, Any]) -> bytes:
        """The JSON of a :class:`~profiler_service.api.schemas.LookupResponse`: ``fields`` (every field but
        ``found`` and ``missing``) validated by the model, then ``found`` and ``missing``."""
        others = LookupResponse(**fields, found={}, missing=[]).model_dump(mode="json",
                                                                            exclude=set(ASSEMBLED_FIELDS))
        head = json.dumps(others, separators=(",", ":")).encode()
        return b"".join((head[:-1], b"," if others else b"", b'"found":{', b",".join(self.found), b'},"missing":',
                         json.dumps(self.missing).encode(), b"}"))


class LookupCache:
    """The caches of one service (its settings and its store)."""

    def __init__(self, settings: ProfilerSettings) -> None:
        self.checked = CheckedOps(settings)
        self.stored = StoredStats()


_caches: weakref.WeakKeyDictionary[ServiceState, LookupCache] = weakref.WeakKeyDictionary()
_caches_lock = threading.Lock()


def lookup_cache_of(state: ServiceState) -> LookupCache:
    """The lookup caches of a running service (made at its first lookup, gone with the service)."""
    with _caches_lock:
        cache = _caches.get(state)
        if cache is None:
            cache = _caches[state] = LookupCache(state.settings)
        return cache
