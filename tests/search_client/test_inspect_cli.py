"""``proxyless-search inspect``: table and JSON output for our files and net.config, errors as exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nas_ops.counting import count_flops, count_params
from nas_ops.official import to_net_config
from nas_ops.reference_networks import mobilenet_v2
from nas_ops.space import SPACES
from search_client.cli import app

runner = CliRunner()
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def arch_file(tmp_path: Path) -> Path:
    path = tmp_path / "mnv2.json"
    mobilenet_v2().save(path)
    return path


def _json(args: list[str]) -> dict:
    result = runner.invoke(app, ["inspect", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_json_output_lists_every_op_with_counts(arch_file: Path) -> None:
    data = _json([str(arch_file)])
    assert (data["params"], data["flops"]) == (3_504_872, 300_774_272)
    assert len(data["blocks"]) == 1 + 17 + 1 + 1
    first, last = data["blocks"][0], data["blocks"][-1]
    assert first == {"role": "stem", "spec": "conv_r224x224_c3-32_k3_s2_relu6", "output_shape": [32, 112, 112],
                     "params": 928, "flops": 10_838_016}
    assert last["spec"] == "head_r7x7_c1280-1000" and last["output_shape"] == [1000]
    assert sum(b["params"] for b in data["blocks"]) == data["params"]
    assert sum(b["flops"] for b in data["blocks"]) == data["flops"]


def test_resolution_rescales_every_op(arch_file: Path) -> None:
    data = _json([str(arch_file), "--resolution", "96"])
    assert data["input_size"] == [96, 96]
    assert data["blocks"][0]["spec"] == "conv_r96x96_c3-32_k3_s2_relu6"
    assert data["blocks"][-1]["spec"] == "head_r3x3_c1280-1000"
    expected = mobilenet_v2(resolution=96)
    assert (data["params"], data["flops"]) == (count_params(expected), count_flops(expected))


def test_net_config_is_detected_and_imported_at_the_resolution(tmp_path: Path) -> None:
    arch = SPACES["tiny-32"].architecture([0, 6, 1, 2, 3, 6, 5])
    path = tmp_path / "net.config"
    path.write_text(json.dumps(to_net_config(arch)))
    data = _json([str(path), "--resolution", "32"])
    assert [b["spec"] for b in data["blocks"]] == [str(s) for s in arch.specs()]
    assert data["params"] == count_params(arch)
    default = _json([str(path)])  # no resolution in the file: imported at 224
    assert default["input_size"] == [224, 224]


def test_table_output(arch_file: Path) -> None:
    result = runner.invoke(app, ["inspect", str(arch_file)])
    assert result.exit_code == 0, result.output
    assert "mbconv_r112x112_c16-24_k3_e6_s2_relu6" in result.stdout
    assert "3,504,872" in result.stdout and "300,774,272" in result.stdout
    assert "32x112x112" in result.stdout


@pytest.mark.parametrize(("content", "extra", "message"), [
    (None, [], "No such file"),
    ("{not json", [], "not valid JSON"),
    (json.dumps({"format": "proxyless-arch", "version": 1, "stem": "conv_r8x8_c3-8_k4_s1_relu6", "blocks": [],
                 "head": "head_r8x8_c8-10"}), [], "op spec field 'kernel'"),
    (json.dumps({"first_conv": {"name": "ConvLayer"}, "blocks": [], "classifier": {}}), [],
     "net.config first_conv.in_channels: missing"),
    (json.dumps([1, 2]), [], "expected a JSON object"),
    ("{}", ["--resolution", "0"], "--resolution"),
])
def test_errors_are_one_line_and_exit_2(tmp_path: Path, content: str | None, extra: list[str], message: str) -> None:
    path = tmp_path / "arch.json"
    if content is not None:
        path.write_text(content)
    result = runner.invoke(app, ["inspect", str(path), *extra])
    assert result.exit_code == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output and result.stdout == ""


def test_real_subprocess(arch_file: Path) -> None:
    script = Path(sys.executable).parent / "proxyless-search"
    ok = subprocess.run([str(script), "inspect", str(arch_file), "--json"], capture_output=True, text=True,
                        timeout=120, cwd=REPO)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["params"] == 3_504_872
    missing = subprocess.run([str(script), "inspect", str(arch_file.with_name("nope.json"))], capture_output=True,
                             text=True, timeout=120, cwd=REPO)
    assert missing.returncode == 2
    assert missing.stderr.startswith("error: ") and "No such file" in missing.stderr
    assert "Traceback" not in missing.stderr
