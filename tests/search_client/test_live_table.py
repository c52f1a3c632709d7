"""Against a REAL profiler process: build the micro-16 table from an empty database, save, load offline."""

from __future__ import annotations

import math
import time

import pytest
from typer.testing import CliRunner

from nas_ops.space import SPACES
from nas_ops.spec import format_spec
from search_client.cli import app
from search_client.device.api_schema import STATS_FIELDS
from search_client.device.client import LatencyClient
from search_client.device.errors import BadRequest
from search_client.table.anchors import DEFAULT_ANCHORS
from search_client.table.latency_table import LatencyTable, build_table, cell_weights_mb, table_specs

pytestmark = pytest.mark.live
MICRO = SPACES["micro-16"]


def test_build_micro16_table_from_scratch_then_offline(live_profiler, tmp_path):
    with LatencyClient(live_profiler.url) as client:
        assert client.lookup(table_specs(MICRO), "ort-cpu").found == {}  # empty database: all measured by a job
        started = time.perf_counter()
        table = build_table(client, MICRO, backend="ort-cpu", poll_s=0.1, timeout_s=240, anchors=0)  # plain sum
        elapsed = time.perf_counter() - started
        info = client.device_info()
        after = client.lookup(table_specs(MICRO), "ort-cpu")
    print(f"micro-16 table built from scratch in {elapsed:.1f} s")  # shown with pytest -s
    assert after.missing == [] and after.env_hash == table.env_hash

    # real timings: only their form is checked (finite, >= 0: calibrated stats are floored at 0), never their size
    assert all(math.isfinite(v) and v >= 0 for s in table.stats.values() for v in s.values()), table.stats
    assert all(s["samples"] > 0 for s in table.stats.values())
    # the table holds exactly what the device stored
    assert {spec: {f: after.found[spec][f] for f in STATS_FIELDS} for spec in table.stats} == table.stats

    path = table.save(tmp_path / "micro16.json")
    offline = LatencyTable.load(path)
    assert offline == table
    assert set(offline.stats) == set(table_specs(MICRO))
    assert offline.threads == 1
    assert offline.device["fingerprint_hash"] == info["fingerprint_hash"]
    assert offline.device["url"] == live_profiler.url
    assert offline.protocol_version == info["protocol"]["version"]
    assert offline.fixed_ms == pytest.approx(sum(offline.stats[format_spec(s)]["median_ms"]
                                                 for s in MICRO.fixed_specs()))
    for cell, row in zip(MICRO.cells(), offline.entries):
        assert len(row) == len(cell.candidates)
        for j, (op, value) in enumerate(zip(cell.candidates, row)):
            expected = 0.0 if j == cell.zero_index else offline.stats[format_spec(op)]["median_ms"]
            assert value == expected, (j, op)


def test_lut_cli_no_measure_reuses_stored_entries(live_profiler, tmp_path):
    # the first test of this module stored every entry; --no-measure must now find them all
    with LatencyClient(live_profiler.url) as client:
        table = build_table(client, MICRO, backend="ort-cpu", poll_s=0.1, timeout_s=240)
    out = tmp_path / "cli.json"
    result = CliRunner().invoke(app, ["lut", "--space", "micro-16", "--device", live_profiler.url, "--backend",
                                      "ort-cpu", "--no-measure", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "3 cells, 20 candidate entries, 15 measured ops" in result.output
    from_cli = LatencyTable.load(out)
    assert from_cli.stats == table.stats  # the stored entries, reused
    # both anchored by default, each on its own measurement of the anchor networks
    assert len(from_cli.anchor.networks) == len(table.anchor.networks) == DEFAULT_ANCHORS
    first = format_spec(MICRO.cells()[0].candidates[0])
    weight_mb = cell_weights_mb(MICRO, "float32")[0][0]
    assert from_cli.entries[0][0] == pytest.approx(from_cli.anchor.b * from_cli.stats[first]["median_ms"]
                                                   + from_cli.anchor.c_ms_per_mb * weight_mb)


def test_architecture_measurement_and_bad_request(live_profiler):
    arch = MICRO.architecture([0, 6, 3])
    with LatencyClient(live_profiler.url) as client:
        stats = client.measure_architecture(arch, "ort-cpu", poll_s=0.1, timeout_s=120)
        assert math.isfinite(stats["median_ms"]) and stats["median_ms"] >= 0 and stats["samples"] > 0
        with pytest.raises(BadRequest) as info:
            client.lookup(["mbconv_r8x8_c8-8_k4_e3_s1_relu6"], "ort-cpu")
    assert info.value.status == 422 and "kernel" in str(info.value)
