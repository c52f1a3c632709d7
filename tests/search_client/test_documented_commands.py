"""The search commands of the README, docs/deploy.md and docker-compose.yml run as written.

Each command's arguments are taken from the document itself and run through ``proxyless-search search``, with
``--device URL`` / ``--table FILE`` pointing at each stored tiny-32 table measured the way the documents measure it
(``serve --backends ort-cpu --threads 1``, whose auto protocol measures tiny-32 warm on a 2 MiB L2, as the
containers' auto protocol does): ``data/tiny-32.ort-cpu.warm.slow.lut.json`` and ``...warm.fast.lut.json``, from
two machines of different speed (0.07-0.37 and 0.03-0.14 ms), so a documented target must fit both (the README's
target is derived from the table by its own shell line, run here on each table). ``--out`` goes to
a temporary directory. Every check a search makes before training runs on the
real arguments (targets inside the table's range, loss units, the architecture schedule's warning), then one
epoch trains (a full run takes minutes).
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import search_client.cli.commands.search as search_command
from nas_ops.counting import space_working_set_bytes
from profiler_service.engine.cache_regime import CacheInfo
from profiler_service.engine.protocol_presets import ServiceProtocol, regime_of_version
from search_client.cli import app
from search_client.table.latency_table import LatencyTable
from tests.deploy.test_docker import compose

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).resolve().parent / "data"
WARM_TABLES = (DATA / "tiny-32.ort-cpu.warm.slow.lut.json", DATA / "tiny-32.ort-cpu.warm.fast.lut.json")
QUICK_START = "## Quick start"
runner = CliRunner()


def _shell_lines(path: Path, heading: str) -> list[str]:
    """The command lines (continuation lines joined, comments dropped) of the ```bash blocks under ``heading``."""
    text = path.read_text(encoding="utf-8")
    section = text[text.index(heading):]
    section = section[:section.find("\n## ", len(heading))] if "\n## " in section[len(heading):] else section
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", section, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line).strip()  # a comment starts a word, as in sh
            if line:
                lines.append(line)
    return lines


def _bash_blocks(path: Path, heading: str) -> list[list[str]]:
    """The commands of the ```bash blocks under ``heading``, split into words as sh does."""
    return [shlex.split(line) for line in _shell_lines(path, heading)]


def _readme_target(table: Path, tmp_path: Path) -> str:
    """The README's target for ``table``: its ``T=$(...)`` line run by bash, with the venv of this interpreter."""
    line = next(line for line in _shell_lines(ROOT / "README.md", QUICK_START) if line.startswith("T=$("))
    line = (line.replace(".venv/bin/", f"{Path(sys.executable).parent}/").replace("tiny.lut.json", str(table))
            .replace("tiny.lut.png", str(tmp_path / "tiny.lut.png")))
    done = subprocess.run(["bash", "-c", f'{line}\nprintf "%s" "$T"'], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout, done.stderr
    return done.stdout


def _search_args(command: list[str]) -> list[str]:
    """The arguments after ``proxyless-search search``."""
    program = next(i for i, word in enumerate(command) if word.endswith("proxyless-search"))
    assert command[program + 1] == "search", command
    return command[program + 2:]


def _replace(args: list[str], option: str, make: callable) -> list[str]:
    """``args`` with the value of every ``option`` replaced by ``make(value)``."""
    out = list(args)
    for i, word in enumerate(out[:-1]):
        if word == option:
            out[i + 1] = make(out[i + 1])
    return out


def _devices_to_tables(args: list[str], table: Path) -> list[str]:
    """Every ``--device URL`` of ``args`` becomes ``--table FILE`` (no live profiler)."""
    out = []
    for word in args:
        out.append("--table" if word == "--device" else word)
    return _replace(out, "--table", lambda value: str(table) if value.startswith("http") else value)


def _run(args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run ``search`` with ``args`` (``--out`` moved into ``tmp_path``) for one epoch; return its output."""
    monkeypatch.setattr(search_command, "run_search", functools.partial(search_command.run_search,
                                                                        stop_after_epochs=1))
    args = _replace(args, "--out", lambda value: str(tmp_path / Path(value).name))
    result = runner.invoke(app, ["search", *args, "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "warning:" not in result.output  # the documented schedule moves the architecture
    return result.output


def test_the_stored_tables_were_measured_as_the_documents_say() -> None:
    l2 = CacheInfo(2 << 20, "scripted: 2 MiB L2 per core")
    for path in WARM_TABLES:
        table = LatencyTable.load(path)
        assert table.space.name == "tiny-32" and table.backend == "ort-cpu" and table.threads == 1
        auto = ServiceProtocol("auto", l2).for_working_set(space_working_set_bytes(table.space, 1, "float32"))
        assert auto.regime == regime_of_version(table.protocol_version) == "warm"  # the auto protocol's regime
    readme = _bash_blocks(ROOT / "README.md", QUICK_START)
    serve = next(c for c in readme if "serve" in c)
    assert "--protocol" not in serve and serve[serve.index("--threads") + 1] == "1"  # the auto protocol
    assert serve[serve.index("--backends") + 1] == "ort-cpu"
    lut = next(c for c in readme if "lut" in c)
    assert lut[lut.index("--space") + 1] == "tiny-32" and lut[lut.index("--backend") + 1] == "ort-cpu"
    services = compose({"PROFILER_TOKEN": "t", "SEARCH_TARGETS_MS": "1"})["services"]
    assert services["profiler-cpu"]["environment"]["PROFILER_PROTOCOL"] == "auto"  # as the tables were measured


@pytest.mark.parametrize("table", WARM_TABLES, ids=lambda path: path.name.split(".")[3])
def test_readme_step_by_step_search(table: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    searches = [c for c in _bash_blocks(ROOT / "README.md", QUICK_START) if "search" in c[1:2]]
    assert searches
    target = _readme_target(table, tmp_path)
    low, high = LatencyTable.load(table).min_latency()[0], LatencyTable.load(table).max_latency()[0]
    assert low < float(target) < high
    for command in searches:
        args = _replace(_search_args(command), "--table", lambda _: str(table))
        output = _run(_replace(args, "--target-ms", lambda value: target if value == "$T" else value), tmp_path,
                      monkeypatch)
        assert "architecture:" in output


@pytest.mark.parametrize("table", WARM_TABLES, ids=lambda path: path.name.split(".")[3])
def test_deploy_md_search_on_several_devices(table: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROFILER_TOKEN", "token-of-the-fleet")
    commands = [c for c in _bash_blocks(ROOT / "docs" / "deploy.md", "## Pointing a search at several devices")
                if "search" in c]
    assert commands
    for command in commands:
        args = [os.path.expandvars(word) for word in _search_args(command)]
        assert args.count("--device") == args.count("--target-ms") == 2
        _run(_devices_to_tables(args, table), tmp_path, monkeypatch)


@pytest.mark.parametrize("table", WARM_TABLES, ids=lambda path: path.name.split(".")[3])
def test_compose_search_service_as_deploy_md_starts_it(table: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    line = next(c for c in _bash_blocks(ROOT / "docs" / "deploy.md", "### A fleet with docker compose")
                if "--profile" in c and "search" in c)
    env = dict(word.split("=", 1) for word in line if re.match(r"^[A-Z_]+=", word))
    header = (ROOT / "docker-compose.yml").read_text(encoding="utf-8")
    assert f"SEARCH_TARGETS_MS={env['SEARCH_TARGETS_MS']} docker compose --profile search run" in header
    service = compose({"PROFILER_TOKEN": "t", **env})["services"]["search"]
    environment = {k: str(v) for k, v in service["environment"].items()}
    # the container's command line, as its entrypoint builds it (the program replaced by one that prints it)
    fake = tmp_path / "bin" / "proxyless-search"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    built = subprocess.run(["sh", str(ROOT / "docker" / "entrypoint-search.sh")], capture_output=True, text=True,
                           env={"PATH": f"{fake.parent}:{os.environ['PATH']}", **environment}, timeout=30)
    assert built.returncode == 0, built.stderr
    args = built.stdout.splitlines()
    assert args[0] == "search" and "--loss" not in args  # no loss set: the search's default
    _run(_devices_to_tables(args[1:], table), tmp_path, monkeypatch)


def test_python_entry_points_still_start() -> None:
    for module in ("search_client.cli", "search_client.cli.demo"):
        result = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0, result.stderr
