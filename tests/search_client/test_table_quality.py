"""A table knows its own quality: noisy entries and implausible orderings within a cell are measured again with
force (at most 2 extra passes, one job each); what stays is stored in the table file and said in one line, and
``lut --strict`` fails on it. A fixed cost the anchors' intercept brings near 0 is said with the unanchored one."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

import search_client.cli.devices as devices_module
from nas_ops.counting import count_flops, op_memory_bytes
from nas_ops.space import SPACES
from nas_ops.spec import format_spec
from search_client.cli import app
from search_client.device.client import LatencyClient
from search_client.table.latency_table import LatencyTable, build_table, table_specs
from search_client.table.quality import NOISE_BOUND, QUALITY_PASSES, entry_noise, implausible_pairs
from tests.search_client.conftest import FakeDevice, device_table, fake_stats, stats_of

runner = CliRunner()
MICRO = SPACES["micro-16"]
CELL = MICRO.cells()[2]
SMALL = format_spec(CELL.candidates[CELL.candidate_names.index("3x3_MBConv3")])
BIG = format_spec(CELL.candidates[CELL.candidate_names.index("5x5_MBConv6")])
NOISY = table_specs(MICRO)[4]


def noisy_first(op: str, times: int) -> Any:
    """Stats of a device under load while it measures ``op`` the first ``times`` times (IQR 95% of the median)."""
    def stats(spec: str, n: int) -> dict[str, Any]:
        return stats_of(fake_stats(spec)["median_ms"], 0.95) if spec == op and n < times else fake_stats(spec)
    return stats


def big_cheaper_first(times: int) -> Any:
    """A disturbed device that measures 5x5_MBConv6 at a third of 3x3_MBConv3 the first ``times`` times."""
    def stats(spec: str, n: int) -> dict[str, Any]:
        if spec == BIG and n < times:
            return stats_of(fake_stats(SMALL)["median_ms"] / 3)
        return fake_stats(spec)
    return stats


def test_the_fake_orderings_are_plausible_and_big_costs_more_than_small() -> None:
    big, small = CELL.candidates[CELL.candidate_names.index("5x5_MBConv6")], CELL.candidates[
        CELL.candidate_names.index("3x3_MBConv3")]
    assert count_flops(big) > count_flops(small) and op_memory_bytes(big, 1, "float32") > op_memory_bytes(
        small, 1, "float32")
    assert implausible_pairs(MICRO, {s: fake_stats(s) for s in table_specs(MICRO)}) == []


def test_noise_is_the_medians_interval_or_the_spread_of_the_rounds() -> None:
    # 25 samples with an IQR of 10% of the median: the median is known within 1.58 x 0.1 / 5
    assert entry_noise(stats_of(2.0, 0.1)) == pytest.approx(1.58 * 0.1 / 5)
    # single runs spread by 20% (a duet after a cache flush) over 250 samples: a well known median
    assert entry_noise({**stats_of(2.0, 0.2), "samples": 250}) < NOISE_BOUND / 2
    assert entry_noise({**stats_of(2.0, 0.1), "round_medians_ms": [1.5, 2.0, 2.5]}) == pytest.approx(0.25)
    assert entry_noise({**stats_of(0.0, 0.0)}) == 0.0
    assert NOISE_BOUND == 0.1 and QUALITY_PASSES == 2


def test_a_noisy_entry_is_measured_again_with_force_and_then_passes() -> None:
    device = FakeDevice(measure_stats=noisy_first(NOISY, 1))
    with device.client() as client:
        table = build_table(client, MICRO, backend="ort-cpu", poll_s=0.001, anchors=0)
    assert device.forced == [[NOISY]]  # one extra pass, one job, just that op
    assert table.quality.ok and table.quality.passes == 1 and table.stats[NOISY] == fake_stats(NOISY)


def test_an_implausible_ordering_is_measured_again_and_what_stays_is_stored() -> None:
    device = FakeDevice(measure_stats=big_cheaper_first(10))
    with device.client() as client:
        table = build_table(client, MICRO, backend="ort-cpu", poll_s=0.001, anchors=0)
    assert len(device.forced) == QUALITY_PASSES  # at most 2 extra passes, one job each
    assert all(ops[0] == BIG and SMALL in ops and len(ops) < len(table_specs(MICRO)) for ops in device.forced)
    assert (CELL.index, BIG, SMALL) in table.quality.implausible and table.quality.noisy == ()
    assert {a for _, a, _ in table.quality.implausible} == {BIG}  # every pair is 5x5_MBConv6 below a smaller op
    data = table.to_dict()["quality"]
    assert data["passes"] == 2 and {"cell": CELL.index, "cheaper": BIG, "than": SMALL} in data["implausible"]


@pytest.fixture
def device(monkeypatch) -> FakeDevice:
    fake = FakeDevice()
    monkeypatch.setattr(devices_module, "make_client", lambda url, token=None, **kw: LatencyClient(
        url, token, transport=httpx.MockTransport(fake.handle), backoff_s=0))
    return fake


def _lut(tmp_path, *extra: str):
    return runner.invoke(app, ["lut", "--space", "micro-16", "--device", "http://dev:8000", "--out",
                               str(tmp_path / "t.json"), "--anchors", "0", *extra])


def test_lut_reports_what_stays_noisy_in_one_line_and_strict_fails(device, tmp_path) -> None:
    device.measure_stats = noisy_first(NOISY, 10)
    result = _lut(tmp_path)
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "table quality" in line]
    assert len(lines) == 1 and lines[0].startswith("warning: ") and NOISY in lines[0] and "1 noisy entry" in lines[0]
    stored = json.loads((tmp_path / "t.json").read_text())["quality"]
    assert stored["noisy"] == [NOISY] and stored["bound"] == NOISE_BOUND
    assert LatencyTable.load(tmp_path / "t.json").quality.noisy == (NOISY,)
    device.stored.clear()
    device.measure_counts.clear()
    strict = _lut(tmp_path, "--strict")
    assert strict.exit_code == 1 and "error: --strict: table quality" in strict.output
    assert (tmp_path / "t.json").exists()  # saved all the same, to be looked at


def test_lut_strict_passes_a_table_that_becomes_quiet(device, tmp_path) -> None:
    device.measure_stats = noisy_first(NOISY, 1)
    result = _lut(tmp_path, "--strict")
    assert result.exit_code == 0, result.output
    assert "table quality" not in result.output


def test_a_fixed_cost_the_intercept_brings_near_zero_is_said_with_the_unanchored_one(device, tmp_path) -> None:
    fixed = device_table().fixed_ms
    device.network_ms = lambda body: device.sum_of_ops(body) - 0.95 * fixed  # a = -0.95 x the fixed ops
    result = runner.invoke(app, ["lut", "--space", "micro-16", "--device", "http://dev:8000", "--out",
                                 str(tmp_path / "t.json")])
    assert result.exit_code == 0, result.output
    table = LatencyTable.load(tmp_path / "t.json")
    assert table.fixed_ms == pytest.approx(0.05 * fixed, rel=1e-6)
    assert f"fixed unanchored {fixed:.4f} ms" in result.output
    lines = [line for line in result.output.splitlines() if "anchors' intercept" in line]
    assert len(lines) == 1 and f"{fixed:.4f} ms unanchored" in lines[0] and f"{table.fixed_ms:.4f} ms" in lines[0]
