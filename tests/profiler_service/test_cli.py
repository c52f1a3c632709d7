"""The proxyless-profiler CLI: bind rule, local measurement, info, and one-line errors."""

from __future__ import annotations

import json
import socket
import subprocess

import pytest
import torch

from typer.testing import CliRunner

from profiler_service.cli import app, is_loopback
from tests.live import PROFILER, free_port

runner = CliRunner()


def test_loopback_detection() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("myhost")


def test_serve_refuses_public_bind_without_token(tmp_path) -> None:
    result = subprocess.run([str(PROFILER), "serve", "--host", "0.0.0.0", "--db", f"sqlite:///{tmp_path}/x.db"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: refusing to listen on 0.0.0.0 without a token")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "x.db").exists()  # refused before touching the database


def test_serve_rejects_bad_settings() -> None:
    result = runner.invoke(app, ["serve", "--port", "70000"])
    assert result.exit_code == 2 and "port" in result.output


def test_measure_locally_prints_json_stats() -> None:
    spec = "mbconv_r8x8_c8-8_k3_e3_s1_relu6_skip"
    result = runner.invoke(app, ["measure", spec, "--backend", "ort-cpu", "--protocol", "fast", "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout.strip().splitlines()[-1])
    assert document["backend"] == "ort-cpu" and document["stats"][spec]["median_ms"] > 0


def test_measure_locally_stores_what_a_job_would_never_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    """A round whose boundary correction cancels the op (a loaded machine) prints the sandwich's latency as a
    flagged upper bound, as a job stores it: never 0 ms for an op with multiply-adds."""
    from profiler_service.engine import protocol
    from profiler_service.engine.stats import RoundMeasurement, Stats

    sandwich = Stats.from_samples([0.03] * 10)
    monkeypatch.setattr(protocol, "measure_op_round", lambda *args, **kwargs: RoundMeasurement(
        sandwich, correction_ms=0.04, timer_resolution_ms=1e-6))
    spec = "mbconv_r8x8_c8-8_k3_e3_s1_relu6_skip"
    result = runner.invoke(app, ["measure", spec, "--protocol", "fast", "--json"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout.strip().splitlines()[-1])["stats"][spec]
    assert stats["median_ms"] == pytest.approx(0.03) and stats["flagged"].startswith("calibrated_to_zero")
    table = runner.invoke(app, ["measure", spec, "--protocol", "fast"])
    assert f"flagged {spec}: calibrated_to_zero" in table.output.replace("\n", "")


def test_measure_locally_in_a_duet() -> None:
    spec = "mbconv_r8x8_c8-8_k3_e3_s1_relu6_skip"
    result = runner.invoke(app, ["measure", spec, "--backend", "ort-cpu", "--protocol", "fast", "--duet", "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout.strip().splitlines()[-1])
    assert document["protocol_version"] == "4+fast+duet" and document["stats"][spec]["median_ms"] > 0


def test_measure_bad_spec_is_a_one_line_error() -> None:
    result = subprocess.run([str(PROFILER), "measure", "mbconv_r8x8_c8-8_k4_e3_s1_relu6"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: op spec field 'kernel': must be one of (1, 3, 5, 7, 9, 11), got 4"


def test_measure_unknown_backend() -> None:
    result = runner.invoke(app, ["measure", "conv_r16x16_c3-8_k3_s2_relu6", "--backend", "ort-warp"])
    assert result.exit_code == 2 and "ort-warp" in result.output


def test_info_json_lists_available_backends() -> None:
    result = runner.invoke(app, ["info", "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    names = {b["name"] for b in document["backends"]}
    assert {"torch-cpu", "ort-cpu"} <= names
    if not torch.cuda.is_available():
        assert not any("cuda" in name for name in names)  # only what is available is advertised
    assert document["fingerprint"]["cpu_cores"] >= 1


def test_measure_refuses_a_non_canonical_spec_naming_the_canonical_form() -> None:
    result = runner.invoke(app, ["measure", "conv_r16x16_c3-8_k3_s2_relu6 ", "--backend", "ort-cpu"])
    assert result.exit_code == 2
    assert "is not canonical; write it as 'conv_r16x16_c3-8_k3_s2_relu6'" in result.output


def test_measure_applies_the_memory_limit_before_building(monkeypatch) -> None:
    # 512x512x2048 float32 activations in and out: 4 GiB, far above the default 2 GiB per-op limit; nothing is built.
    result = runner.invoke(app, ["measure", "zero_r512x512_c2048-2048_s1", "--backend", "ort-cpu"])
    assert result.exit_code == 2
    assert "per-op memory limit of 2048 MiB" in result.output
    monkeypatch.setenv("PROFILER_MAX_OP_MEMORY_MIB", "512")
    result = runner.invoke(app, ["measure", "mbconv_r128x128_c32-32_k3_e6_s1_relu6", "--backend", "ort-cpu"])
    assert result.exit_code == 2 and "per-op memory limit of 512 MiB" in result.output


def run_serve(*args: str) -> subprocess.CompletedProcess:
    """``serve`` as a subprocess that is expected to fail at start-up (a generous deadline: it must not serve)."""
    return subprocess.run([str(PROFILER), "serve", "--log-level", "warning", *args], capture_output=True, text=True,
                          timeout=120)


def assert_one_clear_line(result: subprocess.CompletedProcess, *needles: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0, result.stderr
    assert len(lines) < 5 and "Traceback" not in result.stderr, result.stderr
    assert "serving on" not in result.stderr + result.stdout
    assert lines[-1].startswith("error: ") and all(needle in lines[-1] for needle in needles), result.stderr


def test_serve_unknown_backend_is_one_line(tmp_path) -> None:
    result = run_serve("--port", str(free_port()), "--backends", "gpu", "--db", f"sqlite:///{tmp_path}/x.db")
    assert_one_clear_line(result, "unknown backend 'gpu'", "ort-cpu")
    assert result.returncode == 2
    assert not (tmp_path / "x.db").exists()  # refused before touching the database


@pytest.mark.postgres
def test_serve_missing_postgresql_database_is_one_line(postgres_server: str) -> None:
    from sqlalchemy.engine import make_url

    url = make_url(postgres_server).set(database="nosuchdb").render_as_string(hide_password=False)
    result = run_serve("--port", str(free_port()), "--backends", "ort-cpu", "--db", url)
    assert_one_clear_line(result, 'database "nosuchdb" does not exist')
    assert result.returncode == 1


def test_serve_port_in_use_is_one_line(tmp_path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_serve("--port", str(port), "--backends", "ort-cpu", "--db", f"sqlite:///{tmp_path}/x.db")
    assert_one_clear_line(result, f"port {port} on 127.0.0.1 is already in use")
    assert not (tmp_path / "x.db").exists()


@pytest.mark.parametrize("where", ["/proc/profiler.db", "{tmp}"])  # /proc: unwritable even as root; a folder
def test_serve_unwritable_sqlite_path_is_one_line(tmp_path, where: str) -> None:
    path = where.format(tmp=tmp_path)
    result = run_serve("--port", str(free_port()), "--backends", "ort-cpu", "--db", f"sqlite:///{path}")
    assert_one_clear_line(result, f"database sqlite:///{path}: unable to open database file")
