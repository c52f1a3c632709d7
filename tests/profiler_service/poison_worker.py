"""A job worker in its own process whose measurement ends that process (``os._exit``, as a SIGKILL from the OOM
killer would): ``python -m tests.profiler_service.poison_worker DB_URL``. It exits 0 when it found no job to
measure within a few seconds (the poison item was failed without being measured)."""

from __future__ import annotations

import os
import sys
import time

from latency_db.models import JobItem
from tests.profiler_service.jobs_fakes import ScriptedMeasurer, make_worker, open_store


def main(url: str) -> int:
    def die(spec: str, kwargs: object) -> None:
        os._exit(137)

    with open_store(url) as store:
        worker = make_worker(store, ScriptedMeasurer(before_return=die), lease_s=0.5)
        worker.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with store.sessions() as session:
                if all(item.status != "pending" for item in session.query(JobItem)):
                    break
            time.sleep(0.05)
        worker.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
