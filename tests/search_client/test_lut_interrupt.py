"""``lut`` interrupted (Ctrl-C) while the device measures cancels its job there and exits 130; a repeated ``lut``
that the device attaches to the job already running says so instead of starting a new one."""

from __future__ import annotations

import httpx
import pytest
from typer.testing import CliRunner

import search_client.cli.devices as devices_module
from nas_ops.counting import space_working_set_bytes
from nas_ops.space import SPACES
from search_client.cli import app
from search_client.device.client import LatencyClient
from search_client.table.latency_table import table_specs
from tests.search_client.conftest import FakeDevice

runner = CliRunner()
MICRO = SPACES["micro-16"]


@pytest.fixture
def device(monkeypatch) -> FakeDevice:
    fake = FakeDevice(polls_to_finish=3)
    monkeypatch.setattr(devices_module, "make_client", lambda url, token=None, **kw: LatencyClient(
        url, token, transport=httpx.MockTransport(fake.handle), backoff_s=0))
    monkeypatch.setattr("search_client.device.client.time.sleep", lambda s: None)
    return fake


def _interrupt_on_second_poll(device: FakeDevice) -> None:
    def on_poll(job_id: int) -> None:
        if device.polls[job_id] == 2:
            raise KeyboardInterrupt
    device.on_poll = on_poll


def _lut(tmp_path, *extra: str):
    return runner.invoke(app, ["lut", "--space", "micro-16", "--device", "http://dev:8000", "--out",
                               str(tmp_path / "t.json"), *extra])


def test_an_interrupted_lut_cancels_its_job_and_exits_130(device, tmp_path) -> None:
    _interrupt_on_second_poll(device)
    result = _lut(tmp_path)
    assert result.exit_code == 130, result.output
    assert device.cancelled == [1] and device.jobs[1]["status"] == "cancelled"
    lines = [line for line in result.output.splitlines() if line.startswith("interrupted")]
    assert lines == ["interrupted: cancelled job 1 on http://dev:8000 (the items it measured are kept)"]
    assert "Traceback" not in result.output and not (tmp_path / "t.json").exists()


def test_when_the_cancel_fails_lut_prints_the_command_that_cancels(device, tmp_path) -> None:
    _interrupt_on_second_poll(device)
    device.cancel_fails = True
    result = _lut(tmp_path, "--token", "secret")
    assert result.exit_code == 130, result.output
    assert device.cancelled == [] and device.jobs[1]["status"] == "queued"
    line = next(line for line in result.output.splitlines() if line.startswith("interrupted"))
    assert line.endswith("cancel it with: curl -s -X POST http://dev:8000/v1/jobs/1/cancel "
                         "-H 'content-type: application/json' -H \"Authorization: Bearer $PROXYLESS_TOKEN\"")
    assert "secret" not in result.output


def test_a_repeated_lut_attaches_to_the_running_job_and_says_so(device, tmp_path) -> None:
    with device.client() as client:  # the job of an earlier lut, still queued on the device
        earlier = client.submit_measure(table_specs(MICRO), "ort-cpu",
                                        working_set_bytes=space_working_set_bytes(MICRO, 1, "float32"))
    result = _lut(tmp_path, "--anchors", "0")
    assert result.exit_code == 0, result.output
    assert f"attached to running job {earlier['id']}" in result.output
    assert [job["kind"] for job in device.jobs.values()] == ["ops"]  # no duplicate was queued
    assert device.measured == table_specs(MICRO)
