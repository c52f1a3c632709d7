"""Offline analyses of saved fidelity reports: they read the JSON reports under runs/benchmarks, measure nothing,
and write their markdown beside them. Run each as ``.venv/bin/python -m benchmarks.analysis.NAME``."""
