"""latency_db package."""
