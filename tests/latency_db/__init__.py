"""Tests of the latency_db package."""
