"""The client sends the working set that picks the device's cache regime: a table's requests carry the space's
typical network's; nothing is sent when none is given. (``verify`` and the anchors: tests/search_client/
test_table_regime.py.)"""

from __future__ import annotations

import pytest

from nas_ops.counting import space_working_set_bytes
from nas_ops.space import SPACES
from search_client.table.latency_table import build_table
from tests.search_client.conftest import FakeDevice


def test_lookup_and_measure_send_the_working_set_only_when_given() -> None:
    device = FakeDevice()
    with device.client(backoff_s=0) as client:
        client.measure_missing(["mbconv_r8x8_c8-8_k3_e3_s1_relu6_skip"], "ort-cpu", working_set_bytes=12345)
        client.lookup(["mbconv_r8x8_c8-8_k3_e3_s1_relu6_skip"], "ort-cpu")
    lookups, measures = device.bodies["/v1/lookup"], device.bodies["/v1/measure"]
    assert [body.get("working_set_bytes") for body in lookups] == [12345, 12345, None]
    assert "working_set_bytes" not in lookups[-1]  # a service of an earlier version refuses unknown fields
    assert [body["working_set_bytes"] for body in measures] == [12345]


@pytest.mark.parametrize("space", ["micro-16", "tiny-32"])
def test_a_table_is_built_with_the_spaces_working_set(space: str) -> None:
    device = FakeDevice()
    with device.client(backoff_s=0) as client:
        build_table(client, SPACES[space], backend="ort-cpu", poll_s=0.001)
    expected = space_working_set_bytes(SPACES[space], 1, "float32")
    sent = [body["working_set_bytes"] for path in ("/v1/lookup", "/v1/measure") for body in device.bodies[path]]
    assert sent and set(sent) == {expected}
