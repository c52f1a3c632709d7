"""Deployment files: the compose file parses and points at what exists; the containers' commands run as processes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from tests.live import free_port

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
VENV_BIN = Path(sys.executable).parent
VARIABLE = re.compile(r"\$\{(\w+)(?::([-?])([^}]*))?\}")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error} (enough to check what the file requires)."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        value = env.get(name, "")
        if value:
            return value
        if op == "?":
            raise KeyError(f"{name}: {arg}")
        return arg or ""

    return VARIABLE.sub(one, text.replace("$$", "\0")).replace("\0", "$")


def compose(env: dict[str, str]) -> dict:
    return yaml.safe_load(interpolate(COMPOSE.read_text(), env))


def test_compose_services_name_images_and_build_contexts_that_exist() -> None:
    services = compose({"PROFILER_TOKEN": "t", "SEARCH_TARGETS_MS": "2"})["services"]
    assert set(services) == {"postgres", "profiler-cpu", "profiler-gpu", "search"}
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        if "build" in service:
            context = ROOT / service["build"]["context"]
            dockerfile = context / service["build"]["dockerfile"]
            assert context.is_dir() and dockerfile.is_file(), name
            for line in dockerfile.read_text().splitlines():  # every COPY source exists in the context
                if line.startswith("COPY "):
                    for source in line.split()[1:-1]:
                        assert (context / source).exists(), f"{name}: {source}"
    assert services["postgres"]["healthcheck"]["test"] and services["postgres"]["volumes"]
    assert services["profiler-cpu"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["profiler-gpu"]["profiles"] == ["gpu"]
    gpu = services["profiler-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"]
    assert services["search"]["environment"]["SEARCH_DEVICES"] == "http://profiler-cpu:8000"


def test_compose_defaults_are_safe_and_token_is_required() -> None:
    with pytest.raises(KeyError, match="PROFILER_TOKEN"):
        compose({"SEARCH_TARGETS_MS": "2"})
    env = compose({"PROFILER_TOKEN": "t", "SEARCH_TARGETS_MS": "2"})["services"]["profiler-cpu"]["environment"]
    assert env["PROFILER_TOKEN"] == "t" and str(env["PROFILER_THREADS"]) == "1"
    assert env["PROFILER_DB_URL"] == "postgresql+psycopg://proxyless:proxyless@postgres:5432/latency"


def test_compose_profilers_answer_the_names_they_are_reached_by() -> None:
    """Each profiler answers its service name (the search container's URL) besides PROFILER_ALLOWED_HOSTS."""
    from profiler_service.api.browser_safety import HostPolicy
    from profiler_service.settings import ProfilerSettings

    services = compose({"PROFILER_TOKEN": "t", "SEARCH_TARGETS_MS": "2"})["services"]
    search_host = urlsplit(services["search"]["environment"]["SEARCH_DEVICES"]).hostname
    for name in ("profiler-cpu", "profiler-gpu"):
        allowed = services[name]["environment"]["PROFILER_ALLOWED_HOSTS"]
        policy = HostPolicy.of(ProfilerSettings(host="0.0.0.0", allowed_hosts=allowed))
        assert policy.allows(name) and policy.allows("localhost") and not policy.allows("cpu-box")
    assert search_host == "profiler-cpu"
    env = compose({"PROFILER_TOKEN": "t", "SEARCH_TARGETS_MS": "2", "PROFILER_ALLOWED_HOSTS": "cpu-box,10.0.0.5"})
    allowed = env["services"]["profiler-cpu"]["environment"]["PROFILER_ALLOWED_HOSTS"]
    assert ProfilerSettings(allowed_hosts=allowed).allowed_host_names() == ["profiler-cpu", "cpu-box", "10.0.0.5"]


def test_dockerfiles_run_as_non_root_with_health_checks() -> None:
    for path in (ROOT / "docker").glob("*.Dockerfile"):
        text = path.read_text()
        assert re.search(r"^USER (?!root)\w+", text, re.M), path.name
        assert "HEALTHCHECK" in text and "torch==2.13.0" in text, path.name
        entrypoint = re.search(r'ENTRYPOINT \["/bin/sh", "/usr/local/bin/([\w-]+\.sh)"\]', text).group(1)
        assert (ROOT / "docker" / entrypoint).is_file()


def run_entrypoint(script: str, env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", **env}
    return subprocess.run(["sh", str(ROOT / "docker" / script), *args], env=full_env, capture_output=True, text=True,
                          timeout=timeout)


def test_profiler_entrypoint_refuses_exposed_bind_without_token(tmp_path) -> None:
    result = run_entrypoint("entrypoint-profiler.sh", {"PROFILER_DB_URL": f"sqlite:///{tmp_path}/x.db",
                                                       "PROFILER_TOKEN": ""})
    assert result.returncode == 2 and "refusing to listen on 0.0.0.0 without a token" in result.stderr


def test_profiler_entrypoint_serves_migrates_and_passes_its_health_check(tmp_path) -> None:
    port = free_port()
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "PROFILER_HOST": "127.0.0.1",
           "PROFILER_PORT": str(port), "PROFILER_DB_URL": f"sqlite:///{tmp_path}/data.db", "PROFILER_TOKEN": "tok",
           "PROFILER_BACKENDS": "ort-cpu", "PROFILER_LOG_LEVEL": "warning"}
    process = subprocess.Popen(["sh", str(ROOT / "docker" / "entrypoint-profiler.sh")], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    health = [sys.executable, str(ROOT / "docker" / "healthcheck.py")]
    try:
        for _ in range(150):
            if subprocess.run(health, env=env, capture_output=True).returncode == 0:
                break
            assert process.poll() is None, process.stderr.read().decode()
            time.sleep(0.2)
        else:
            raise AssertionError("the profiler container command never became healthy")
        device = httpx.get(f"http://127.0.0.1:{port}/v1/device", timeout=5).json()
        assert [b["name"] for b in device["backends"]] == ["ort-cpu"] and device["default_threads"] == 1
        assert httpx.post(f"http://127.0.0.1:{port}/v1/measure", json={"ops": ["head_r1x1_c8-2"]},
                          timeout=5).status_code == 401
    finally:
        process.terminate()
        process.wait(20)
    assert (tmp_path / "data.db").is_file()  # migrated at start
    down = subprocess.run(health, env=env, capture_output=True, text=True)
    assert down.returncode == 1 and "unhealthy" in down.stderr


def test_search_entrypoint_requires_devices_and_targets() -> None:
    result = run_entrypoint("entrypoint-search.sh", {"SEARCH_DEVICES": "", "SEARCH_TARGETS_MS": ""})
    assert result.returncode != 0 and "SEARCH_DEVICES" in result.stderr
