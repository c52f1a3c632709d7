"""Protocol 3: every round of a measurement is stored; measurements say how many rounds they aggregate and why they
are flagged; canary references.

- measurement_rounds: one row per round of an op (or of an architecture job's network) measured by a job, with its
  raw statistics, calibration correction, runs per timing and timer resolution; linked to the job (deleted with
  it) and, once the op is done, to the measurement that aggregates it.
- measurements: ``rounds`` (how many rounds the stored statistics aggregate; NULL for rows of protocol versions
  before 3) and ``flagged`` (why the value is not a plain measurement, e.g. below the timer's resolution; NULL
  when it is).
- canary_references: the stored value of each canary op per device and measurement context.

Existing rows are kept as they are (their protocol version stays theirs, so they are never served as protocol 3).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("measurements", sa.Column("rounds", sa.Integer(), nullable=True))
    op.add_column("measurements", sa.Column("flagged", sa.Text(), nullable=True))
    op.create_table(
        "measurement_rounds",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("env_hash", sa.String(64), nullable=False),
        sa.Column("protocol_version", sa.String(32), nullable=False),
        sa.Column("round_index", sa.Integer(), nullable=False),
        sa.Column("measurement_id", sa.Integer(), nullable=True),
        sa.Column("median_ms", sa.Float(), nullable=False),
        sa.Column("mean_ms", sa.Float(), nullable=False),
        sa.Column("std_ms", sa.Float(), nullable=False),
        sa.Column("min_ms", sa.Float(), nullable=False),
        sa.Column("p10_ms", sa.Float(), nullable=False),
        sa.Column("p90_ms", sa.Float(), nullable=False),
        sa.Column("iqr_ms", sa.Float(), nullable=False),
        sa.Column("samples", sa.Integer(), nullable=False),
        sa.Column("correction_ms", sa.Float(), nullable=False),
        sa.Column("runs_per_timing", sa.Integer(), nullable=False),
        sa.Column("timer_resolution_ms", sa.Float(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_measurement_rounds"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_measurement_rounds_job_id_jobs",
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["measurement_id"], ["measurements.id"],
                                name="fk_measurement_rounds_measurement_id_measurements", ondelete="SET NULL"),
        sa.UniqueConstraint("job_id", "position", "env_hash", "protocol_version", "round_index",
                            name="uq_measurement_rounds_round"),
        sa.CheckConstraint("round_index >= 0", name="ck_measurement_rounds_round_index"),
        sa.CheckConstraint("runs_per_timing >= 1", name="ck_measurement_rounds_runs_per_timing"),
    )
    op.create_index("ix_measurement_rounds_measurement_id", "measurement_rounds", ["measurement_id"])
    op.create_table(
        "canary_references",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("backend", sa.String(64), nullable=False),
        sa.Column("op_spec", sa.String(128), nullable=False),
        sa.Column("batch", sa.Integer(), nullable=False),
        sa.Column("dtype", sa.String(16), nullable=False),
        sa.Column("threads", sa.Integer(), nullable=False),
        sa.Column("env_hash", sa.String(64), nullable=False),
        sa.Column("protocol_version", sa.String(32), nullable=False),
        sa.Column("median_ms", sa.Float(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_canary_references"),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], name="fk_canary_references_device_id_devices"),
        sa.UniqueConstraint(
            "device_id", "backend", "op_spec", "batch", "dtype", "threads", "env_hash", "protocol_version",
            name="uq_canary_references_identity",
        ),
    )


def downgrade() -> None:
    """Back to 0002: the rounds and canary references are dropped, the measurements keep their statistics."""
    op.drop_table("canary_references")
    op.drop_index("ix_measurement_rounds_measurement_id", table_name="measurement_rounds")
    op.drop_table("measurement_rounds")
    with op.batch_alter_table("measurements") as batch:
        batch.drop_column("flagged")
        batch.drop_column("rounds")
