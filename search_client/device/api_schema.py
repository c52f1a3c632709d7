"""The parts of the profiler service's REST API schema that the client relies on, defined once for the client.

They mirror the service's API schema (``profiler_service.api.schemas``: the job statuses and the ``Stats``
object, the grammar of a protocol version); the client talks to devices over HTTP and imports neither ``profiler_service`` nor ``latency_db``, so a
change to those response fields on the service must be made here too.
"""

from __future__ import annotations

#: The status of a job that finished with every item measured.
JOB_DONE = "done"
#: The statuses of a job that will not change any more (mirrors the service's job statuses).
JOB_FINISHED = (JOB_DONE, "failed", "cancelled")
#: The fields of the service's ``Stats`` object of one measurement (milliseconds; ``samples``: timed runs).
STATS_FIELDS = ("median_ms", "mean_ms", "std_ms", "min_ms", "p10_ms", "p90_ms", "iqr_ms", "samples")

#: The job fields the client reads besides its progress: the protocol version the job measures in (its cache
#: regime) and ``attached`` (true when a measure request was answered with a queued or running job doing the same
#: work, instead of a new one).
JOB_PROTOCOL_VERSION, JOB_ATTACHED = "protocol_version", "attached"


def regime_of_version(version: str) -> str:
    """The cache regime a protocol version names (docs/protocol.md "Protocol versions"): its ``+warm`` or
    ``+flush<K>`` part, ``cold`` for anything else (mirrors the service's ``regime_of_version``)."""
    for part in version.split("+")[1:]:
        if part == "warm" or (part.startswith("flush") and part[5:].isdigit()):
            return part
    return "cold"
