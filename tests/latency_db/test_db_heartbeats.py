"""Heartbeats: one live service per device; a fresh row refuses a second owner, an expired or gone one is taken
over, a taken-over owner's renewal fails, a clean stop deletes the row (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from latency_db.models import ServiceHeartbeat
from latency_db.repository.heartbeats import (
    HeartbeatHeld,
    claim_heartbeat,
    heartbeat_holder,
    release_heartbeat,
    renew_heartbeat,
)
from latency_db.transactions import write_session

T0 = datetime(2025, 1, 2, 10, 0, 0, tzinfo=UTC)
EXPIRY_S = 15.0


def claim(sessions: sessionmaker[Session], device_id: int, owner: str, pid: int, *, at: datetime,
          host: str = "host-a", **options: object):
    with write_session(sessions) as session:
        return claim_heartbeat(session, device_id=device_id, owner=owner, pid=pid, hostname=host,
                               expiry_s=EXPIRY_S, now=at, **options)


def renew(sessions: sessionmaker[Session], device_id: int, owner: str, at: datetime) -> bool:
    with write_session(sessions) as session:
        return renew_heartbeat(session, device_id=device_id, owner=owner, now=at)


def test_a_live_holder_refuses_a_second_service(session_factory: sessionmaker[Session], device_id: int) -> None:
    assert claim(session_factory, device_id, "a", 101, at=T0) is None
    assert renew(session_factory, device_id, "a", T0 + timedelta(seconds=10))
    with pytest.raises(HeartbeatHeld) as held:
        claim(session_factory, device_id, "b", 202, at=T0 + timedelta(seconds=12), host="host-b")
    assert str(held.value) == (f"device {device_id} is served by pid 101 on host-a (last seen 2 s ago, started "
                               "2025-01-02 10:00:00 UTC)")
    with session_factory() as session:
        assert heartbeat_holder(session, device_id).owner == "a"


def test_an_expired_row_is_taken_over_and_its_owner_cannot_renew(session_factory: sessionmaker[Session],
                                                                  device_id: int) -> None:
    claim(session_factory, device_id, "a", 101, at=T0)
    replaced = claim(session_factory, device_id, "b", 202, at=T0 + timedelta(seconds=EXPIRY_S + 1))
    assert replaced is not None and (replaced.owner, replaced.pid) == ("a", 101)
    assert not renew(session_factory, device_id, "a", T0 + timedelta(seconds=20))  # a lost the device
    assert renew(session_factory, device_id, "b", T0 + timedelta(seconds=20))


def test_take_over_and_a_gone_process_replace_a_live_holder(session_factory: sessionmaker[Session],
                                                            device_id: int) -> None:
    claim(session_factory, device_id, "a", 101, at=T0)
    assert claim(session_factory, device_id, "b", 202, at=T0, take_over=True).owner == "a"
    seen = []
    replaced = claim(session_factory, device_id, "c", 303, at=T0, is_gone=lambda holder: seen.append(holder) or True)
    assert replaced.owner == "b" and [h.pid for h in seen] == [202]
    with pytest.raises(HeartbeatHeld):
        claim(session_factory, device_id, "d", 404, at=T0, is_gone=lambda holder: False)


def test_a_clean_stop_deletes_the_row_and_the_next_start_claims_it(session_factory: sessionmaker[Session],
                                                                   device_id: int) -> None:
    claim(session_factory, device_id, "a", 101, at=T0)
    with write_session(session_factory) as session:
        assert not release_heartbeat(session, device_id=device_id, owner="b")  # not b's to delete
        assert release_heartbeat(session, device_id=device_id, owner="a")
    assert claim(session_factory, device_id, "b", 202, at=T0 + timedelta(seconds=1)) is None
    assert claim(session_factory, device_id, "b", 202, at=T0 + timedelta(seconds=2)) is None  # its own row
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(ServiceHeartbeat)) == 1


def test_bad_arguments_are_named(session_factory: sessionmaker[Session], device_id: int) -> None:
    with pytest.raises(ValueError, match="expiry_s"):
        with write_session(session_factory) as session:
            claim_heartbeat(session, device_id=device_id, owner="a", pid=1, hostname="h", expiry_s=0)
    with pytest.raises(ValueError, match="pid"):
        with write_session(session_factory) as session:
            claim_heartbeat(session, device_id=device_id, owner="a", pid=0, hostname="h", expiry_s=1)
