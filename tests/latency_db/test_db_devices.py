"""Devices: fingerprint hash, get-or-create by hash, last_seen, argument checks."""

from __future__ import annotations

import hashlib
import time

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


def test_get_or_create_returns_the_same_device_for_the_same_fingerprint(
    session_factory: sessionmaker[Session],
) -> None:
    with session_factory.begin() as session:
        first = get_or_create_device(session, "box", {"cpu": "A", "cores": 4})
        first_id, first_seen = first.id, first.last_seen
    time.sleep(0.01)
    with session_factory.begin() as session:
        again = get_or_create_device(session, "box-renamed", {"cores": 4, "cpu": "A"})
        assert again.id == first_id
        assert again.name == "box-renamed"
        assert again.last_seen > first_seen
        assert again.first_seen == first.first_seen
        other = get_or_create_device(session, "box", {"cpu": "A", "cores": 8})
        assert other.id != first_id
    with session_factory() as session:
        rows = session.scalars(select(Device).order_by(Device.id)).all()
        assert [(d.name, d.fingerprint_hash) for d in rows] == [
            ("box-renamed", fingerprint_hash({"cpu": "A", "cores": 4})),
            ("box", fingerprint_hash({"cpu": "A", "cores": 8})),
        ]


def test_device_created_by_another_session_meanwhile_is_reused(
    session_factory: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The savepoint path: the first read misses, the insert conflicts, the committed row is read and reused."""
    fp = {"cpu": "race"}
    with session_factory.begin() as other:
        created_id = get_or_create_device(other, "first", fp).id

    real_lookup = devices_module._device_by_hash
    calls: list[str] = []

    def lookup_missing_once(session: Session, fp_hash: str) -> Device | None:
        calls.append(fp_hash)
        return None if len(calls) == 1 else real_lookup(session, fp_hash)

    monkeypatch.setattr(devices_module, "_device_by_hash", lookup_missing_once)
    with session_factory() as session:
        device = get_or_create_device(session, "second", fp)
        assert len(calls) == 2  # missed, then re-read after the IntegrityError
        session.commit()
        assert device.id == created_id
        assert device.name == "second"
        assert session.scalar(select(func.count()).select_from(Device)) == 1


@pytest.mark.parametrize("name", ["", None, "x" * 129])
def test_bad_device_name_is_rejected(session: Session, name: object) -> None:
    with pytest.raises(ValueError, match="name"):
        get_or_create_device(session, name, {"a": 1})  # type: ignore[arg-type]
