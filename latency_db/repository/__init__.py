"""Repository functions of the latency store.

Every function takes a Session and only flushes: the caller owns the transaction and commits. The modules:
``devices`` (fingerprints), ``measurements`` (the latency table), ``rounds`` (every round of a measurement),
``jobs`` (measurement jobs and their items), ``canaries`` (canary references), ``health`` (ping, check_writable),
``fleet`` (every device of the database), ``backlog`` (a device's pending work), ``heartbeats`` (the live service
of each device), ``readable`` (rows that cannot be read are left out and counted).
"""

from latency_db.repository._checks import check_context
from latency_db.repository.canaries import canary_references, replace_canary_references, store_canary_references
from latency_db.repository.devices import fingerprint_hash, get_or_create_device
from latency_db.repository.health import MIN_FREE_BYTES, StoreNotWritable, check_writable, ping
from latency_db.repository.jobs import (
    COUNT_KEYS,
    ITEM_FINAL_STATUSES,
    OPEN_JOB_STATUSES,
    JobNotFoundError,
    cancel_job,
    claim_next_job,
    complete_item,
    create_job,
    create_or_attach_job,
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
    FLAG_MAX_LEN,
    IDENTITY_COLUMNS,
    LOOKUP_CHUNK,
    export_rows,
    list_measurements,
    lookup_measurements,
    upsert_measurement,
    validate_stats,
)
from latency_db.repository.rounds import add_round, attach_rounds, job_rounds, measurement_rounds

__all__ = [
    "COUNT_KEYS",
    "EXPORT_COLUMNS",
    "FLAG_MAX_LEN",
    "IDENTITY_COLUMNS",
    "ITEM_FINAL_STATUSES",
    "LOOKUP_CHUNK",
    "OPEN_JOB_STATUSES",
    "MIN_FREE_BYTES",
    "JobNotFoundError",
    "StoreNotWritable",
    "add_round",
    "attach_rounds",
    "canary_references",
    "cancel_job",
    "check_context",
    "check_writable",
    "claim_next_job",
    "complete_item",
    "create_job",
    "create_or_attach_job",
    "export_rows",
    "fail_pending_items",
    "failed_items",
    "fingerprint_hash",
    "finish_job",
    "get_job",
    "get_or_create_device",
    "holds_lease",
    "job_counts",
    "job_rounds",
    "list_jobs",
    "list_measurements",
    "lookup_measurements",
    "measurement_rounds",
    "pending_items",
    "ping",
    "release_lease",
    "renew_lease",
    "replace_canary_references",
    "store_canary_references",
    "upsert_measurement",
    "validate_stats",
]
