"""The measurement context: everything besides the device and the op that a stored latency depends on.

A stored row is identified by (device, op spec, context); a lookup, a job and an upsert each name one context. The
repository checks the fields (:func:`latency_db.repository.check_context`, ValueError naming the field).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any


@dataclass(frozen=True)
class MeasurementContext:
    """Backend, batch, dtype and thread count of a measurement, plus the hash of the environment it ran in
    (runtime versions, options, host fingerprint) and the protocol version (a preset included)."""

    backend: str
    batch: int
    dtype: str
    threads: int
    env_hash: str
    protocol_version: str

    def in_environment(self, env_hash: str, protocol_version: str) -> MeasurementContext:
        """The same request measured in another environment / under another protocol version."""
        return replace(self, env_hash=env_hash, protocol_version=protocol_version)

    def as_dict(self) -> dict[str, Any]:
        """The six fields by name (the keyword arguments of the measurement and job columns)."""
        return asdict(self)
