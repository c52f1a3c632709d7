"""A version counter per measurement context: cached lookups check one row instead of scanning the context.

- context_versions: one row per (device, backend, batch, dtype, threads, env hash, protocol version) with a
  ``version`` that every write of a measurement of that context raises in the same transaction
  (:func:`latency_db.repository.measurements.upsert_measurement`).

Existing contexts get a row with version 1 (a reader's cache starts empty when its process starts, so any start
value serves).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_CONTEXT = ("device_id", "backend", "batch", "dtype", "threads", "env_hash", "protocol_version")


def upgrade() -> None:
    op.create_table(
        "context_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("backend", sa.String(64), nullable=False),
        sa.Column("batch", sa.Integer(), nullable=False),
        sa.Column("dtype", sa.String(16), nullable=False),
        sa.Column("threads", sa.Integer(), nullable=False),
        sa.Column("env_hash", sa.String(64), nullable=False),
        sa.Column("protocol_version", sa.String(32), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_context_versions"),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], name="fk_context_versions_device_id_devices"),
        sa.UniqueConstraint(*_CONTEXT, name="uq_context_versions_context"),
    )
    columns = ", ".join(_CONTEXT)
    op.execute(f"INSERT INTO context_versions ({columns}, version) "
               f"SELECT DISTINCT {columns}, 1 FROM measurements")


def downgrade() -> None:
    """Back to 0003: the counters are dropped (readers of 0003 scan the context instead)."""
    op.drop_table("context_versions")
