"""profiler_service package."""
