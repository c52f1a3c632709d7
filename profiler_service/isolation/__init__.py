"""Measuring outside the service process: a child process per backend that builds and times job items under
real memory and time limits.

Why: building and timing an op can take gigabytes and minutes (exporting a 512x512 convolution to ONNX, a network
of thousands of blocks); inside the service process that memory and that time would be shared with the API, the
database sessions and every other job, and an allocation the OS refuses, or the OOM killer, would take them all
down. A child process can be limited, killed and restarted while the service goes on.

- :mod:`~profiler_service.isolation.frames`: the wire format between the two processes.
- :mod:`~profiler_service.isolation.memory`: reading and resetting a process's resident memory and its peak.
- :mod:`~profiler_service.isolation.child`: the measuring process's loop (``python -m
  profiler_service.isolation.child``).
- :mod:`~profiler_service.isolation.process`: :class:`~profiler_service.isolation.process.MeasuringProcess`, the
  service's side: requests with a memory limit, a time limit and a stop hook, enforced by ending the child.
- :mod:`~profiler_service.isolation.measurer`: :class:`~profiler_service.isolation.measurer.IsolatedMeasurer`, the
  job worker's measuring functions (ops, networks, canaries, duets) served by those processes.
"""
