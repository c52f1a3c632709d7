"""How the command lines report errors: one line on stderr and an exit code, never a traceback.

Exit codes: 2 for bad input (ValueError, :class:`BadRequest`, a local file that cannot be read or written), 1 for
device and data problems (every other :class:`LatencyClientError`, :class:`MissingEntriesError`), 130 for an
interrupted command (Ctrl-C; what to do next is printed by the command).

Bad input includes training data that does not fit the network: every command that trains (``search``,
``train``, the demo) refuses data whose number of classes is not the head's number of outputs with
:class:`search_client.training.datasets.ClassCountMismatch`, a ValueError naming both numbers.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from search_client.device.errors import BadRequest, LatencyClientError, MissingEntriesError

EXIT_INTERRUPTED = 130


def exit_code(exc: BaseException) -> int:
    """Exit code of the command line for ``exc``: 2 for bad input (incl. local files), 1 for device and data problems.

    Order matters: a :class:`MissingEntriesError` is a ValueError but means the device lacks data (1);
    a :class:`BadRequest` means the caller asked for something the device refuses (2).
    """
    if isinstance(exc, MissingEntriesError):
        return 1
    if isinstance(exc, (ValueError, BadRequest, OSError)):
        return 2
    return 1


@contextmanager
def exit_on_error() -> Iterator[None]:
    """For command lines: turn a known error into one line on stderr and :func:`exit_code`, no traceback."""
    try:
        yield
    except (LatencyClientError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(exit_code(exc)) from None
