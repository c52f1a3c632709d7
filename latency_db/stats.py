"""The statistics of a measurement: the one definition of their names and types.

The measurement engine's ``Stats`` (``profiler_service.engine.stats``) and the API's ``Stats`` body
(``profiler_service.api.schemas``) take their fields from :class:`StatsFields`; the repository checks and stores
exactly :data:`STATS_KEYS`, the columns of that name in ``measurements`` and ``measurement_rounds``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import get_type_hints


@dataclass(frozen=True)
class StatsFields:
    """Robust statistics of one measurement, in milliseconds; ``samples`` is the number of timings they describe."""

    median_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    p10_ms: float
    p90_ms: float
    iqr_ms: float
    samples: int


#: The statistics by name, in order: the keys passed to ``upsert_measurement`` and exported.
STATS_KEYS: tuple[str, ...] = tuple(field.name for field in fields(StatsFields))


def stats_field_types() -> dict[str, type]:
    """Each statistic's type by name, in order (``float``, and ``int`` for ``samples``)."""
    return get_type_hints(StatsFields)
