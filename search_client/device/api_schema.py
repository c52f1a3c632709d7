"""The parts of the profiler service's REST API schema that the client relies on, defined once for the client.

They mirror the service's API schema (``profiler_service.api.schemas``: the job statuses and the ``Stats``
object); the client talks to devices over HTTP and imports neither ``profiler_service`` nor ``latency_db``, so a
change to those response fields on the service must be made here too.
"""

from __future__ import annotations

#: The status of a job that finished with every item measured.
JOB_DONE = "done"
#: The statuses of a job that will not change any more (mirrors the service's job statuses).
JOB_FINISHED = (JOB_DONE, "failed", "cancelled")
#: The fields of the service's ``Stats`` object of one measurement (milliseconds; ``samples``: timed runs).
STATS_FIELDS = ("median_ms", "mean_ms", "std_ms", "min_ms", "p10_ms", "p90_ms", "iqr_ms", "samples")
