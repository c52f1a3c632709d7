"""Devices: fingerprint hash, get-or-create by (name, fingerprint hash), last_seen, argument checks."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

import latency_db.repository.devices as devices_module
from latency_db.models import Device
from latency_db.repository import fingerprint_hash, get_or_create_device


def test_fingerprint_hash_is_sha256_of_canonical_json() -> None:
    fp = {"b": [1, 2], "a": {"y": None, "x": "é"}}
    canonical = '{"a":{"x":"\\u00e9","y":null},"b":[1,2]}'
    assert fingerprint_hash(fp) == hashlib.sha256(canonical.encode()).hexdigest()
    assert fingerprint_hash({"a": {"x": "é", "y": None}, "b": [1, 2]}) == fingerprint_hash(fp)
    assert fingerprint_hash({"b": [2, 1], "a": {"y": None, "x": "é"}}) != fingerprint_hash(fp)


@pytest.mark.parametrize(
    ("fp", "message"),
    [({"x": float("nan")}, "fingerprint"), ({"x": object()}, "fingerprint"), (["a"], "fingerprint")],
)
def test_fingerprint_hash_rejects_non_json(fp: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fingerprint_hash(fp)  # type: ignore[arg-type]


def test_get_or_create_returns_the_same_device_for_the_same_name_and_fingerprint(
    session_factory: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    monkeypatch.setattr(devices_module, "utcnow", lambda: seen)  # last_seen on a fixed clock, no pause
    with session_factory.begin() as session:
        first = get_or_create_device(session, "box", {"cpu": "A", "cores": 4})
        first_id, first_seen = first.id, first.first_seen
        assert first.last_seen == seen
    seen += timedelta(minutes=5)
    with session_factory.begin() as session:
        again = get_or_create_device(session, "box", {"cores": 4, "cpu": "A"})
        assert again.id == first_id
        assert again.last_seen == seen
        assert again.first_seen == first_seen
        other = get_or_create_device(session, "box", {"cpu": "A", "cores": 8})
        assert other.id != first_id


def test_two_names_on_one_host_are_two_devices_and_no_row_is_renamed(
    session_factory: sessionmaker[Session],
) -> None:
    host = {"cpu": "A", "cores": 4}
    with session_factory.begin() as session:
        board_a = get_or_create_device(session, "board-a", host).id
        board_b = get_or_create_device(session, "board-b", host).id
        assert board_a != board_b
        assert get_or_create_device(session, "board-a", host).id == board_a  # the first again: not renamed
    with session_factory() as session:
        rows = session.scalars(select(Device).order_by(Device.id)).all()
        assert [(d.id, d.name, d.fingerprint_hash) for d in rows] == [
            (board_a, "board-a", fingerprint_hash(host)),
            (board_b, "board-b", fingerprint_hash(host)),
        ]


def test_device_created_by_another_session_meanwhile_is_reused(
    session_factory: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The savepoint path: the first read misses, the insert conflicts, the committed row is read and reused."""
    fp = {"cpu": "race"}
    with session_factory.begin() as other:
        created_id = get_or_create_device(other, "first", fp).id

    real_lookup = devices_module._device_by_identity
    calls: list[str] = []

    def lookup_missing_once(session: Session, name: str, fp_hash: str) -> Device | None:
        calls.append(fp_hash)
        return None if len(calls) == 1 else real_lookup(session, name, fp_hash)

    monkeypatch.setattr(devices_module, "_device_by_identity", lookup_missing_once)
    with session_factory() as session:
        device = get_or_create_device(session, "first", fp)
        assert len(calls) == 2  # missed, then re-read after the IntegrityError
        session.commit()
        assert device.id == created_id
        assert device.name == "first"
        assert session.scalar(select(func.count()).select_from(Device)) == 1


@pytest.mark.parametrize("name", ["", None, "x" * 129])
def test_bad_device_name_is_rejected(session: Session, name: object) -> None:
    with pytest.raises(ValueError, match="name"):
        get_or_create_device(session, name, {"a": 1})  # type: ignore[arg-type]
