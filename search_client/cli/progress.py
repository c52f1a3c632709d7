"""Progress bars of the command lines (rich, on stderr), fed by the callbacks of the device client and the search.

- :class:`JobBars`: a :data:`search_client.device.client.ProgressCallback` that draws one bar per measurement job
  (and says "attached to running job N" for a job the device answered a repeated request with).
- :class:`SearchBars`: :class:`search_client.nas.callbacks.SearchCallbacks` that draw one bar per epoch, print the
  epoch's summary line and print warnings as ``warning: ...``.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from search_client.device.client import JobProgress
from search_client.nas.callbacks import SearchCallbacks
from search_client.nas.search_log import summary_line


def _bars(console: Console, enabled: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, disable=not enabled)


class JobBars:
    """One bar per job (done/total), updated after every poll; use as a context manager around the jobs.

    ``enabled=False`` draws nothing (the callback still accepts every update)."""

    def __init__(self, enabled: bool = True, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self._progress = _bars(self.console, enabled)
        self._tasks: dict[int, TaskID] = {}

    def __enter__(self) -> JobBars:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def __call__(self, update: JobProgress) -> None:
        if update.job_id not in self._tasks:
            if update.attached:  # said even without bars: the request started nothing new
                self.console.print(f"attached to running job {update.job_id} (the same work was already queued or "
                                   "running on the device)", markup=False, highlight=False, soft_wrap=True)
            self._tasks[update.job_id] = self._progress.add_task(f"job {update.job_id}", total=None)
        label = f"job {update.job_id} (attached)" if update.attached else f"job {update.job_id}"
        self._progress.update(self._tasks[update.job_id], total=update.total, completed=update.done,
                              description=f"{label} {update.status}")


class SearchBars(SearchCallbacks):
    """One bar per epoch, the epoch's summary line after it, and warnings; use as a context manager around the
    search. ``enabled=False`` draws no bars but still prints warnings (they matter without bars too)."""

    def __init__(self, enabled: bool = True, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.enabled = enabled
        self._progress = _bars(self.console, enabled)
        self._task: TaskID | None = None

    def __enter__(self) -> SearchBars:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def warning(self, message: str) -> None:
        self.console.print(f"warning: {message}", markup=False, highlight=False, soft_wrap=True)

    def epoch_start(self, epoch: int, total_epochs: int, phase: str, steps: int) -> None:
        self._task = self._progress.add_task(f"epoch {epoch}/{total_epochs} ({phase})", total=steps)

    def step(self) -> None:
        if self._task is not None:
            self._progress.advance(self._task)

    def epoch_end(self, row: dict[str, Any]) -> None:
        if self.enabled:
            self.console.print(summary_line(row), markup=False, highlight=False)
