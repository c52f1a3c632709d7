"""``proxyless-search lut``, ``lut-plot`` and ``spaces`` through Typer's CliRunner, the device faked in memory."""

from __future__ import annotations

import json
import math

import httpx
import pytest
from PIL import Image
from typer.testing import CliRunner

import search_client.cli.devices as devices_module
from nas_ops.space import SPACES
from search_client.cli import app
from search_client.device.client import LatencyClient
from search_client.table.latency_table import LatencyTable, table_specs
from search_client.plots.table_heatmap import table_matrix
from tests.search_client.conftest import FakeDevice, fake_stats, make_table

runner = CliRunner()


@pytest.fixture
def device(monkeypatch) -> FakeDevice:
    """A fake device that the lut command's LatencyClient talks to, whatever URL it is given."""
    fake = FakeDevice()

    def client(url, token=None, **kwargs):
        return LatencyClient(url, token, transport=httpx.MockTransport(fake.handle), **kwargs)

    monkeypatch.setattr(devices_module, "make_client", client)
    return fake


def test_lut_builds_saves_and_plots(device, tmp_path):
    out, png = tmp_path / "micro.json", tmp_path / "micro.png"
    result = runner.invoke(app, ["lut", "--space", "micro-16", "--device", "http://dev:8000", "--out", str(out),
                                 "--plot", str(png)])
    assert result.exit_code == 0, result.output
    table = LatencyTable.load(out)
    assert device.measured == table_specs(SPACES["micro-16"])
    low, high = table.min_latency()[0], table.max_latency()[0]
    assert "backend: ort-cpu (first of the device's ort-cpu" in result.output
    assert f"fixed {table.fixed_ms:.4f} ms, min {low:.4f} ms, max {high:.4f} ms" in result.output
    assert "3 cells, 20 candidate entries, 15 measured ops" in result.output
    assert f"content hash {table.content_hash()[:12]}" in result.output
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size[0] > 300


def test_lut_no_measure_fails_with_missing_list(device, tmp_path):
    specs = table_specs(SPACES["micro-16"])
    device.stored = {s: fake_stats(s) for s in specs[:-2]}
    result = runner.invoke(app, ["lut", "--space", "micro-16", "--device", "http://dev:8000", "--backend",
                                 "ort-cpu", "--no-measure", "--out", str(tmp_path / "t.json")])
    assert result.exit_code == 1
    assert "2 op spec(s) missing on http://dev:8000 (ort-cpu)" in result.output
    assert specs[-1] in result.output and specs[-2] in result.output
    assert "Traceback" not in result.output
    assert device.measured == [] and not (tmp_path / "t.json").exists()


def test_lut_bad_space_is_exit_2(device, tmp_path):
    result = runner.invoke(app, ["lut", "--space", "nope", "--device", "http://dev:8000", "--out",
                                 str(tmp_path / "t.json")])
    assert result.exit_code == 2
    assert "search space 'nope': not a space name" in result.output


def test_lut_bad_request_from_device_is_exit_2(device, tmp_path):
    def refuse(request):
        return httpx.Response(422, json={"detail": "backend: 'tpu' is not served here; available: ort-cpu",
                                         "code": "invalid_input"})

    device.handle = refuse
    result = runner.invoke(app, ["lut", "--space", "micro-16", "--device", "http://dev:8000", "--backend", "tpu",
                                 "--out", str(tmp_path / "t.json")])
    assert result.exit_code == 2
    assert "backend: 'tpu' is not served here" in result.output


def test_lut_unreachable_device_is_exit_1(monkeypatch, tmp_path):
    monkeypatch.setattr(devices_module, "make_client", lambda url, token=None: LatencyClient(url, token, backoff_s=0))
    result = runner.invoke(app, ["lut", "--space", "micro-16", "--device", "http://127.0.0.1:9", "--backend",
                                 "ort-cpu", "--out", str(tmp_path / "t.json")])
    assert result.exit_code == 1
    assert "device http://127.0.0.1:9 unreachable after 4 attempt(s)" in result.output
    assert "Traceback" not in result.output


def test_lut_plot_and_heatmap_matrix(tmp_path):
    table = make_table()
    path = table.save(tmp_path / "t.json")
    result = runner.invoke(app, ["lut-plot", str(path), "--out", str(tmp_path / "h.png")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "h.png").stat().st_size > 1000
    matrix, names = table_matrix(table)
    assert names[-1] == "Zero" and matrix.shape == (3, 7)
    assert matrix[0, 6] == 0.0 and not matrix.mask[0, 6]  # a Zero cell shows 0 ms
    assert matrix.mask[2, 6]  # cell 2 (stride 2) has no Zero candidate
    assert matrix[1, 3] == table.entries[1][3]


def test_lut_plot_of_a_broken_file_is_exit_2(tmp_path):
    (tmp_path / "t.json").write_text("{not json")
    result = runner.invoke(app, ["lut-plot", str(tmp_path / "t.json"), "--out", str(tmp_path / "h.png")])
    assert result.exit_code == 2 and "not valid JSON" in result.output


def test_spaces_lists_named_spaces_with_sizes():
    result = runner.invoke(app, ["spaces"])
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line.split() for line in result.output.splitlines()[2:]}
    assert set(lines) == set(SPACES)
    assert lines["micro-16"][1:] == ["16x16", "3", "6-7", "2", f"10^{math.log10(294):.1f}"]
    mobile = SPACES["proxyless-mobile"]
    assert lines["proxyless-mobile"][2] == "21" and lines["proxyless-mobile"][4] == "15"
    assert lines["proxyless-mobile"][5] == f"10^{math.log10(mobile.size()):.1f}"


def test_spaces_shows_one_space_and_rejects_unknown(tmp_path):
    result = runner.invoke(app, ["spaces", "micro-16"])
    assert result.exit_code == 0
    assert "cell  2 stage 1: 8->16 16x16 s2: 3x3_MBConv3" in result.output
    bad = tmp_path / "s.json"
    bad.write_text(json.dumps({"name": "x"}))
    result = runner.invoke(app, ["spaces", str(bad)])
    assert result.exit_code == 2 and "search space field" in result.output


def test_lut_anchors_on_networks_when_asked_and_says_so(device, tmp_path):
    device.network_ms = lambda body: 0.1 + 1.1 * device.sum_of_ops(body)  # its networks: an affine map of its ops
    out = tmp_path / "anchored.json"
    result = runner.invoke(app, ["lut", "--space", "micro-16", "--device", "http://dev:8000", "--out", str(out),
                                 "--anchors", "3"])
    assert result.exit_code == 0, result.output
    table = LatencyTable.load(out)
    assert len(table.anchor.networks) == 3 and len(device.architectures) == 3 * 2  # two passes
    assert table.anchor.b == pytest.approx(1.1) and table.anchor.a_ms == pytest.approx(0.1)
    assert (f"anchored on 3 networks: measured = {table.anchor.a_ms:+.4f} ms + {table.anchor.b:.4f} x sum"
            in result.output)


def test_lut_one_anchor_is_a_one_line_error(device, tmp_path):
    result = runner.invoke(app, ["lut", "--space", "micro-16", "--device", "http://dev:8000", "--out",
                                 str(tmp_path / "t.json"), "--anchors", "1"])
    assert result.exit_code == 2, result.output
    assert "anchors: need at least 2 networks" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "t.json").exists()
