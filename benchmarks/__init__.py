"""Reproducible measurements of the project: table fidelity, search memory and cost, data pipeline, service load.

Run each from the repository root as a module, e.g. ``.venv/bin/python -m benchmarks.fidelity --help``. Every
benchmark prints its figures and writes its raw reports under ``runs/benchmarks/`` (ignored by git;
:data:`benchmarks.common.OUT_DIR`); ``benchmarks/results/`` holds only curated, dated reports.
"""
