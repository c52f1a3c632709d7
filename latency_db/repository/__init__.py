"""Repository functions of the latency store.

Every function takes a Session and only flushes: the caller owns the transaction and commits. The modules:
``devices`` (fingerprints), ``measurements`` (the latency table), ``jobs`` (measurement jobs and their items),
``health`` (ping, check_writable).
"""

from latency_db.repository._checks import check_context
from latency_db.repository.devices import fingerprint_hash, get_or_create_device
from latency_db.repository.health import MIN_FREE_BYTES, StoreNotWritable, check_writable, ping
from latency_db.repository.jobs import (
    COUNT_KEYS,
    ITEM_FINAL_STATUSES,
    JobNotFoundError,
    cancel_job,
    claim_next_job,
    complete_item,
    create_job,
    fail_pending_items,
    failed_items,
    finish_job,
    get_job,
    holds_lease,
    job_counts,
    list_jobs,
    pending_items,
    release_lease,
    renew_lease,
)
from latency_db.repository.measurements import (
    EXPORT_COLUMNS,
    IDENTITY_COLUMNS,
    LOOKUP_CHUNK,
    export_rows,
    list_measurements,
    lookup_measurements,
    upsert_measurement,
    validate_stats,
)

__all__ = [
    "COUNT_KEYS",
    "EXPORT_COLUMNS",
    "IDENTITY_COLUMNS",
    "ITEM_FINAL_STATUSES",
    "LOOKUP_CHUNK",
    "MIN_FREE_BYTES",
    "JobNotFoundError",
    "StoreNotWritable",
    "cancel_job",
    "check_context",
    "check_writable",
    "claim_next_job",
    "complete_item",
    "create_job",
    "export_rows",
    "fail_pending_items",
    "failed_items",
    "fingerprint_hash",
    "finish_job",
    "get_job",
    "get_or_create_device",
    "holds_lease",
    "job_counts",
    "list_jobs",
    "list_measurements",
    "lookup_measurements",
    "pending_items",
    "ping",
    "release_lease",
    "renew_lease",
    "upsert_measurement",
    "validate_stats",
]
