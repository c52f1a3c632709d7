"""Device-side latency profiler service."""

__version__ = "0.1.0"
