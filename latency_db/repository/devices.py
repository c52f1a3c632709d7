"""Devices: one row per device name and fingerprint (hardware + software), found by the name and the fingerprint's
hash. Two profilers with different names on one host are two devices; a row is never renamed."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from latency_db.hashing import canonical_hash
from latency_db.models import NAME_MAX_LEN, Device, utcnow
from latency_db.repository._checks import check_dict, check_text


def fingerprint_hash(fp: dict[str, Any]) -> str:
    """sha256 hex digest of the fingerprint's canonical JSON (sorted keys, compact separators).

    Raises ValueError when ``fp`` is not a dict or holds something JSON cannot represent.
    """
    check_dict("fingerprint", fp)
    try:
        return canonical_hash(fp)
    except ValueError as exc:
        raise ValueError(f"fingerprint: {exc}") from None


def get_or_create_device(session: Session, name: str, fingerprint: dict[str, Any]) -> Device:
    """Return the device with this name and fingerprint, creating it on first sight; flushes, does not commit.

    ``last_seen`` is set to now. The identity is (name, fingerprint hash): a device given another name is another
    device (its rows stay with the old name's device), and a changed fingerprint (new runtime, new hardware) under
    the same name is another device too. Safe when another transaction creates the same device at the same time:
    the insert runs in a savepoint, and on a unique-constraint conflict the row the other transaction committed is
    read instead.
    """
    check_text("name", name, NAME_MAX_LEN)
    fp_hash = fingerprint_hash(fingerprint)
    device = _device_by_identity(session, name, fp_hash)
    if device is None:
        try:
            with session.begin_nested():
                device = Device(name=name, fingerprint=dict(fingerprint), fingerprint_hash=fp_hash)
                session.add(device)
        except IntegrityError:
            device = _device_by_identity(session, name, fp_hash)
            if device is None:  # the conflict was not on the identity: nothing to recover
                raise
    device.last_seen = utcnow()
    session.flush()
    return device


def _device_by_identity(session: Session, name: str, fp_hash: str) -> Device | None:
    stmt = select(Device).where(Device.name == name, Device.fingerprint_hash == fp_hash)
    return session.scalars(stmt, execution_options={"populate_existing": True}).one_or_none()
