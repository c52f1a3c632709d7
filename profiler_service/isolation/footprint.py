"""What measuring an op or a whole network takes in a measuring process: an upper bound of its real peak
resident memory, from the tensor estimates of :mod:`nas_ops.counting`.

The request checks (:mod:`profiler_service.api.limits`) refuse an op or a network whose bound is above the
service's memory limit before anything is built; what they accept is still measured under the limit itself
(:mod:`profiler_service.isolation.child`), so a bound that is too low costs an item that fails at the limit,
never the service.

The bound of one op is ``RUNTIME_BYTES + COPIES[kind] x op_memory_bytes`` (activations at the batch plus weights).
``RUNTIME_BYTES`` is the measuring process with torch and ONNX Runtime loaded (about 320 MiB on a CPU build) plus
a runtime session; the copies are how many times the op's tensors are resident at the peak, which depends on the
kind: the protocol times the op inside its calibration sandwich (two boundary ops around it), the export to ONNX
runs it once in torch, and the runtime holds its own input, output and weights. An identity or a zero op is cheap
to compute but its input and output are copied at every step; an MBConv's expanded tensor dominates its estimate
already. The factors are upper envelopes of the peaks measured (VmHWM) for every kind on ort-cpu and torch-cpu
(``tests/profiler_service/test_isolation_footprint.py`` checks them over a grid of specs). A whole network's bound is
``RUNTIME_BYTES + NETWORK_WEIGHT_COPIES x weights + NETWORK_ACTIVATION_COPIES x largest activations`` (the export
and the session each hold the weights; one op's tensors are live at a time).
"""

from __future__ import annotations

from nas_ops.arch import Architecture
from nas_ops.counting import activation_bytes, op_memory_bytes, weight_bytes
from nas_ops.spec import OpSpec

MIB = 1 << 20
RUNTIME_BYTES = 448 * MIB
COPIES: dict[str, int] = {"conv": 7, "mbconv": 4, "mix": 6, "head": 12, "zero": 7, "identity": 14}
NETWORK_WEIGHT_COPIES = 6
NETWORK_ACTIVATION_COPIES = 3


def op_peak_bytes(spec: OpSpec, batch: int, dtype: str) -> int:
    """Upper bound of the measuring process's peak resident memory while it measures ``spec`` (module docstring)."""
    return RUNTIME_BYTES + COPIES[spec.kind] * op_memory_bytes(spec, batch, dtype)


def network_peak_bytes(arch: Architecture, batch: int, dtype: str) -> int:
    """Upper bound of the measuring process's peak resident memory while it measures the network of ``arch``."""
    specs = arch.specs()
    weights = sum(weight_bytes(spec, dtype) for spec in specs)
    activations = max(activation_bytes(spec, batch, dtype) for spec in specs)
    return RUNTIME_BYTES + NETWORK_WEIGHT_COPIES * weights + NETWORK_ACTIVATION_COPIES * activations
