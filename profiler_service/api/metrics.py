"""Prometheus metrics of one service instance (its own registry, so several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from latency_db.models import JOB_STATUSES

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ServiceMetrics:
    """Request counts, measurement counts and durations, and job gauges refreshed at scrape time."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "profiler_http_requests", "HTTP requests by route and status", ["method", "route", "status"],
            registry=self.registry,
        )
        self.measurements = Counter(
            "profiler_measurements", "ops and networks measured", ["backend", "kind"], registry=self.registry
        )
        self.measure_seconds = Histogram(
            "profiler_measure_seconds", "wall time of one measurement (protocol included)", ["backend"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60), registry=self.registry,
        )
        self.lookups = Counter("profiler_lookup_ops", "op specs looked up", ["result"], registry=self.registry)
        self.jobs = Gauge("profiler_jobs", "jobs by status", ["status"], registry=self.registry)
        self.stored = Gauge("profiler_stored_measurements", "measurement rows of this device", registry=self.registry)

    def render(self, job_counts: dict[str, int], stored: int) -> bytes:
        """The exposition text, with the job and row gauges set from the database first."""
        for status in JOB_STATUSES:
            self.jobs.labels(status).set(job_counts.get(status, 0))
        self.stored.set(stored)
        return generate_latest(self.registry)
