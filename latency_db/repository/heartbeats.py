"""Heartbeats: which ``serve`` process is the live service of each device identity (table ``service_heartbeats``).

A service claims its device's row at start (:func:`claim_heartbeat`), renews ``seen_at`` every few seconds while it
serves (:func:`renew_heartbeat`) and deletes the row when it stops cleanly (:func:`release_heartbeat`). A row not
renewed for ``expiry_s`` is a crashed service's: the next start takes it over. A row renewed within ``expiry_s``
belongs to a live service, and a second service of the same device refuses to start (:class:`HeartbeatHeld`)
unless it is told to take over; the first one's next renewal then finds the row another owner's (False), and it
stops its work.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from latency_db.models import LEASE_OWNER_MAX_LEN, NAME_MAX_LEN, Device, ServiceHeartbeat, utcnow
from latency_db.repository._checks import check_positive_int, check_text


@dataclass(frozen=True)
class HeartbeatHolder:
    """The service a heartbeat row names: its owner id, process id and host, when it started and was last seen."""

    owner: str
    pid: int
    hostname: str
    started_at: datetime
    seen_at: datetime

    @classmethod
    def of(cls, row: ServiceHeartbeat) -> HeartbeatHolder:
        return cls(row.owner, row.pid, row.hostname, row.started_at, row.seen_at)

    def describe(self, now: datetime) -> str:
        """``pid 1234 on host-a (last seen 2 s ago, started 2025-01-02 10:00:01 UTC)``."""
        ago = max(0.0, (now - self.seen_at).total_seconds())
        return (f"pid {self.pid} on {self.hostname} (last seen {ago:.0f} s ago, started "
                f"{self.started_at:%Y-%m-%d %H:%M:%S} UTC)")


class HeartbeatHeld(RuntimeError):
    """The device is served by a live service (its row was renewed within the expiry): :attr:`holder`."""

    def __init__(self, device_id: int, holder: HeartbeatHolder, now: datetime) -> None:
        super().__init__(f"device {device_id} is served by {holder.describe(now)}")
        self.device_id = device_id
        self.holder = holder
        self.now = now


def claim_heartbeat(
    session: Session,
    *,
    device_id: int,
    owner: str,
    pid: int,
    hostname: str,
    expiry_s: float,
    take_over: bool = False,
    is_gone: Callable[[HeartbeatHolder], bool] | None = None,
    now: datetime | None = None,
) -> HeartbeatHolder | None:
    """Make ``owner`` (process ``pid`` on ``hostname``) the live service of ``device_id``; flushes. Call it in a
    write transaction: the device's row is locked first, so two services starting at once never both claim.

    Another owner's row is taken over when it was last seen more than ``expiry_s`` seconds ago (its service
    crashed), when ``is_gone(holder)`` says its process has ended (the caller can tell for a process of its own
    host), or when ``take_over``. Returns the holder it replaced (None when there was none). Raises HeartbeatHeld
    naming the live holder otherwise, and ValueError naming a bad argument.
    """
    check_positive_int("device_id", device_id)
    check_text("owner", owner, LEASE_OWNER_MAX_LEN)
    check_positive_int("pid", pid)
    expiry = _expiry(expiry_s)
    now = utcnow() if now is None else now
    session.execute(select(Device.id).where(Device.id == device_id).with_for_update())
    row = _row(session, device_id)
    if row is None:
        session.add(ServiceHeartbeat(device_id=device_id, owner=owner, pid=pid, hostname=_host(hostname),
                                     started_at=now, seen_at=now))
        session.flush()
        return None
    holder = HeartbeatHolder.of(row)
    if holder.owner == owner:
        row.seen_at = now
        session.flush()
        return None
    live = now - holder.seen_at <= expiry and not (is_gone is not None and is_gone(holder))
    if live and not take_over:
        raise HeartbeatHeld(device_id, holder, now)
    row.owner, row.pid, row.hostname, row.started_at, row.seen_at = owner, pid, _host(hostname), now, now
    session.flush()
    return holder


def renew_heartbeat(session: Session, *, device_id: int, owner: str, now: datetime | None = None) -> bool:
    """Set the ``seen_at`` of ``owner``'s row of ``device_id`` to now; flushes. False, changing nothing, when the
    row is another owner's or gone (another service took the device over): the caller must stop serving it."""
    check_text("owner", owner, LEASE_OWNER_MAX_LEN)
    result = session.execute(
        update(ServiceHeartbeat)
        .where(ServiceHeartbeat.device_id == device_id, ServiceHeartbeat.owner == owner)
        .values(seen_at=utcnow() if now is None else now)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def release_heartbeat(session: Session, *, device_id: int, owner: str) -> bool:
    """Delete ``owner``'s row of ``device_id`` (a clean stop: the next service starts at once); flushes. False
    when the row is another owner's or gone."""
    check_text("owner", owner, LEASE_OWNER_MAX_LEN)
    result = session.execute(
        delete(ServiceHeartbeat)
        .where(ServiceHeartbeat.device_id == device_id, ServiceHeartbeat.owner == owner)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def heartbeat_holder(session: Session, device_id: int) -> HeartbeatHolder | None:
    """The service the row of ``device_id`` names (None: no row)."""
    row = _row(session, device_id)
    return None if row is None else HeartbeatHolder.of(row)


def _row(session: Session, device_id: int) -> ServiceHeartbeat | None:
    stmt = select(ServiceHeartbeat).where(ServiceHeartbeat.device_id == device_id).with_for_update()
    return session.scalars(stmt, execution_options={"populate_existing": True}).one_or_none()


def _expiry(expiry_s: float) -> timedelta:
    if isinstance(expiry_s, bool) or not isinstance(expiry_s, (int, float)) or not 0 < expiry_s < 10**6:
        raise ValueError(f"expiry_s: expected a number of seconds in (0, 1e6), got {expiry_s!r}")
    return timedelta(seconds=expiry_s)


def _host(hostname: str) -> str:
    """The host name, cut to the column's length ("?" when there is none)."""
    return (hostname or "?")[:NAME_MAX_LEN]
