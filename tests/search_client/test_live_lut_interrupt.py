"""Against a REAL profiler process: a repeated ``lut`` attaches to the job already measuring its ops, and Ctrl-C
(SIGINT) on ``lut`` cancels that job on the service and exits 130.

The profiler runs the cold protocol (real rounds with a 16 MiB cache flush before every run, not the fast one), so
the job of the 70 proxyless-mobile ops lasts a minute or more, longer on a loaded machine: long enough to start
``lut`` (seconds of imports on a loaded machine), attach to the job and interrupt it while it runs. (Under the warm
protocol the job took about as long as starting ``lut`` under load, and could end first.) Only behaviour is asserted (exit codes, printed
lines, job statuses, rows), never timings."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from nas_ops.counting import space_working_set_bytes
from nas_ops.space import SPACES
from search_client.device.client import LatencyClient
from search_client.device.local_profiler import LocalProfiler
from search_client.table.latency_table import table_specs
from tests.live import PROFILER

pytestmark = pytest.mark.live
SEARCH = PROFILER.with_name("proxyless-search")
SPACE = SPACES["proxyless-mobile"]
DEADLINE_S = 120.0


@pytest.fixture(scope="module")
def warm_profiler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalProfiler]:
    directory = tmp_path_factory.mktemp("lut_interrupt")
    profiler = LocalProfiler(f"sqlite:///{directory / 'latency.db'}", directory / "serve.log", protocol="cold",
                             env={"PROFILER_WORKER_POLL_S": "0.1"}).start()
    try:
        yield profiler
    finally:
        profiler.stop()


def interruptible() -> None:
    """In the child before it runs ``lut``: SIGINT back to its default, as in a terminal. A suite started in the
    background of a non-interactive shell (or by a runner that ignores SIGINT) runs with SIGINT ignored, which every
    child inherits through exec; Python then installs no KeyboardInterrupt handler and ``lut`` would not see the
    Ctrl-C at all."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {DEADLINE_S} s: {what}")
        time.sleep(0.1)


class Output:
    """The lines a process prints (stdout and stderr), read in a thread."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen) -> None:
        for line in process.stdout:
            self.lines.append(line.rstrip("\n"))

    def has(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def join(self) -> str:
        self._thread.join(timeout=DEADLINE_S)
        return "\n".join(self.lines)


def test_a_repeated_lut_attaches_and_ctrl_c_cancels_the_job(warm_profiler: LocalProfiler, tmp_path: Path) -> None:
    url = warm_profiler.url
    with LatencyClient(url) as client:  # the job of an earlier lut, running on the device
        job_id = client.submit_measure(table_specs(SPACE), "ort-cpu",
                                       working_set_bytes=space_working_set_bytes(SPACE, 1, "float32"))["id"]
        wait_until(lambda: client.job(job_id)["status"] == "running", f"job {job_id} runs")

        out = tmp_path / "mobile.lut.json"
        process = subprocess.Popen([str(SEARCH), "lut", "--space", SPACE.name, "--device", url, "--backend", "ort-cpu",
                                    "--anchors", "0", "--out", str(out)], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, env={**os.environ, "COLUMNS": "200"},
                                   preexec_fn=interruptible)
        output = Output(process)
        try:
            wait_until(lambda: output.has(f"attached to running job {job_id}") or process.poll() is not None,
                       "lut says it attached")
            assert process.poll() is None, output.join()
            process.send_signal(signal.SIGINT)  # what Ctrl-C sends
            assert process.wait(timeout=DEADLINE_S) == 130
        finally:
            if process.poll() is None:
                process.kill()
        printed = output.join()
        assert f"interrupted: cancelled job {job_id} on {url}" in printed, printed
        assert "Traceback" not in printed and not out.exists()

        wait_until(lambda: client.job(job_id)["status"] == "cancelled", f"job {job_id} is cancelled")
        jobs = httpx.get(f"{url}/v1/jobs", timeout=10).json()["jobs"]
        assert [job["id"] for job in jobs if job["kind"] == "ops"] == [job_id]  # no duplicate was queued
        assert client.health()["status"] == "ok"  # the service goes on
