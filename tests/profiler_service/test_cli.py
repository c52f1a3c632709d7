"""The proxyless-profiler CLI: bind rule, local measurement, info, and one-line errors."""

from __future__ import annotations

import json
import subprocess

import torch

from typer.testing import CliRunner

from profiler_service.cli import app, is_loopback
from tests.live import PROFILER

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
