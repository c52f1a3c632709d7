"""Latency tables: build from devices, file format, E[LAT], the multi-device objective."""
