"""The client sends the working set that picks the device's cache regime: a table's requests carry the space's
typical network's, an end-to-end measurement (``verify``) its own network's; nothing is sent when none is given."""

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
from search_client.table.latency_table import build_table
from tests.search_client.conftest import FakeDevice

runner = CliRunner()


class RecordingDevice(FakeDevice):
    """The fake device, keeping the JSON body of every POST by path."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.bodies: dict[str, list[dict[str, Any]]] = {}

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            self.bodies.setdefault(request.url.path, []).append(json.loads(request.content))
        return super().handle(request)


def test_lookup_and_measure_send_the_working_set_only_when_given() -> None:
    device = RecordingDevice()
    with device.client(backoff_s=0) as client:
        client.measure_missing(["mbconv_r8x8_c8-8_k3_e3_s1_relu6_skip"], "ort-cpu", working_set_bytes=12345)
        client.lookup(["mbconv_r8x8_c8-8_k3_e3_s1_relu6_skip"], "ort-cpu")
    lookups, measures = device.bodies["/v1/lookup"], device.bodies["/v1/measure"]
    assert [body.get("working_set_bytes") for body in lookups] == [12345, 12345, None]
    assert "working_set_bytes" not in lookups[-1]  # a service of an earlier version refuses unknown fields
    assert [body["working_set_bytes"] for body in measures] == [12345]


@pytest.mark.parametrize("space", ["micro-16", "tiny-32"])
def test_a_table_is_built_with_the_spaces_working_set(space: str) -> None:
    device = RecordingDevice()
    with device.client(backoff_s=0) as client:
        build_table(client, SPACES[space], backend="ort-cpu", poll_s=0.001)
    expected = space_working_set_bytes(SPACES[space], 1, "float32")
    sent = [body["working_set_bytes"] for path in ("/v1/lookup", "/v1/measure") for body in device.bodies[path]]
    assert sent and set(sent) == {expected}


def test_verify_measures_the_network_with_its_own_working_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    device = RecordingDevice()
    monkeypatch.setattr(devices_module, "make_client", lambda url, token=None, **kwargs: LatencyClient(
        url, token, transport=httpx.MockTransport(device.handle), backoff_s=0))
    space = SPACES["tiny-32"]
    table_file = tmp_path / "table.json"
    assert runner.invoke(app, ["lut", "--space", "tiny-32", "--device", "http://dev:8000",
                               "--out", str(table_file)]).exit_code == 0
    choices = [len(cell.candidates) - 1 for cell in space.cells()]
    arch = space.architecture(choices)
    arch.metadata["choices"] = choices
    arch_file = tmp_path / "arch.json"
    arch_file.write_text(json.dumps(arch.to_dict()))
    result = runner.invoke(app, ["verify", str(arch_file), "--device", "http://dev:8000", "--table",
                                 str(table_file), "--no-progress"])
    assert result.exit_code == 0, result.output
    body = device.bodies["/v1/measure/architecture"][-1]  # after the table's anchors: the verified network
    assert body["working_set_bytes"] == network_memory_bytes(arch, 1, "float32")
    assert body["working_set_bytes"] != space_working_set_bytes(space, 1, "float32")  # its own, not the table's
    assert "working set" in result.output
