"""All settings of the profiler service, in one pydantic-settings class (environment prefix ``PROFILER_``)."""

from __future__ import annotations

import socket
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from latency_db.connection import DEFAULT_DB_URL
from profiler_service.engine.protocol_presets import protocol_version_for
from profiler_service.isolation.footprint import RUNTIME_BYTES

#: The smallest memory limit: the measuring process's runtimes alone (nothing smaller can measure anything).
RUNTIME_MIB = RUNTIME_BYTES >> 20


class ProfilerSettings(BaseSettings):
    """Service configuration. Every field can be set as ``PROFILER_<NAME>`` (e.g. ``PROFILER_TOKEN``).

    The CLI's options override the environment; the environment overrides these defaults.
    """

    model_config = SettingsConfigDict(env_prefix="PROFILER_", extra="ignore")

    # --- serving -----------------------------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    token: SecretStr | None = Field(None, description="bearer token required by every mutating endpoint")
    allow_insecure_bind: bool = Field(False, description="allow a non-loopback bind without a token")
    device_name: str = Field(default_factory=socket.gethostname)
    allowed_hosts: str = Field("", description="comma-separated Host names (any port) this service answers besides "
                               "the loopback names (127.0.0.1, localhost, ::1) and a specific --host; '*.example.org' "
                               "matches its subdomains, '*' any host. A request for another Host is refused (400): "
                               "a DNS-rebinding page reaches a loopback service only under its own host name")
    allowed_origins: str = Field("", description="comma-separated origins (scheme://host[:port]) whose pages may "
                                 "send POST requests besides the service's own origin; a POST with another Origin "
                                 "header is refused (403)")
    keep_alive_timeout_s: float = Field(5.0, gt=0, le=3600, description="an idle keep-alive connection is closed "
                                        "after this many seconds")
    request_timeout_s: float = Field(30.0, gt=0, le=3600, description="a request's line, headers and body must "
                                     "arrive within this many seconds of the connection's opening (or of the "
                                     "previous answer on a keep-alive connection), else the connection is closed: "
                                     "a half-open or byte-by-byte (slowloris) connection holds nothing for long")
    heartbeat_s: float = Field(5.0, gt=0, le=600, description="seconds between two renewals of this service's "
                               "heartbeat row (one live service per device on a database); a row not renewed for "
                               "3 periods is a crashed service's")
    take_over: bool = Field(False, description="start even when another live service serves this device (same "
                            "name and fingerprint) on this database: that one stops its job worker")

    # --- storage -----------------------------------------------------------------------------------------------
    db_url: str = DEFAULT_DB_URL

    # --- measurement -------------------------------------------------------------------------------------------
    backends: str | None = Field(None, description="comma-separated backend names to serve; default: all available")
    threads: int = Field(1, ge=1, le=256, description="default thread count of a measurement")
    protocol: str = Field("auto", description="protocol preset: 'auto' (the cache regime follows each request's "
                          "working_set_bytes: warm when it fits in the per-core cache, else cold), 'cold' (alias "
                          "'default': caches flushed), 'warm' (caches warm) or 'fast' (short runs, for tests)")
    duet: bool = Field(True, description="measure every op and network in a duet with a fixed reference op "
                       "(protocol point 11): a slowdown of the machine while it measures cancels out; stored as its "
                       "own protocol version (+duet); false: plain timings")
    cache_kib: int | None = Field(None, ge=1, le=1 << 30, description="per-core cache size the 'auto' protocol "
                                  "compares working sets with, KiB; default: read from sysfs (unknown: all cold)")
    worker_poll_s: float = Field(1.0, gt=0, le=60)
    canary_interval_s: float = Field(600.0, ge=0, le=86_400, description="seconds between two canary checks "
                                     "while serving (besides the one at start and those before jobs); 0: no canaries")
    canary_before_job_s: float = Field(60.0, ge=0, le=86_400, description="before a job, its backend's canaries "
                                       "are checked unless they were within this many seconds")
    isolation: Literal["process", "none"] = Field("process", description="where job items are built and timed: "
                                                  "'process', in a measuring process per backend under the memory "
                                                  "and time limits (an item past a limit fails; the service goes "
                                                  "on); 'none', inside the service process (no real memory limit: "
                                                  "for debugging and in-process tests)")
    item_time_limit_s: float = Field(600.0, gt=0, le=86_400, description="seconds one round of one job item "
                                     "(an op, a network, a canary, a duet's start) may take in its measuring "
                                     "process, building included, before the process is ended and the item fails")
    canary_drift_rel: float = Field(0.10, gt=0, le=10, description="relative change of the canaries (their median "
                                    "ratio to the stored values) beyond which the device reports drift")

    # --- limits on requests --------------------------------------------------------------------------------------
    max_request_bytes: int = Field(2_000_000, ge=1024)
    max_ops_per_request: int = Field(2000, ge=1)
    max_channels: int = Field(2048, ge=1)
    max_resolution: int = Field(512, ge=1)
    max_batch: int = Field(256, ge=1)
    max_op_mflops: float = Field(20_000.0, gt=0, description="per-op multiply-adds (batch included), in millions")
    max_network_mflops: float = Field(200_000.0, gt=0)
    max_op_memory_mib: float = Field(2048.0, ge=RUNTIME_MIB, description="memory limit of measuring one op, MiB: the "
                                     "measuring process's real peak resident memory (its runtimes included) while "
                                     "it builds and times the op; a request whose op the estimate says cannot fit "
                                     "is refused (422 over_limit) before anything is allocated")
    max_network_memory_mib: float = Field(4096.0, ge=RUNTIME_MIB, description="memory limit of measuring one whole "
                                          "network, MiB (as max_op_memory_mib)")
    max_wait_s: float = Field(600.0, ge=0, allow_inf_nan=False, description="longest wait_s of a measure request")
    shutdown_grace_s: float = Field(5.0, ge=0, le=300, description="at SIGTERM, how long requests in flight may "
                                    "take to finish before they are cancelled (long-polls answer at once)")
    max_list_jobs: int = Field(500, ge=1, le=1000)
    max_pending_items: int = Field(20_000, ge=1, description="job items this device may have pending (in queued "
                                   "or running jobs; an architecture job counts as one): a measure request that "
                                   "would go beyond is a 429 with Retry-After")
    max_architecture_blocks: int = Field(1000, ge=1, description="blocks of an architecture a request may carry, "
                                         "checked before the architecture is read")
    max_architecture_bytes: int = Field(524_288, ge=1024, description="bytes of a POST /v1/measure/architecture "
                                        "body, checked before the architecture is read")

    @field_validator("token", mode="before")
    @classmethod
    def _empty_token_is_none(cls, value: object) -> object:
        return None if value in ("", None) else value

    @field_validator("protocol")
    @classmethod
    def _known_protocol(cls, value: str) -> str:
        protocol_version_for(value)  # ValueError naming the protocol presets for an unknown one
        return value

    @field_validator("allowed_origins")
    @classmethod
    def _origins_are_origins(cls, value: str) -> str:
        for origin in _comma_list(value, lower=False):
            try:
                parts = urlsplit(origin)
                parts.port  # noqa: B018 (ValueError for a port that is not one)
            except ValueError:
                parts = None
            if (parts is None or parts.scheme.lower() not in ("http", "https") or not parts.hostname
                    or parts.path not in ("", "/") or parts.query or parts.fragment):
                raise ValueError(f"{origin!r} is not an origin: write scheme://host[:port], e.g. "
                                 "https://dashboard.example.org")
        return value

    def backend_names(self) -> list[str] | None:
        """The requested backend names, or None for every available backend."""
        if not self.backends:
            return None
        return [name.strip() for name in self.backends.split(",") if name.strip()]

    def allowed_host_names(self) -> list[str]:
        """The Host names of :attr:`allowed_hosts`, lower case (``*`` when any host is allowed)."""
        return _comma_list(self.allowed_hosts, lower=True)

    def allowed_origin_list(self) -> list[str]:
        """The origins of :attr:`allowed_origins`, as written (trailing slashes dropped)."""
        return [origin.rstrip("/") for origin in _comma_list(self.allowed_origins, lower=False)]

    def token_value(self) -> str | None:
        return self.token.get_secret_value() if self.token else None


def _comma_list(value: str, *, lower: bool) -> list[str]:
    items = [item.strip() for item in value.split(",") if item.strip()]
    return [item.lower() for item in items] if lower else items
