"""The bound of what measuring an op takes (:mod:`profiler_service.isolation.footprint`) against the real peak
resident memory of a measuring process, for every op kind on both CPU backends: under a 1024 MiB limit each op of
the grid is either refused by its bound before anything is built, or measured with a real peak (VmHWM) below its
bound and below the limit."""

from __future__ import annotations

import pytest

from nas_ops.spec import parse_spec
from profiler_service.engine.backends import get_backend
from profiler_service.engine.protocol import ProtocolParams
from profiler_service.isolation.footprint import COPIES, op_peak_bytes
from profiler_service.isolation.measurer import IsolatedMeasurer

MIB = 1 << 20
LIMIT = 1024 * MIB
#: One op of every kind whose bound is close to the limit, and one far over it (refused).
GRID = [
    "conv_r256x256_c3-128_k3_s1_relu6",
    "mbconv_r128x128_c64-64_k7_e6_s1_relu6_skip",
    "mix_r128x128_c512-256_relu6",
    "head_r64x64_c512-1000",
    "zero_r128x128_c512-512_s1",
    "identity_r128x128_c512-512",
    "identity_r256x256_c256-256",
]


def test_the_grid_covers_every_kind_and_a_refusal() -> None:
    specs = [parse_spec(text) for text in GRID]
    assert {spec.kind for spec in specs} == set(COPIES)
    assert any(op_peak_bytes(spec, 1, "float32") > LIMIT for spec in specs)


@pytest.mark.parametrize("backend", ["ort-cpu", "torch-cpu"])
def test_every_op_is_refused_by_its_bound_or_measured_below_it_and_the_limit(backend: str) -> None:
    measurer = IsolatedMeasurer(op_memory_bytes=LIMIT, network_memory_bytes=LIMIT, time_limit_s=300)
    peaks = {}
    try:
        for text in GRID:
            spec = parse_spec(text)
            bound = op_peak_bytes(spec, 1, "float32")
            if bound > LIMIT:
                continue  # the request checks refuse it: nothing is built
            measured = measurer.measure_op_round(spec, get_backend(backend), 1, "float32", 1, ProtocolParams.fast())
            peaks[text] = (measured.peak_rss_bytes, bound)
    finally:
        measurer.close()
    assert len(peaks) == len(GRID) - 1
    over = {text: f"{peak / MIB:.0f} MiB > bound {bound / MIB:.0f} MiB" for text, (peak, bound) in peaks.items()
            if not peak <= min(bound, LIMIT)}
    assert not over, over
