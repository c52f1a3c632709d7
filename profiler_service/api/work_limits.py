"""Bounds on the work one request brings: an architecture's size before it is read, and the device's queue.

- An architecture request's body over ``max_architecture_bytes`` is a 413 ``too_large``, one with more than
  ``max_architecture_blocks`` blocks a 422 ``over_limit``: both checked on the parsed JSON before the architecture
  is built and validated op by op (which costs time in proportion to its blocks).
- A measure request that would take the device's pending items (``latency_db.repository.backlog.pending_work``)
  over ``max_pending_items`` is a 429 ``queue_full`` with Retry-After, naming the cap and the setting; a request
  that alone holds more items than the cap could never be queued, and is a 422 ``over_limit``.
"""

from __future__ import annotations

from typing import Any

from profiler_service.api.errors import ApiError
from profiler_service.settings import ProfilerSettings

#: Seconds a client should wait before it submits again to a device whose queue is full.
QUEUE_FULL_RETRY_AFTER_S = 60


def check_architecture_size(settings: ProfilerSettings, architecture: dict[str, Any], body_bytes: int) -> None:
    """The request body's bytes and the architecture's block count within the limits (see the module docstring)."""
    if body_bytes > settings.max_architecture_bytes:
        raise ApiError(413, "too_large", f"architecture: the request body is {body_bytes} bytes, above this "
                       f"service's limit of {settings.max_architecture_bytes} bytes for an architecture "
                       "(max_architecture_bytes, PROFILER_MAX_ARCHITECTURE_BYTES)")
    blocks = architecture.get("blocks")
    if isinstance(blocks, list) and len(blocks) > settings.max_architecture_blocks:
        raise ApiError(422, "over_limit", f"architecture: {len(blocks)} blocks is above this service's limit of "
                       f"{settings.max_architecture_blocks} (max_architecture_blocks, "
                       "PROFILER_MAX_ARCHITECTURE_BLOCKS)")


def check_queue(settings: ProfilerSettings, pending_before: int, added: int) -> None:
    """``added`` new items on top of ``pending_before`` within ``max_pending_items`` (see the module docstring)."""
    cap = settings.max_pending_items
    if added > cap:
        raise ApiError(422, "over_limit", f"this request holds {added} items to measure, above this service's "
                       f"limit of {cap} pending items (max_pending_items, PROFILER_MAX_PENDING_ITEMS): send fewer "
                       "ops per request")
    if pending_before + added > cap:
        raise ApiError(429, "queue_full", f"this device has {pending_before} job items pending (in queued or "
                       f"running jobs) and this request would add {added}, above its limit of {cap} pending items "
                       f"(max_pending_items, PROFILER_MAX_PENDING_ITEMS): retry once some are measured (Retry-After "
                       "says when), or raise the limit", {"Retry-After": str(QUEUE_FULL_RETRY_AFTER_S)})
