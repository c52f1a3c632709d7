"""A table has one cache regime, and what predicts or verifies with it follows it: the table file records its
working set and regime, ``verify --table`` measures the network with the table's working set, the anchors carry
it too, and a measurement under another protocol version is said (verify) or refused (anchors)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

import search_client.cli.devices as devices_module
from nas_ops.counting import network_memory_bytes, space_working_set_bytes
from nas_ops.space import SPACES
from search_client.cli import app
from search_client.device.client import LatencyClient
from search_client.table.latency_table import LatencyTable, RegimeMismatchError, build_table
from tests.search_client.conftest import FakeDevice, make_table

runner = CliRunner()
TINY = SPACES["tiny-32"]
TABLE_WS = space_working_set_bytes(TINY, 1, "float32")
CHOICES = [len(cell.candidates) - 1 for cell in TINY.cells()]  # a small network: its working set fits the cache
ARCH = TINY.architecture(CHOICES)
OWN_WS = network_memory_bytes(ARCH, 1, "float32")
CACHE = (OWN_WS + TABLE_WS) // 2  # the network alone runs warm, the space's typical network does not


def _device(monkeypatch: pytest.MonkeyPatch, **kwargs: Any) -> FakeDevice:
    """A device with a per-core cache between the two working sets, whose networks run 35% faster warm."""
    device = FakeDevice(cache_bytes=CACHE, regime_scale={"warm": 0.65}, **kwargs)
    monkeypatch.setattr(devices_module, "make_client", lambda url, token=None, **kw: LatencyClient(
        url, token, transport=httpx.MockTransport(device.handle), backoff_s=0))
    return device


def _lut_and_arch(tmp_path: Path) -> tuple[Path, Path]:
    table_file = tmp_path / "table.json"
    result = runner.invoke(app, ["lut", "--space", "tiny-32", "--device", "http://dev:8000", "--out",
                                 str(table_file)])
    assert result.exit_code == 0, result.output
    arch = TINY.architecture(CHOICES)
    arch.metadata["choices"] = CHOICES
    arch_file = tmp_path / "arch.json"
    arch_file.write_text(json.dumps(arch.to_dict()))
    return table_file, arch_file


def test_the_situation_is_the_one_of_the_issue() -> None:
    assert OWN_WS < CACHE < TABLE_WS


def test_lut_records_the_regime_and_working_set_and_the_file_loads_back(monkeypatch, tmp_path) -> None:
    _device(monkeypatch)
    table_file, _ = _lut_and_arch(tmp_path)
    data = json.loads(table_file.read_text())
    assert data["version"] == 3 and data["working_set_bytes"] == TABLE_WS
    assert data["regime"] == "flush1024" and data["protocol_version"] == "4+flush1024+duet"
    table = LatencyTable.load(table_file)
    assert (table.regime, table.working_set_bytes) == ("flush1024", TABLE_WS)
    data["regime"] = "warm"
    (tmp_path / "edited.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="field 'regime'"):
        LatencyTable.load(tmp_path / "edited.json")


def test_older_files_without_a_working_set_still_load(tmp_path) -> None:
    old = make_table()  # as written before tables recorded their working set: version 1
    data = json.loads(old.save(tmp_path / "old.json").read_text())
    assert data["version"] == 1 and "working_set_bytes" not in data
    loaded = LatencyTable.load(tmp_path / "old.json")
    assert loaded.working_set_bytes is None and loaded.request_working_set() == space_working_set_bytes(
        loaded.space, 1, "float32")  # what lut sent for it


def test_anchors_carry_the_tables_working_set(monkeypatch, tmp_path) -> None:
    device = _device(monkeypatch)
    _lut_and_arch(tmp_path)
    anchors = device.bodies["/v1/measure/architecture"]
    assert anchors and {body["working_set_bytes"] for body in anchors} == {TABLE_WS}
    assert {job["protocol_version"] for job in device.jobs.values() if job["kind"] == "architecture"} == {
        "4+flush1024+duet"}


class OtherRegimeForNetworks(FakeDevice):
    """A device that measures whole networks warm whatever the request says."""

    def _create_job(self, body, kind, ops, architecture=None):
        response = super()._create_job(body, kind, ops, architecture)
        if kind == "architecture":
            self.jobs[max(self.jobs)]["protocol_version"] = "4+warm+duet"
        return response


def test_anchors_of_another_protocol_version_are_an_error_naming_both() -> None:
    device = OtherRegimeForNetworks(cache_bytes=CACHE)
    with device.client(backoff_s=0) as client, pytest.raises(RegimeMismatchError) as info:
        build_table(client, TINY, backend="ort-cpu", poll_s=0.001)
    assert "'4+warm+duet'" in str(info.value) and "'4+flush1024+duet'" in str(info.value)


def test_verify_with_a_table_measures_in_the_tables_regime(monkeypatch, tmp_path) -> None:
    device = _device(monkeypatch)
    table_file, arch_file = _lut_and_arch(tmp_path)
    result = runner.invoke(app, ["verify", str(arch_file), "--device", "http://dev:8000", "--table",
                                 str(table_file), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert device.bodies["/v1/measure/architecture"][-1]["working_set_bytes"] == TABLE_WS
    assert "regime flush1024 (protocol 4+flush1024+duet)" in result.output
    assert "compared across regimes" not in result.output
    assert abs(json.loads(result.output.strip().splitlines()[-1])["relative_error"]) < 1e-9


def test_verify_says_when_the_measurement_is_of_another_regime(monkeypatch, tmp_path) -> None:
    device = _device(monkeypatch)
    table_file, arch_file = _lut_and_arch(tmp_path)
    device.cache_bytes = TABLE_WS  # the device's cache changed: the table's working set now runs warm
    result = runner.invoke(app, ["verify", str(arch_file), "--device", "http://dev:8000", "--table",
                                 str(table_file), "--no-progress"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("compared across regimes")]
    assert len(lines) == 1 and "4+flush1024+duet" in lines[0] and "4+warm+duet" in lines[0]


def test_verify_without_a_table_says_that_the_regime_is_unknown(monkeypatch, tmp_path) -> None:
    device = _device(monkeypatch)
    arch = TINY.architecture(CHOICES)
    arch.metadata["devices"] = [{"url": "http://dev:8000", "backend": "ort-cpu", "predicted_ms": 1.0}]
    arch_file = tmp_path / "arch.json"
    arch_file.write_text(json.dumps(arch.to_dict()))
    result = runner.invoke(app, ["verify", str(arch_file), "--device", "http://dev:8000", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert device.bodies["/v1/measure/architecture"][-1]["working_set_bytes"] == OWN_WS
    lines = [line for line in result.output.splitlines() if line.startswith("compared across regimes")]
    assert len(lines) == 1 and "4+warm+duet" in lines[0] and "--table" in lines[0]
