"""Concurrent writers (threads, then spawned processes) of the same device and measurement keys: one row per
key, no error, every row written whole by one writer."""

from __future__ import annotations

import multiprocessing
import threading

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from latency_db.models import Device, Measurement
from tests.latency_db import db_concurrent_writer

N_KEYS = 25


def _assert_one_row_per_key(session_factory: sessionmaker[Session], writers: int) -> None:
    with session_factory() as session:
        devices = session.scalars(select(Device)).all()
        assert len(devices) == 1
        rows = session.scalars(select(Measurement)).all()
    assert sorted(row.op_spec for row in rows) == sorted(db_concurrent_writer.op_spec(i) for i in range(N_KEYS))
    assert {row.device_id for row in rows} == {devices[0].id}
    for row in rows:
        writer = row.environment["writer"]
        assert 0 <= writer < writers
        assert row.median_ms == row.min_ms == float(writer + 1)  # stats and environment from the same write


def test_threads_upserting_the_same_keys(db_url: str, session_factory: sessionmaker[Session]) -> None:
    n_threads = 4
    barrier = threading.Barrier(n_threads)
    errors: list[BaseException] = []

    def run(writer: int) -> None:
        try:
            db_concurrent_writer.write_all(db_url, N_KEYS, writer, barrier)
        except BaseException as exc:  # reported below: a thread's exception would otherwise vanish
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(writer,)) for writer in range(n_threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    _assert_one_row_per_key(session_factory, n_threads)


def test_processes_upserting_the_same_keys(db_url: str, session_factory: sessionmaker[Session]) -> None:
    ctx = multiprocessing.get_context("spawn")
    n_procs = 2
    barrier = ctx.Barrier(n_procs)
    procs = [
        ctx.Process(target=db_concurrent_writer.write_all, args=(db_url, N_KEYS, writer, barrier))
        for writer in range(n_procs)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
    assert [proc.exitcode for proc in procs] == [0] * n_procs
    _assert_one_row_per_key(session_factory, n_procs)
