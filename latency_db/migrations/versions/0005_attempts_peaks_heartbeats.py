"""Measuring in a child process: attempts per item, real peak memory per row, one heartbeat per served device.

- job_items.attempts and jobs.attempts (the network of an architecture job): how many measurements of the item
  were started and never came back (the measuring process died, or the service itself did, while it measured);
  the job worker fails an item whose count reaches its limit instead of claiming it again.
- measurements.peak_rss_bytes and measurement_rounds.peak_rss_bytes: the measuring process's real peak resident
  memory (VmHWM) while it measured the row (NULL for rows measured before, or in the service's own process).
- service_heartbeats: one row per device identity served by a live ``serve`` process (its owner id, pid, host
  name and when it was last seen), so a second service for the same device refuses to start.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("job_items") as batch:
        batch.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
    with op.batch_alter_table("measurements") as batch:
        batch.add_column(sa.Column("peak_rss_bytes", sa.BigInteger(), nullable=True))
    with op.batch_alter_table("measurement_rounds") as batch:
        batch.add_column(sa.Column("peak_rss_bytes", sa.BigInteger(), nullable=True))
    op.create_table(
        "service_heartbeats",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("hostname", sa.String(128), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_service_heartbeats"),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], name="fk_service_heartbeats_device_id_devices"),
        sa.UniqueConstraint("device_id", name="uq_service_heartbeats_device_id"),
    )


def downgrade() -> None:
    """Back to 0004: attempts, peaks and heartbeats are dropped."""
    op.drop_table("service_heartbeats")
    for table in ("measurement_rounds", "measurements"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("peak_rss_bytes")
    for table in ("jobs", "job_items"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("attempts")
