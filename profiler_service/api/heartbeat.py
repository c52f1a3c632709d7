"""One live service per device identity: the heartbeat of ``proxyless-profiler serve``.

Two services of one device (the same name and fingerprint) on one database would measure the same jobs' ops on the
same cores at the same moment, each disturbing the other. So ``serve`` claims its device's heartbeat row before it
starts its job worker (:meth:`Heartbeat.claim`), renews it every ``heartbeat_s`` seconds while it serves, and
deletes it when it stops cleanly. A second ``serve`` of the device, while the row is fresh, refuses to start with
one line naming the other service (host, process id, when it was last seen), unless told to take over
(``--take-over``, ``PROFILER_TAKE_OVER``): the first service then finds its row another's at its next renewal,
stops its job worker (the other one measures from now on) and logs why. A row not renewed for
:data:`EXPIRY_PERIODS` periods is a crashed service's, and so is the row of a process of this host that no longer
runs (a service restarted after the OOM killer ended it, a restarted container): the next start takes it over.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from latency_db.errors import describe_store_error
from latency_db.models import NAME_MAX_LEN, utcnow
from latency_db.repository.heartbeats import (
    HeartbeatHeld,
    HeartbeatHolder,
    claim_heartbeat,
    heartbeat_holder,
    release_heartbeat,
    renew_heartbeat,
)
from latency_db.transactions import write_session

log = logging.getLogger(__name__)

#: A heartbeat row not renewed for this many periods is a crashed service's.
EXPIRY_PERIODS = 3


def this_host() -> str:
    """The host name a heartbeat row records (cut to the column's length)."""
    return socket.gethostname()[:NAME_MAX_LEN] or "?"


def process_gone(holder: HeartbeatHolder) -> bool:
    """Whether ``holder`` is a process of this host that no longer runs: its process id is free, or is this very
    process's (a restarted container's service runs as the same pid on the same host name)."""
    if holder.hostname != this_host():
        return False
    if holder.pid == os.getpid():
        return True
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # a process of another user: it runs
        return False
    return False


class Heartbeat:
    """The heartbeat row of one service: :meth:`claim` it, :meth:`start` renewing it, :meth:`stop` (deletes it).

    ``on_lost(reason)`` is called once, from the renewing thread, when another service took the device over.
    """

    def __init__(self, sessions: sessionmaker[Session], device_id: int, owner: str, period_s: float,
                 on_lost: Callable[[str], None]) -> None:
        self.sessions = sessions
        self.device_id = device_id
        self.owner = owner
        self.period_s = period_s
        self.on_lost = on_lost
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def expiry_s(self) -> float:
        return EXPIRY_PERIODS * self.period_s

    def claim(self, take_over: bool) -> HeartbeatHolder | None:
        """Claim the device's row (see the module docstring); returns the holder it replaced (None: none). Raises
        HeartbeatHeld when another live service holds it and ``take_over`` is False."""
        with write_session(self.sessions) as session:
            replaced = claim_heartbeat(session, device_id=self.device_id, owner=self.owner, pid=os.getpid(),
                                       hostname=this_host(), expiry_s=self.expiry_s, take_over=take_over,
                                       is_gone=process_gone)
        if replaced is not None:
            log.warning("took device %d over from %s", self.device_id, replaced.describe(utcnow()))
        return replaced

    def start(self) -> None:
        """Renew the row every ``period_s`` in a daemon thread."""
        self._thread = threading.Thread(target=self._run, name="profiler-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop renewing and delete the row (unless another service holds it now)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.period_s + 30)
        if self.lost:
            return
        try:
            with write_session(self.sessions) as session:
                release_heartbeat(session, device_id=self.device_id, owner=self.owner)
        except SQLAlchemyError as exc:  # the row expires by itself
            log.warning("could not delete the heartbeat row of device %d: %s", self.device_id,
                        describe_store_error(exc))

    def renew(self) -> bool:
        """Renew the row once; False (and ``on_lost`` called) when another service holds it now."""
        with write_session(self.sessions) as session:
            if renew_heartbeat(session, device_id=self.device_id, owner=self.owner):
                return True
            holder = heartbeat_holder(session, self.device_id)
        self.lost = True
        other = "no service (its row was deleted)" if holder is None else holder.describe(utcnow())
        reason = (f"another service took device {self.device_id} over: it is now served by {other}; this "
                  "service stops its job worker (the other one measures) and should be stopped")
        log.error("%s", reason)
        self.on_lost(reason)
        return False

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                if not self.renew():
                    return
            except SQLAlchemyError as exc:  # the database is away for a moment: renew at the next period
                log.warning("heartbeat of device %d not renewed: %s", self.device_id, describe_store_error(exc))


__all__ = ["EXPIRY_PERIODS", "Heartbeat", "HeartbeatHeld", "process_gone", "this_host"]
