"""The command line's bars are drawn from the callbacks of the client and the search loop."""

from __future__ import annotations

import io

from rich.console import Console

from search_client.cli.progress import JobBars, SearchBars
from search_client.device.client import JobProgress
from tests.search_client.conftest import FakeDevice


def _console() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=False, width=120), buffer


def test_job_bars_follow_the_client_polls() -> None:
    console, buffer = _console()
    device = FakeDevice(polls_to_finish=2)
    with device.client() as client, JobBars(console=console) as bars:
        job = client.submit_measure(["conv_r16x16_c3-8_k3_s1_relu6"], "ort-cpu")
        client.wait_job(job["id"], timeout_s=5, poll_s=0.01, progress=bars)
    assert f"job {job['id']} done" in buffer.getvalue() and "1/1" in buffer.getvalue()


def test_job_bars_disabled_draw_nothing() -> None:
    console, buffer = _console()
    with JobBars(enabled=False, console=console) as bars:
        bars(JobProgress(1, "running", 3, 10))
    assert buffer.getvalue() == ""


def test_search_bars_print_epoch_lines_and_warnings_even_without_bars() -> None:
    row = {"epoch": 1, "phase": "search", "train_loss": 1.0, "train_acc": 0.5, "valid_acc": 0.4,
           "argmax_ms": [0.1], "targets_ms": [0.2], "entropy": 1.5, "strength": 0.3}
    console, buffer = _console()
    with SearchBars(console=console) as bars:
        bars.warning("the architecture can hardly move")
        bars.epoch_start(1, 2, "search", 3)
        for _ in range(3):
            bars.step()
        bars.epoch_end(row)
    text = buffer.getvalue()
    assert "warning: the architecture can hardly move" in text
    assert "epoch 1/2 (search)" in text and "3/3" in text and "epoch 1 search: train loss 1.000" in text
    quiet, quiet_buffer = _console()
    with SearchBars(enabled=False, console=quiet) as bars:
        bars.warning("stuck")
        bars.epoch_start(1, 2, "search", 3)
        bars.step()
        bars.epoch_end(row)
    assert quiet_buffer.getvalue() == "warning: stuck\n"
