"""Device identity is (name, fingerprint hash); claimed jobs carry a lease (owner, expiry).

- devices: the unique constraint on ``fingerprint_hash`` alone becomes one on (``name``, ``fingerprint_hash``), so two
  profilers with different device names on one host are two devices (rows are never renamed).
- jobs: ``lease_owner`` (the worker that holds the job) and ``lease_expires_at`` (when another worker may take it
  over unless the owner renews it).

SQLite cannot drop a constraint in place: the devices table is rebuilt (batch mode), with foreign keys off for the
migration's transaction (see :func:`latency_db.migrate.locked_migration_transaction`).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.drop_constraint("uq_devices_fingerprint_hash", type_="unique")
        batch.create_unique_constraint("uq_devices_identity", ["name", "fingerprint_hash"])
    op.add_column("jobs", sa.Column("lease_owner", sa.String(128), nullable=True))
    op.add_column("jobs", sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    """Back to 0001; fails (unique violation) when two devices share a fingerprint, as 0001 cannot hold them."""
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("lease_expires_at")
        batch.drop_column("lease_owner")
    with op.batch_alter_table("devices") as batch:
        batch.drop_constraint("uq_devices_identity", type_="unique")
        batch.create_unique_constraint("uq_devices_fingerprint_hash", ["fingerprint_hash"])
