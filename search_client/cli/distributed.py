"""The commands that train (``search``, ``train``) across processes: ``--nproc N`` starts them again under
torchrun, and under torchrun only rank 0 draws, prints and reports.

``--nproc N`` (N > 1) replaces the process by ``python -m torch.distributed.run --standalone --nproc-per-node N
-m search_client.cli COMMAND ARGS`` with the same arguments less ``--nproc`` (one node; for several nodes, or
``--max-restarts``, run torchrun yourself: docs/distributed.md). A failure of the run of several processes
(:class:`search_client.training.distributed.DistributedError`) is one line on stderr and exit code 1; a bad input
is reported by rank 0 alone.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

from search_client.cli.errors import exit_code
from search_client.nas.callbacks import SearchCallbacks
from search_client.training.distributed import DistributedError, torchrun_env

TORCHRUN_MODULE = "torch.distributed.run"
CLI_MODULE = "search_client.cli"


def torchrun_command(command: str, args: list[str], nproc: int) -> list[str]:
    """The command line that runs ``proxyless-search COMMAND ARGS`` in ``nproc`` processes on this node."""
    return [sys.executable, "-m", TORCHRUN_MODULE, "--standalone", f"--nproc-per-node={nproc}",
            "-m", CLI_MODULE, command, *args]


def check_nproc(nproc: int) -> None:
    """ValueError for ``--nproc`` above 1 inside a torchrun run (torchrun already chose the processes)."""
    if nproc < 1:
        raise ValueError(f"--nproc: must be >= 1, got {nproc}")
    if nproc > 1 and torchrun_env() is not None:
        raise ValueError("--nproc: this command already runs under torchrun, which starts the processes; leave "
                         "--nproc out (or run it without torchrun)")


def relaunch_under_torchrun(command: str, args: list[str], nproc: int) -> NoReturn:
    """Replace this process by torchrun running ``command`` with ``args`` in ``nproc`` processes."""
    sys.stdout.flush()
    sys.stderr.flush()
    cmd = torchrun_command(command, args, nproc)
    os.execv(cmd[0], cmd)


class QuietCallbacks(SearchCallbacks):
    """The callbacks of ranks other than 0: rank 0 prints the warnings and the progress for the whole run."""

    def warning(self, message: str) -> None:
        pass


@contextmanager
def exit_on_distributed_error() -> Iterator[None]:
    """For the commands (inside :func:`search_client.cli.errors.exit_on_error`): a :class:`DistributedError` is
    one line on stderr and exit code 1 on every rank (a rank may be the only one left to tell). A bad-input error
    (ValueError, OSError), which every rank meets alike, is printed by rank 0 only: the other ranks exit with its
    code without a second copy of the line."""
    try:
        yield
    except DistributedError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    except (ValueError, OSError) as exc:
        place = torchrun_env()
        if place is None or place[0] == 0:
            raise
        raise SystemExit(exit_code(exc)) from None
