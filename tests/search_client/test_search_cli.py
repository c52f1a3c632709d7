"""The command lines ``search``, ``verify`` and ``train`` end to end (tables from files or a fake device)."""

from __future__ import annotations

import json
import re
import shlex
import sys
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
import torch
from typer.testing import CliRunner

import search_client.cli.devices as devices_module
from nas_ops.space import SPACES
from search_client.cli import app
from search_client.device.client import LatencyClient
from tests.search_client.conftest import (
    FakeDevice,
    device_table,
    make_table,
    other_device_table,
)

torch.set_num_threads(1)
runner = CliRunner()

BASE = ["--data", "synthetic:120:10", "--epochs", "1", "--batch-size", "16", "--no-progress"]
TINY = [*BASE, "--loss", "hinge"]


@pytest.fixture
def table_file(tmp_path: Path) -> Path:
    return make_table("micro-16").save(tmp_path / "table.json")


def _target(table_file: Path) -> str:
    table = make_table("micro-16")
    return f"{(table.min_latency()[0] + table.max_latency()[0]) / 2:.4f}"


def _device_target() -> str:
    """A target between the fastest and slowest network of the table the fake device measures."""
    table = device_table("micro-16")
    return f"{(table.min_latency()[0] + table.max_latency()[0]) / 2:.4f}"


def test_search_from_a_table_file(tmp_path: Path, table_file: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["search", "--table", str(table_file), "--target-ms", _target(table_file),
                                 "--out", str(out), *TINY])
    assert result.exit_code == 0, result.output
    assert "architecture:" in result.output and "predicted" in result.output
    assert "derive (within-target): " in result.output
    for name in ("log.jsonl", "log.csv", "latency.png", "probabilities.png", "checkpoint.pt", "arch.json",
                 "weights.pt", "model.onnx", "summary.json"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["loss"] == "hinge" and summary["epochs"] == 1
    # the same command again with --resume: nothing left to train, the same architecture
    again = runner.invoke(app, ["search", "--table", str(table_file), "--target-ms", _target(table_file),
                                "--out", str(out), "--resume", *TINY])
    assert again.exit_code == 0, again.output
    assert json.loads((out / "summary.json").read_text())["choices"] == summary["choices"]


def test_two_devices_end_with_each_devices_ratio_and_verdict(tmp_path: Path) -> None:
    """Weighted mode optimises the weighted sum; the run's last lines and summary.json judge each device alone."""
    tables = [make_table("micro-16"), other_device_table("micro-16")]
    files = [t.save(tmp_path / f"table_{d}.json") for d, t in enumerate(tables)]
    targets = [t.min_latency()[0] + 0.4 * (t.max_latency()[0] - t.min_latency()[0]) for t in tables]
    out = tmp_path / "out"
    result = runner.invoke(app, ["search", "--table", str(files[0]), "--table", str(files[1]),
                                 "--target-ms", f"{targets[0]:.4f}", "--target-ms", f"{targets[1]:.4f}",
                                 "--device-weight", "0.7", "--device-weight", "0.3", "--out", str(out), *BASE])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    keys = ["fake/ort-cpu#0", "fake/ort-cpu#1"]
    ratios = {k: t.latency_of(summary["choices"]) / float(f"{target:.4f}")
              for k, t, target in zip(keys, tables, targets)}
    assert summary["device_ratios"] == pytest.approx(ratios)
    assert summary["device_target_met"] == {k: 0.9 <= r <= 1.1 for k, r in ratios.items()}
    assert summary["target_met"] == all(summary["device_target_met"].values())
    assert set(summary["argmax_device_ratios"]) == set(keys)
    assert summary["derive_kept_argmax"] == (summary["choices"] == summary["argmax_choices"])
    # the verdict ends the output: the derive lines, one line per device, the combined ratio
    lines = result.output.strip().splitlines()
    assert lines[-5].startswith("derive (within-target): ")
    kept = "derive kept the argmax" if summary["derive_kept_argmax"] else "derive changed the argmax in"
    assert lines[-4].startswith(kept)
    for line, key in zip(lines[-3:-1], keys):
        verdict = "meets" if summary["device_target_met"][key] else "MISSES"
        assert line.startswith(f"{key}: predicted ") and f"latency ratio {ratios[key]:.3f}" in line
        assert f"{verdict} its target" in line
    assert lines[-1].startswith(f"combined latency ratio {summary['ratio']:.3f}")


@pytest.mark.parametrize("classes", [2, 12])
def test_data_of_another_class_count_than_the_head_is_refused(tmp_path: Path, table_file: Path,
                                                              classes: int) -> None:
    source = f"synthetic:120:{classes}"
    search = runner.invoke(app, ["search", "--table", str(table_file), "--target-ms", _target(table_file),
                                 "--out", str(tmp_path / "o"), *TINY, "--data", source])
    assert search.exit_code == 2, search.output
    assert search.output.splitlines() == [(
        f"error: data: {source!r} has {classes} classes but space micro-16's head has 10 outputs; give data of 10 "
        f"classes, or a network whose head has {classes} outputs")]
    arch_file = tmp_path / "arch.json"
    SPACES["micro-16"].architecture([0, 6, 2]).save(arch_file)
    train = runner.invoke(app, ["train", str(arch_file), "--data", source, "--epochs", "1", "--out",
                                str(tmp_path / "t")])
    assert train.exit_code == 2, train.output
    assert train.output.splitlines() == [(
        f"error: data: {source!r} has {classes} classes but the architecture's head (space micro-16) has 10 "
        f"outputs; give data of 10 classes, or a network whose head has {classes} outputs")]
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize("args, message", [
    (["--target-ms", "0.001"], "below the space's minimum"),
    (["--target-ms", "1000"], "above the space's maximum"),
    (["--target-ms", "5", "--target-ms", "6"], "one per device"),
    (["--target-ms", "5", "--mode", "three"], "'mode'"),
    (["--target-ms", "5", "--derive", "best"], "'derive': expected one of within-target, argmax"),
    (["--target-ms", "5", "--target-band", "2"], r"'target_band': must be in \[0, 1\)"),
    (["--target-ms", "5", "--device", "http://127.0.0.1:9"], "not both"),
    (["--target-ms", "5", "--space", "tiny-32"], "is not the --space"),
    (["--target-ms", "5", "--loss", "mul#log", "--log-unit-ms", "4"], "mul#log.*log unit"),
])
def test_bad_search_input_is_one_line_and_exit_2(tmp_path: Path, table_file: Path, args: list[str],
                                                 message: str) -> None:
    loss = [] if "--loss" in args else ["--loss", "hinge"]
    result = runner.invoke(app, ["search", "--table", str(table_file), "--out", str(tmp_path / "o"),
                                 *BASE, *loss, *args])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert re.search(message, lines[0]), lines[0]


def test_search_missing_table_file(tmp_path: Path) -> None:
    result = runner.invoke(app, ["search", "--table", str(tmp_path / "none.json"), "--target-ms", "3",
                                 "--out", str(tmp_path / "o"), *TINY])
    assert result.exit_code == 2 and result.output.startswith("error: ")


def test_search_on_a_device_then_verify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        fake_device: FakeDevice) -> None:
    monkeypatch.setattr(devices_module, "make_client", lambda url, token: LatencyClient(
        url, token, transport=httpx.MockTransport(fake_device.handle)))
    out = tmp_path / "out"
    target = _device_target()
    result = runner.invoke(app, ["search", "--space", "micro-16", "--device", "http://fake-device:8000",
                                 "--target-ms", target, "--out", str(out), *TINY])
    assert result.exit_code == 0, result.output
    assert fake_device.measured  # the missing entries were measured on the device
    assert (out / "table_0.json").is_file()
    verify = runner.invoke(app, ["verify", str(out / "arch.json"), "--device", "http://fake-device:8000"])
    assert verify.exit_code == 0, verify.output
    arch = json.loads((out / "arch.json").read_text())
    predicted = arch["metadata"]["predicted_latency_ms"]["fake/ort-cpu"]
    measured = fake_device.sum_of_ops(arch)  # the fake device's networks are the sums of their ops
    report = json.loads(verify.output.strip().splitlines()[-1])
    assert report["predicted_ms"] == pytest.approx(predicted)
    assert report["measured_ms"] == pytest.approx(measured)
    assert report["relative_error"] == pytest.approx((predicted - measured) / measured)
    assert "relative error" in verify.output
    with_table = runner.invoke(app, ["verify", str(out / "arch.json"), "--device", "http://fake-device:8000",
                                     "--table", str(out / "table_0.json")])
    assert with_table.exit_code == 0 and "table" in with_table.output
    unknown = runner.invoke(app, ["verify", str(out / "arch.json"), "--device", "http://other:8000"])
    assert unknown.exit_code == 2 and "no prediction" in unknown.output


def test_train_a_derived_architecture(tmp_path: Path) -> None:
    arch_file = tmp_path / "arch.json"
    replace(SPACES["micro-16"], num_classes=4).architecture([0, 6, 2]).save(arch_file)  # a head of 4 outputs
    result = runner.invoke(app, ["train", str(arch_file), "--data", "synthetic:200:4", "--epochs", "3",
                                 "--batch-size", "16", "--out", str(tmp_path / "t")])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "t" / "train_summary.json").read_text())
    assert summary["top1"] > 0.5  # 4 learnable classes: well above chance (0.25)
    assert f"top-1 {summary['top1']:.4f}" in result.output
    bad = runner.invoke(app, ["train", str(tmp_path / "none.json"), "--epochs", "1", "--out", str(tmp_path / "u")])
    assert bad.exit_code == 2 and bad.output.startswith("error: ")


def test_cli_defaults_are_the_search_configs() -> None:
    """Every search option that is a SearchConfig field defaults to that field's default (one copy)."""
    import typer.main

    from search_client.nas.config import SearchConfig

    from search_client.training.datasets import DataOptions

    command = typer.main.get_command(app).commands["search"]
    defaults = SearchConfig.defaults()
    renamed = {"device_weight": "device_weights"}
    checked = 0
    for param in command.params:
        field = renamed.get(param.name, param.name)
        if field in defaults:
            assert param.default == defaults[field], param.name
            checked += 1
    assert checked >= 15  # the data options are checked below
    # the data options: the same options in search and train, defaulting to DataOptions' fields
    data = DataOptions()
    names = {"data": "source", "workers": "workers", "valid_per_class": "valid_per_class",
             "val_folder": "val_folder", "color_jitter": "color_jitter"}
    train = typer.main.get_command(app).commands["train"]
    for cmd in (command, train):
        params = {p.name: p for p in cmd.params}
        for name, field in names.items():
            assert params[name].default == getattr(data, field), (cmd.name, name)
    assert [(p.opts, p.help) for p in command.params if p.name in names] == [
        (p.opts, p.help) for p in train.params if p.name in names]


def test_device_weight_with_max_mode_is_refused_in_one_line(tmp_path: Path, table_file: Path) -> None:
    result = runner.invoke(app, ["search", "--table", str(table_file), "--table", str(table_file),
                                 "--target-ms", _target(table_file), "--out", str(tmp_path / "o"), *TINY,
                                 "--device-mode", "max", "--device-weight", "1", "--device-weight", "3"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "max device mode" in lines[0] and "uses no weights" in lines[0]
    assert not (tmp_path / "o").exists()  # refused before anything ran


def test_paper_schedule_is_one_flag_away_and_warned_about(tmp_path: Path, table_file: Path) -> None:
    out = tmp_path / "paper"
    result = runner.invoke(app, ["search", "--table", str(table_file), "--target-ms", _target(table_file),
                                 "--out", str(out), *TINY, "--paper-schedule"])
    assert result.exit_code == 0, result.output
    assert "warning: the architecture can hardly move" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["arch_lr"] == 1e-3 and summary["arch_every"] == 5
    clash = runner.invoke(app, ["search", "--table", str(table_file), "--target-ms", _target(table_file),
                                "--out", str(tmp_path / "x"), *TINY, "--paper-schedule", "--arch-every", "2"])
    assert clash.exit_code == 2 and "--paper-schedule: it sets --arch-lr 0.001 --arch-every 5" in clash.output


def test_ctrl_c_prints_the_checkpoint_and_the_resume_command_and_exits_130(
        tmp_path: Path, table_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import search_client.nas.search_loop as loop

    args = ["search", "--table", str(table_file), "--target-ms", _target(table_file), "--data", "synthetic:120:10",
            "--epochs", "2", "--batch-size", "16", "--loss", "hinge", "--arch-every", "2", "--no-progress"]
    straight = runner.invoke(app, [*args, "--out", str(tmp_path / "straight")])
    assert straight.exit_code == 0, straight.output

    real_step, calls = loop.weight_step, []
    per_epoch = 96 // 16

    def interrupted_step(*a, **k):  # Ctrl-C in the middle of the second epoch
        calls.append(1)
        if len(calls) == per_epoch + 3:
            raise KeyboardInterrupt
        return real_step(*a, **k)

    monkeypatch.setattr(loop, "weight_step", interrupted_step)
    out = tmp_path / "stopped"
    stopped = runner.invoke(app, [*args, "--out", str(out)])
    assert stopped.exit_code == 130, stopped.output
    assert f"the checkpoint {out / 'checkpoint.pt'} holds 1 finished epoch(s)" in stopped.output
    command = [line for line in stopped.output.splitlines() if line.startswith("resume with: ")]
    assert len(command) == 1
    resume = shlex.split(command[0].removeprefix("resume with: "))
    # run as `python -m search_client.cli` (under pytest): the same interpreter, so no activated venv is needed
    assert resume[:4] == [sys.executable, "-m", "search_client.cli", "search"] and resume[-1] == "--resume"

    monkeypatch.setattr(loop, "weight_step", real_step)
    resumed = runner.invoke(app, resume[3:])
    assert resumed.exit_code == 0, resumed.output
    done = json.loads((out / "summary.json").read_text())
    assert done["choices"] == json.loads((tmp_path / "straight" / "summary.json").read_text())["choices"]


def test_ctrl_c_before_the_first_epoch_says_there_is_no_checkpoint(
        tmp_path: Path, table_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import search_client.nas.search_loop as loop

    def interrupted_step(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "weight_step", interrupted_step)
    result = runner.invoke(app, ["search", "--table", str(table_file), "--target-ms", _target(table_file),
                                 "--out", str(tmp_path / "o"), *TINY])
    assert result.exit_code == 130
    start = shlex.join([sys.executable, "-m", "search_client.cli", "search", "--out"])
    assert f"there is no checkpoint yet; start again with: {start}" in result.output
    assert "--resume" not in result.output


def test_ctrl_c_on_devices_resumes_from_the_saved_tables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         fake_device: FakeDevice) -> None:
    import search_client.nas.search_loop as loop

    monkeypatch.setattr(devices_module, "make_client", lambda url, token: LatencyClient(
        url, token, transport=httpx.MockTransport(fake_device.handle)))
    real_step, calls = loop.weight_step, []

    def interrupted_step(*a, **k):
        calls.append(1)
        if len(calls) > 96 // 16:  # after the first epoch
            raise KeyboardInterrupt
        return real_step(*a, **k)

    monkeypatch.setattr(loop, "weight_step", interrupted_step)
    out = tmp_path / "out"
    target = _device_target()
    result = runner.invoke(app, ["search", "--space", "micro-16", "--device", "http://fake-device:8000",
                                 "--token", "secret", "--target-ms", target, "--out", str(out), *TINY,
                                 "--epochs", "2"])
    assert result.exit_code == 130, result.output
    line = next(line for line in result.output.splitlines() if line.startswith("resume with: "))
    assert f"--table {out / 'table_0.json'}" in line
    assert "--device" not in line and "secret" not in line and "--space" not in line


def test_the_printed_program_runs_without_an_activated_venv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from search_client.cli.command_line import program_command

    script = tmp_path / "venv" / "bin" / "proxyless-search"
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\n")
    monkeypatch.setattr(sys, "argv", [str(script), "search"])
    assert program_command() == [str(script.resolve())]
    monkeypatch.setattr(sys, "argv", ["/somewhere/pytest", "search"])
    assert program_command() == [sys.executable, "-m", "search_client.cli"]


def test_help_at_80_columns_shows_every_option_name_whole() -> None:
    import typer.main

    command = typer.main.get_command(app).commands["search"]  # type: ignore[attr-defined]
    result = runner.invoke(app, ["search", "--help"], env={"COLUMNS": "80"}, terminal_width=80)
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.output.splitlines()) <= 80
    words = set(re.split(r"[\s,/]+", result.output))
    missing = [opt for param in command.params for opt in (*param.opts, *param.secondary_opts) if opt not in words]
    assert missing == []
