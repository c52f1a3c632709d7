"""Child-process entry point of the concurrent-migration test (a module of its own so spawn can import it)."""

from __future__ import annotations

from multiprocessing.synchronize import Barrier

from latency_db.migrate import upgrade_to_head


def migrate_after_barrier(url: str, barrier: Barrier) -> None:
    """Wait until every process is ready, then upgrade ``url`` to head (an exception gives exit code 1)."""
    barrier.wait(timeout=60)
    upgrade_to_head(url)
