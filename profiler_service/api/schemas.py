"""Request and response bodies of the REST API, every one of them (with the examples shown in the OpenAPI docs)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, create_model

from latency_db.stats import stats_field_types
from nas_ops.arch import FORMAT_MARKER, FORMAT_VERSION
from nas_ops.spec import MAX_SPEC_LENGTH, spec_pattern

EXAMPLE_OPS = ["mbconv_r56x56_c24-24_k3_e6_s1_relu6_skip", "mbconv_r56x56_c24-40_k5_e3_s2_relu6"]
DType = Literal["float32", "float16"]

def integral_number(value: object) -> object:
    """A JSON number with no fractional part (``30.0``) is an integer, as JSON Schema says; nothing else is
    converted (``true`` and ``"1"`` stay what they are, and strict validation rejects them)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


#: An integer field of a strict body: 30 and 30.0, never true or "30".
JsonInt = Annotated[int, BeforeValidator(integral_number)]

#: The op-spec grammar (nas_ops.spec.spec_pattern); a service narrows its bounds to its limits in its OpenAPI schema.
#: In the schema only: it has back-references, which pydantic's regex engine lacks; the server checks the same grammar
#: with limits.parse_canonical_op.
SPEC_PATTERN = spec_pattern()
OpSpecText = Annotated[str, Field(
    min_length=1, max_length=MAX_SPEC_LENGTH, json_schema_extra={"pattern": SPEC_PATTERN},
    description="a canonical op spec (grammar: nas_ops.spec.parse_spec); 422 not_canonical for another spelling",
    examples=EXAMPLE_OPS,
)]


#: The statistics of latency_db.stats.StatsFields (their one definition), each a required field of a body; finite
#: (a stored NaN or infinity is no statistic: the row is left out as unreadable, never served as null).
MeasuredStats: type[BaseModel] = create_model(
    "MeasuredStats", __config__=ConfigDict(allow_inf_nan=False),
    **{name: (kind, ...) for name, kind in stats_field_types().items()},  # type: ignore[call-overload]
)

#: How many rows an answer left out because a stored value cannot be read (latency_db.repository.readable).
Unreadable = Annotated[int, Field(description="rows of the database left out of this answer because a stored value "
                                  "cannot be read (malformed: written by another program or version; the service's "
                                  "log names them)")]


class Stats(MeasuredStats):  # type: ignore[valid-type,misc]
    """Robust statistics of one measurement, in milliseconds (``samples`` is the number of timed runs); protocol 3
    values aggregate ``rounds`` interleaved rounds, and ``flagged`` says why a value is an upper bound rather than a
    measurement (e.g. an op below the timer's resolution; null when it is a measurement)."""

    rounds: int | None = Field(None, description="rounds the statistics aggregate (null: an older protocol)")
    flagged: str | None = Field(None, description="why the value is flagged; null when it is not")
    peak_rss_bytes: int | None = Field(None, description="the measuring process's real peak resident memory while it "
                                       "measured this, in bytes (null: not measured in a measuring process)")


class CanaryReading(BaseModel):
    op: str
    reference_ms: float
    current_ms: float
    ratio: float


class BackendDrift(BaseModel):
    """The latest canary check of one backend: ``ratio`` is the median of current / stored over the canaries."""

    backend: str
    drifting: bool
    ratio: float
    threshold_rel: float
    checked_at: datetime
    reason: Literal["start", "interval", "job"]
    canaries: list[CanaryReading]
    reestablished: str | None = Field(None, description="why this check replaced the stored references (agreeing "
                                      "checks faster than references set under load, or a rebaseline on "
                                      "request); null when it did not")


class Drift(BaseModel):
    """Whether the device still runs at the speed its stored numbers were measured at (canary ops): "drift" when
    a backend's canaries moved beyond the threshold (re-measure with ``force`` once the cause is gone),
    "unchecked" before the first check, "off" when the service checks no canaries."""

    status: Literal["off", "unchecked", "ok", "drift"]
    threshold_rel: float | None = None
    backends: list[BackendDrift] = []


class RebaselineRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    backend: str | None = Field(None, min_length=1, max_length=64, description="the backend whose canary references to measure anew (null: "
                                "every served backend)")


class RebaselineOut(BaseModel):
    status: Literal["scheduled"]
    backends: list[str] = Field(description="the backends whose next canary check (due at once) measures new "
                                "references; GET /v1/device shows the report, with reestablished set")


class ErrorBody(BaseModel):
    """Every error answer: one clear message and a short machine-readable code (e.g. ``invalid_input``,
    ``invalid_op``, ``not_canonical``, ``over_limit``, ``too_large``, ``auth_required``, ``not_found``)."""

    detail: str = Field(examples=["ops[1]: op spec field 'kernel': must be one of (1, 3, 5, 7, 9, 11), got 4"])
    code: str = Field(examples=["invalid_input"])


#: The largest working set a request may name (1 TiB): far above any cache, so larger values say nothing more.
MAX_WORKING_SET_BYTES = 1 << 40


class ContextBody(BaseModel):
    """The measurement context: which backend, batch, dtype and thread count (null: the service default), and the
    working set of the network the ops belong to, which decides the cache regime (protocol version) they are
    measured and looked up under."""

    # strict: JSON types as declared, never coerced (false is no number, "1" no integer)
    model_config = ConfigDict(extra="forbid", strict=True)

    backend: str = Field("ort-cpu", min_length=1, max_length=64, examples=["ort-cpu"])
    batch: JsonInt = Field(1, ge=1, examples=[1], description="at most the service's max_batch")
    dtype: DType = "float32"
    threads: Annotated[int, Field(ge=1, le=256), BeforeValidator(integral_number)] | None = Field(None, examples=[1])
    working_set_bytes: Annotated[int, Field(ge=1, le=MAX_WORKING_SET_BYTES), BeforeValidator(integral_number)
                                 ] | None = Field(
        None, examples=[786432],
        description="bytes of weights + peak activations of the network the ops belong to (nas_ops.counting."
        "network_memory_bytes; for a search space, its typical network's: space_working_set_bytes). Under the "
        "service's auto protocol it picks the cache regime: warm when it fits in the per-core cache (/v1/device "
        "protocol.cache), else a cache flush of its size rounded up to a power of two of KiB (flush<K>) below 16 "
        "MiB, else cold (the 16 MiB flush); null: cold, except /v1/measure/architecture, which uses the architecture's "
        "own. The regime is part of the answer's protocol_version, so lookups with the same regime find the rows "
        "measured with it.")


class LookupRequest(ContextBody):
    ops: list[OpSpecText] = Field(min_length=1, examples=[EXAMPLE_OPS])


class LookupResponse(BaseModel):
    backend: str
    batch: int
    dtype: str
    threads: int
    env_hash: str
    protocol_version: str
    found: dict[str, Stats]
    missing: list[str]
    drift: Drift
    unreadable: Unreadable = Field(0, description="specs among missing whose stored row cannot be read (malformed); "
                                   "measuring them again replaces the row")


class MeasureRequest(ContextBody):
    ops: list[OpSpecText] = Field(min_length=1, examples=[EXAMPLE_OPS])
    force: bool = Field(False, description="measure again even when stored under the same environment")
    wait_s: float = Field(0.0, ge=0, allow_inf_nan=False, strict=True,
                          description="wait up to this many seconds for the job to finish (at most the service's "
                          "max_wait_s; the wait ends early when the service shuts down)")


ARCHITECTURE_FILE: dict[str, Any] = {
    "title": "ArchitectureFile", "type": "object", "required": ["format", "version", "stem", "blocks", "head"],
    "properties": {
        "format": {"const": FORMAT_MARKER}, "version": {"const": FORMAT_VERSION},
        "stem": {"type": "string", "pattern": SPEC_PATTERN}, "head": {"type": "string", "pattern": SPEC_PATTERN},
        "blocks": {"type": "array", "items": {"type": "string", "pattern": SPEC_PATTERN}},
        "mix": {"anyOf": [{"type": "string", "pattern": SPEC_PATTERN}, {"type": "null"}]},
        "metadata": {"type": "object"},
    },
}
NET_CONFIG: dict[str, Any] = {
    "title": "OfficialNetConfig", "type": "object", "required": ["first_conv", "blocks", "classifier"],
    "additionalProperties": False,
    "properties": {
        "name": {"const": "ProxylessNASNets"}, "bn": {"type": "object"}, "first_conv": {"type": "object"},
        "blocks": {"type": "array", "items": {"type": "object"}}, "feature_mix_layer": {"type": ["object", "null"]},
        "classifier": {"type": "object"},
    },
}


class ArchitectureRequest(ContextBody):
    architecture: dict[str, Any] = Field(
        min_length=1, json_schema_extra={"anyOf": [ARCHITECTURE_FILE, NET_CONFIG]},
        description="an architecture file: ours, or an official ProxylessNAS net.config. Its ops must chain (each "
        "op's input shape is the previous op's output): a 422 invalid_architecture otherwise",
    )
    wait_s: float = Field(0.0, ge=0, allow_inf_nan=False, strict=True,
                          description="wait up to this many seconds for the job to finish (at most max_wait_s)")


class FailedItem(BaseModel):
    op: str
    error: str | None


class JobOut(BaseModel):
    id: int
    kind: str
    status: str
    backend: str
    batch: int
    dtype: str
    threads: int
    protocol_version: str = Field(description="the protocol version (and so the cache regime: 4 cold, 4+warm "
                                  "warm, 4+flush<K> a K KiB flush) the job measures in; its rows are stored under it")
    total: int
    done: int
    skipped: int
    failed: int
    cancelled: int
    pending: int
    error: str | None = None
    result: Stats | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    failed_items: list[FailedItem] = []
    attached: bool = Field(False, description="true when a measure request found a queued or running job of this "
                           "device doing the same work (same ops or architecture, context and force) and answers "
                           "with it instead of queueing a duplicate")


class JobList(BaseModel):
    jobs: list[JobOut]
    unreadable: Unreadable = 0


class BackendInfo(BaseModel):
    name: str
    options: dict[str, Any]
    env_hash: str


class DeviceInfo(BaseModel):
    name: str
    fingerprint: dict[str, Any]
    fingerprint_hash: str
    protocol: dict[str, Any] = Field(description="version and params: a request without working_set_bytes; preset; "
                                     "cache: the per-core cache size the auto preset compares working sets with "
                                     "(size_bytes null: unknown, all cold) and its source; regimes: the stored "
                                     "version of each cache regime; rule")
    default_threads: int
    backends: list[BackendInfo]
    limits: dict[str, Any]
    drift: Drift


class Health(BaseModel):
    status: str = "ok"
    version: str


class Readiness(BaseModel):
    status: str
    database: str
    worker: str
    drift: Literal["off", "unchecked", "ok", "drift"] = Field(
        description="the canaries' verdict (see /v1/device): drift is reported, not a reason to be unready")


# Fleet: the devices of a shared database (routers/fleet.py).


class FleetDevice(BaseModel):
    """One device of the database and what it holds."""

    id: int
    name: str
    this_device: bool = Field(description="the device this service runs on")
    fingerprint_hash: str
    fingerprint: dict[str, Any]
    first_seen: datetime
    last_seen: datetime = Field(description="when its service last started")
    measurements: int = Field(description="stored measurements (every backend and context)")
    ops: int = Field(description="distinct op specs among them")
    backends: list[str]
    last_measured_at: datetime | None = Field(description="when its newest measurement was stored")


class FleetDevices(BaseModel):
    devices: list[FleetDevice]
    unreadable: Unreadable = 0


class DeviceRef(BaseModel):
    id: int
    name: str
    this_device: bool


class FleetOpRow(BaseModel):
    """One stored measurement of the op on one device, in one context."""

    device: DeviceRef
    backend: str
    batch: int
    dtype: str
    threads: int
    protocol_version: str
    env_hash: str
    stats: Stats
    updated_at: datetime


class FleetOp(BaseModel):
    op_spec: str
    rows: list[FleetOpRow]
    missing_on: list[DeviceRef] = Field(description="devices with no measurement of the op matching the filters")
    unreadable: Unreadable = 0


# Search spaces (routers/spaces.py).


class SpaceSummary(BaseModel):
    name: str
    input_size: list[int]
    cell_count: int
    candidate_names: list[str] = Field(description="the column names of the space's table (Zero last, if any)")


class SpaceList(BaseModel):
    spaces: list[SpaceSummary]


class FixedOp(BaseModel):
    role: str = Field(description="stem, first_block, mix or head")
    spec: str


class SpaceCell(BaseModel):
    index: int
    stage: int
    in_chs: int
    out_chs: int
    height: int
    width: int
    stride: int
    candidates: list[str] = Field(description="op spec of each candidate, in the order of candidate_names")
    candidate_names: list[str]
    zero_index: int | None = Field(description="position of Zero among the candidates (costs 0 ms), if allowed")


class SpaceDetail(SpaceSummary):
    fixed: list[FixedOp]
    cells: list[SpaceCell] = Field(description="the searchable cells in execution order")
    working_set_bytes: int = Field(description="working set of the space's typical network at the asked batch and "
                                   "dtype (nas_ops.counting.space_working_set_bytes): what lut sends as "
                                   "working_set_bytes for this space's table")
    regime: str = Field(description="the cache regime this device's protocol gives that working set (warm, "
                        "flush<K> or cold)")
    protocol_version: str = Field(description="the protocol version of the space's table rows on this device: "
                                  "look them up with working_set_bytes (or read rows of this version)")
