"""``proxyless-search verify`` against a fake device: the drift warning when the device's canaries moved."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

import search_client.cli.devices as devices_module
from nas_ops.space import SPACES
from search_client.cli import app
from search_client.cli.commands.verify import drift_warning
from search_client.device.client import LatencyClient
from tests.search_client.conftest import FakeDevice

runner = CliRunner()


def drift(drifting: bool, ratio: float, backend: str = "ort-cpu") -> dict[str, Any]:
    return {"status": "drift" if drifting else "ok", "threshold_rel": 0.1, "backends": [
        {"backend": backend, "drifting": drifting, "ratio": ratio, "threshold_rel": 0.1,
         "checked_at": "2026-12-01T19:40:11Z", "reason": "job", "canaries": []}]}


@pytest.fixture
def device(monkeypatch: pytest.MonkeyPatch) -> FakeDevice:
    fake = FakeDevice()
    monkeypatch.setattr(devices_module, "make_client", lambda url, token=None, **kwargs: LatencyClient(
        url, token, transport=httpx.MockTransport(fake.handle), backoff_s=0))
    return fake


def arch_file(tmp_path: Path) -> Path:
    space = SPACES["micro-16"]
    choices = [0] * len(space.cells())
    arch = space.architecture(choices)
    arch.metadata.update(choices=choices, backend="ort-cpu", devices=[
        {"url": "http://dev:8000", "backend": "ort-cpu", "predicted_ms": 1.0}])
    path = tmp_path / "arch.json"
    path.write_text(json.dumps(arch.to_dict()))
    return path


def test_verify_warns_when_the_device_drifts(device: FakeDevice, tmp_path: Path) -> None:
    device.drift = drift(True, 1.23)
    result = runner.invoke(app, ["verify", str(arch_file(tmp_path)), "--device", "http://dev:8000", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "warning: the device reports drift on ort-cpu: its canary ops run at 1.23x" in result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])  # the JSON line stays the last line of stdout
    assert report["measured_ms"] == pytest.approx(device.sum_of_ops(json.loads(arch_file(tmp_path).read_text())))


@pytest.mark.parametrize("state", [None, drift(False, 1.02), drift(True, 1.5, backend="torch-cpu")])
def test_verify_is_quiet_without_drift_on_its_backend(device: FakeDevice, tmp_path: Path,
                                                      state: dict[str, Any] | None) -> None:
    device.drift = state
    result = runner.invoke(app, ["verify", str(arch_file(tmp_path)), "--device", "http://dev:8000", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "drift" not in result.output


def test_drift_warning_reads_the_device_entry() -> None:
    assert drift_warning({"drift": drift(True, 0.8)}, "ort-cpu").startswith("warning: the device reports drift")
    assert drift_warning({"drift": {"status": "off", "backends": []}}, "ort-cpu") is None
    assert drift_warning({}, "ort-cpu") is None
