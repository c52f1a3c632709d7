"""ORM models of the latency store (SQLAlchemy 2.0 typed declarative mapping).

Tables: ``devices`` (one row per device name and hardware/software fingerprint), ``measurements`` (the latency table F(o): one row
per op spec and measurement context), ``jobs`` (requests to measure ops or a whole architecture), ``job_items``
(one op of a job), ``measurement_rounds`` (the statistics of every round of every op or network a job measured,
protocol 3) and ``canary_references`` (the stored values of the canary ops, per device and context), ``service_heartbeats`` (the live service of each device). The schema is created by the Alembic migrations in ``latency_db/migrations`` only; these classes
must stay in step with them (a test compares the two).

All timestamps are timezone-aware UTC datetimes (SQLite stores them naive; :class:`UTCDateTime` converts).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal, get_args

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from latency_db.context import MeasurementContext

JOB_KINDS = ("ops", "architecture")
#: A job's status (the one definition: the API's enum, the metrics' labels and the table's CHECK come from it).
JobStatus = Literal["queued", "running", "done", "failed", "cancelled"]
JOB_STATUSES: tuple[str, ...] = get_args(JobStatus)
#: Statuses after which a job never changes again.
FINISHED_JOB_STATUSES = ("done", "failed", "cancelled")
ITEM_STATUSES = ("pending", "done", "skipped", "failed", "cancelled")

OP_SPEC_MAX_LEN = 128
NAME_MAX_LEN = 128
HASH_LEN = 64
LEASE_OWNER_MAX_LEN = 128

# Deterministic constraint names, so migrations can refer to them on every database.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """The current time as a timezone-aware UTC datetime."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp column that accepts and returns timezone-aware UTC datetimes.

    A naive datetime is rejected (ValueError): its time zone would be a guess.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"timestamp {value.isoformat()} is naive; give a timezone-aware datetime")
        value = value.astimezone(UTC)
        # SQLite has no time zone storage: store the UTC wall time.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def _in_check(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    """Declarative base of the latency store."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSON, datetime: UTCDateTime}


class Device(Base):
    """A device: its name plus its hardware + software fingerprint (identified by the sha256 of its canonical JSON).

    Two profilers with different names on one host are two devices; a row is never renamed.
    """

    __tablename__ = "devices"
    __table_args__ = (UniqueConstraint("name", "fingerprint_hash", name="uq_devices_identity"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_MAX_LEN))
    fingerprint: Mapped[dict[str, Any]]
    fingerprint_hash: Mapped[str] = mapped_column(String(HASH_LEN))
    first_seen: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(default=utcnow)


class Measurement(Base):
    """The measured latency of one op (spec string) on one device in one measurement context.

    The identity is (device, backend, op spec, batch, dtype, threads, environment hash, protocol version): a change
    in any of them is a different measurement, never an overwrite of the old one.
    """

    __tablename__ = "measurements"
    __table_args__ = (
        UniqueConstraint(
            "device_id", "backend", "op_spec", "batch", "dtype", "threads", "env_hash", "protocol_version",
            name="uq_measurements_identity",
        ),
        Index(
            "ix_measurements_context",
            "device_id", "backend", "batch", "dtype", "threads", "env_hash", "protocol_version",
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id"))
    backend: Mapped[str] = mapped_column(String(64))
    op_spec: Mapped[str] = mapped_column(String(OP_SPEC_MAX_LEN))
    batch: Mapped[int]
    dtype: Mapped[str] = mapped_column(String(16))
    threads: Mapped[int]
    protocol_version: Mapped[str] = mapped_column(String(32))
    env_hash: Mapped[str] = mapped_column(String(HASH_LEN))
    environment: Mapped[dict[str, Any]]
    protocol_params: Mapped[dict[str, Any]]
    median_ms: Mapped[float] = mapped_column(Float)
    mean_ms: Mapped[float] = mapped_column(Float)
    std_ms: Mapped[float] = mapped_column(Float)
    min_ms: Mapped[float] = mapped_column(Float)
    p10_ms: Mapped[float] = mapped_column(Float)
    p90_ms: Mapped[float] = mapped_column(Float)
    iqr_ms: Mapped[float] = mapped_column(Float)
    samples: Mapped[int]
    rounds: Mapped[int | None]
    flagged: Mapped[str | None] = mapped_column(Text)
    peak_rss_bytes: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class ContextVersion(Base):
    """A counter per device and measurement context, raised by every write of one of its measurements (in the same
    transaction): what a reader compares to know whether the rows it read before are still the store's, with one
    read of one row instead of a scan of the context."""

    __tablename__ = "context_versions"
    __table_args__ = (
        UniqueConstraint(
            "device_id", "backend", "batch", "dtype", "threads", "env_hash", "protocol_version",
            name="uq_context_versions_context",
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id"))
    backend: Mapped[str] = mapped_column(String(64))
    batch: Mapped[int]
    dtype: Mapped[str] = mapped_column(String(16))
    threads: Mapped[int]
    env_hash: Mapped[str] = mapped_column(String(HASH_LEN))
    protocol_version: Mapped[str] = mapped_column(String(32))
    version: Mapped[int] = mapped_column(BigInteger)


class Job(Base):
    """A request to measure a list of ops (kind "ops") or one whole network (kind "architecture").

    Status: queued -> running -> done | failed | cancelled. ``payload`` holds the request's extra data (the
    architecture for kind "architecture"); ``result`` the Stats of the network once measured. A running job is
    leased: ``lease_owner`` (one worker of one service process) holds it until ``lease_expires_at``, renewing the
    lease while it works; once the lease has expired (its owner was killed) another worker may take the job over.
    """

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(_in_check("kind", JOB_KINDS), name="kind"),
        CheckConstraint(_in_check("status", JOB_STATUSES), name="status"),
        Index("ix_jobs_status_created", "status", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id"))
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    backend: Mapped[str] = mapped_column(String(64))
    batch: Mapped[int]
    dtype: Mapped[str] = mapped_column(String(16))
    threads: Mapped[int]
    env_hash: Mapped[str] = mapped_column(String(HASH_LEN))
    protocol_version: Mapped[str] = mapped_column(String(32))
    force: Mapped[bool] = mapped_column(Boolean, default=False)
    payload: Mapped[dict[str, Any] | None]
    result: Mapped[dict[str, Any] | None]
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    lease_owner: Mapped[str | None] = mapped_column(String(LEASE_OWNER_MAX_LEN))
    lease_expires_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    items: Mapped[list[JobItem]] = relationship(
        back_populates="job", order_by="JobItem.position", cascade="all, delete-orphan", passive_deletes=True
    )

    @property
    def context(self) -> MeasurementContext:
        """The measurement context the job was submitted in."""
        return MeasurementContext(self.backend, self.batch, self.dtype, self.threads, self.env_hash,
                                  self.protocol_version)


class JobItem(Base):
    """One op of a job, at ``position`` in the job's op list; points at its measurement once done or skipped."""

    __tablename__ = "job_items"
    __table_args__ = (
        UniqueConstraint("job_id", "position", name="uq_job_items_position"),
        CheckConstraint(_in_check("status", ITEM_STATUSES), name="status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    position: Mapped[int]
    op_spec: Mapped[str] = mapped_column(String(OP_SPEC_MAX_LEN))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    measurement_id: Mapped[int | None] = mapped_column(ForeignKey("measurements.id", ondelete="SET NULL"))
    error: Mapped[str | None] = mapped_column(Text)
    finished_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    job: Mapped[Job] = relationship(back_populates="items")
    measurement: Mapped[Measurement | None] = relationship()


class MeasurementRound(Base):
    """One round of one op (or of the network of an architecture job) measured by a job.

    Identified by the job, the item's ``position`` (0 for the network of an architecture job), the environment and
    protocol version it was measured in, and the round index. The statistics are the RAW ones of what was timed
    (for a calibrated op, the op inside its boundary sandwich); ``correction_ms`` is what calibration subtracts,
    ``runs_per_timing`` how many runs one timing covered and ``timer_resolution_ms`` the timer's resolution, so the
    measurement can be aggregated again later. ``measurement_id`` points at the stored measurement that aggregates
    the round (set when the item is done; cleared when a later job measures that op again).
    """

    __tablename__ = "measurement_rounds"
    __table_args__ = (
        UniqueConstraint("job_id", "position", "env_hash", "protocol_version", "round_index",
                         name="uq_measurement_rounds_round"),
        CheckConstraint("round_index >= 0", name="round_index"),
        CheckConstraint("runs_per_timing >= 1", name="runs_per_timing"),
        Index("ix_measurement_rounds_measurement_id", "measurement_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    position: Mapped[int]
    env_hash: Mapped[str] = mapped_column(String(HASH_LEN))
    protocol_version: Mapped[str] = mapped_column(String(32))
    round_index: Mapped[int]
    measurement_id: Mapped[int | None] = mapped_column(ForeignKey("measurements.id", ondelete="SET NULL"))
    median_ms: Mapped[float] = mapped_column(Float)
    mean_ms: Mapped[float] = mapped_column(Float)
    std_ms: Mapped[float] = mapped_column(Float)
    min_ms: Mapped[float] = mapped_column(Float)
    p10_ms: Mapped[float] = mapped_column(Float)
    p90_ms: Mapped[float] = mapped_column(Float)
    iqr_ms: Mapped[float] = mapped_column(Float)
    samples: Mapped[int]
    correction_ms: Mapped[float] = mapped_column(Float)
    runs_per_timing: Mapped[int]
    timer_resolution_ms: Mapped[float] = mapped_column(Float)
    peak_rss_bytes: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class CanaryReference(Base):
    """The stored value of one canary op on one device in one measurement context: what later canary checks of
    that context are compared with (the first check stores it): the aggregate of that check's rounds. A duet's
    baseline is stored the same way (the reference op's row in the duet's context, protocol version ``...+duet``):
    every later duet of that context scales to it."""

    __tablename__ = "canary_references"
    __table_args__ = (
        UniqueConstraint(
            "device_id", "backend", "op_spec", "batch", "dtype", "threads", "env_hash", "protocol_version",
            name="uq_canary_references_identity",
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id"))
    backend: Mapped[str] = mapped_column(String(64))
    op_spec: Mapped[str] = mapped_column(String(OP_SPEC_MAX_LEN))
    batch: Mapped[int]
    dtype: Mapped[str] = mapped_column(String(16))
    threads: Mapped[int]
    env_hash: Mapped[str] = mapped_column(String(HASH_LEN))
    protocol_version: Mapped[str] = mapped_column(String(32))
    median_ms: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ServiceHeartbeat(Base):
    """The live ``serve`` process of one device identity: its lease owner id, pid and host name, when it started and
    when it was last seen (renewed while it serves). A second service for the same device on the same database
    finds the row fresh and refuses to start; a row not seen for longer than its expiry is a crashed service's."""

    __tablename__ = "service_heartbeats"
    __table_args__ = (UniqueConstraint("device_id", name="uq_service_heartbeats_device_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id"))
    owner: Mapped[str] = mapped_column(String(LEASE_OWNER_MAX_LEN))
    pid: Mapped[int]
    hostname: Mapped[str] = mapped_column(String(NAME_MAX_LEN))
    started_at: Mapped[datetime]
    seen_at: Mapped[datetime]
