"""HTTP client of the device services (httpx only) and a local profiler launcher."""
