"""No silent numbers on the search side: a latency table with entries the device flagged (upper bounds, e.g. ops
below its timer's resolution) is refused with every one of them listed, unless told otherwise (``allow_flagged``,
``lut --allow-flagged``); a table built that way says so in its file and loads again. The device is faked."""

from __future__ import annotations

import json

import httpx
import pytest
from typer.testing import CliRunner

import search_client.cli.devices as devices_module
from nas_ops.space import SPACES
from search_client.cli import app
from search_client.device.client import LatencyClient
from search_client.table.latency_table import FlaggedEntriesError, LatencyTable, build_table, table_specs
from tests.search_client.conftest import FAKE_DEVICE, FakeDevice, fake_stats

MICRO = SPACES["micro-16"]
SPECS = table_specs(MICRO)
REASON = "calibrated_to_zero: the op timed 0.01 ms inside its boundary ops and the boundary correction is 0.012 ms"


def stats_with_flags(*flagged: str) -> dict[str, dict]:
    return {spec: {**fake_stats(spec), "rounds": 3, "flagged": REASON if spec in flagged else None}
            for spec in SPECS}


def from_stats(stats: dict[str, dict], **options: object) -> LatencyTable:
    return LatencyTable.from_stats(MICRO, stats, device=FAKE_DEVICE, backend="ort-cpu", batch=1, threads=1,
                                   protocol_version="3", env_hash="e" * 64, **options)


def test_a_table_with_flagged_entries_is_refused_listing_every_one() -> None:
    with pytest.raises(FlaggedEntriesError) as caught:
        from_stats(stats_with_flags(SPECS[1], SPECS[4]))
    assert caught.value.flagged == {SPECS[1]: REASON, SPECS[4]: REASON}
    message = str(caught.value)
    assert message.startswith("2 entries are flagged by the device for space 'micro-16' on ort-cpu")
    assert SPECS[1] in message and SPECS[4] in message and "--allow-flagged" in message


def test_allowed_flags_are_kept_in_the_file_and_a_plain_table_is_unchanged(tmp_path) -> None:
    table = from_stats(stats_with_flags(SPECS[2]), allow_flagged=True)
    assert table.flagged == {SPECS[2]: REASON} and table.allow_flagged
    path = table.save(tmp_path / "flagged.json")
    data = json.loads(path.read_text())
    assert data["allow_flagged"] is True
    assert LatencyTable.load(path) == table  # the file says the flags were accepted
    data["allow_flagged"] = False
    (tmp_path / "edited.json").write_text(json.dumps(data))
    with pytest.raises(FlaggedEntriesError):  # the flags are checked again on load
        LatencyTable.load(tmp_path / "edited.json")
    plain = from_stats(stats_with_flags())
    assert plain.flagged == {} and "allow_flagged" not in plain.to_dict()
    assert all("flagged" not in stats for stats in plain.stats.values())  # unflagged entries: as before


def test_build_table_refuses_flagged_device_entries_unless_allowed() -> None:
    device = FakeDevice(stored=stats_with_flags(SPECS[0]), flagged_on_measure={SPECS[0]: REASON})
    with pytest.raises(FlaggedEntriesError, match=SPECS[0]):
        build_table(device.client(), MICRO, backend="ort-cpu")
    assert device.forced == [[SPECS[0]]]  # measured once more before refusing
    assert build_table(device.client(), MICRO, backend="ort-cpu", allow_flagged=True).flagged == {SPECS[0]: REASON}
    assert device.forced == [[SPECS[0]]]  # allowed flags are used as they are


def test_a_flag_that_a_second_measurement_clears_does_not_fail_the_table() -> None:
    device = FakeDevice(stored=stats_with_flags(SPECS[0], SPECS[5]))
    table = build_table(device.client(), MICRO, backend="ort-cpu")
    assert device.forced == [[SPECS[0], SPECS[5]]] and device.measured == [SPECS[0], SPECS[5]]
    assert table.flagged == {} and table.stats[SPECS[0]]["median_ms"] == fake_stats(SPECS[0])["median_ms"]
    with pytest.raises(FlaggedEntriesError):  # without measuring, nothing is measured again
        build_table(FakeDevice(stored=stats_with_flags(SPECS[0])).client(), MICRO, backend="ort-cpu",
                    measure_missing=False)


@pytest.fixture
def flagged_device(monkeypatch) -> FakeDevice:
    fake = FakeDevice(stored=stats_with_flags(SPECS[3]), flagged_on_measure={SPECS[3]: REASON})
    monkeypatch.setattr(devices_module, "make_client", lambda url, token=None, **kwargs: LatencyClient(
        url, token, transport=httpx.MockTransport(fake.handle), **kwargs))
    return fake


def test_lut_fails_on_flagged_entries_and_builds_with_allow_flagged(flagged_device: FakeDevice, tmp_path) -> None:
    out = tmp_path / "t.json"
    args = ["lut", "--space", "micro-16", "--device", "http://dev:8000", "--backend", "ort-cpu", "--out", str(out)]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code != 0 and not out.exists()
    assert "1 entry is flagged by the device" in refused.output and SPECS[3] in refused.output
    assert "Traceback" not in refused.output
    allowed = CliRunner().invoke(app, [*args, "--allow-flagged"])
    assert allowed.exit_code == 0, allowed.output
    assert f"1 flagged entry used (--allow-flagged): {SPECS[3]}" in allowed.output
    assert LatencyTable.load(out).flagged == {SPECS[3]: REASON}


def test_search_on_a_device_fails_on_flagged_entries_and_runs_with_allow_flagged(
    flagged_device: FakeDevice, tmp_path, monkeypatch
) -> None:
    import functools

    import search_client.cli.commands.search as search_command

    monkeypatch.setattr(search_command, "run_search", functools.partial(search_command.run_search,
                                                                        stop_after_epochs=1))
    out = tmp_path / "run"
    args = ["search", "--space", "micro-16", "--device", "http://dev:8000", "--backend", "ort-cpu",
            "--target-ms", "3.0", "--data", "synthetic:64:10", "--epochs", "1", "--warmup-epochs", "0",
            "--out", str(out), "--no-progress"]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code != 0 and "1 entry is flagged by the device" in refused.output
    assert SPECS[3] in refused.output and "Traceback" not in refused.output
    allowed = CliRunner().invoke(app, [*args, "--allow-flagged"])
    assert allowed.exit_code == 0, allowed.output
    assert f"1 flagged entry used (--allow-flagged): {SPECS[3]}" in allowed.output
    assert LatencyTable.load(out / "table_0.json").flagged == {SPECS[3]: REASON}
