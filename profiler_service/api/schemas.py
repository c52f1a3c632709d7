"""Request and response bodies of the REST API (with the examples shown in the OpenAPI docs)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

EXAMPLE_OPS = ["mbconv_r56x56_c24-24_k3_e6_s1_relu6_skip", "mbconv_r56x56_c24-40_k5_e3_s2_relu6"]
DType = Literal["float32", "float16"]


class Stats(BaseModel):
    """Robust statistics of one measurement, in milliseconds (``samples`` is the number of timed runs)."""

    median_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    p10_ms: float
    p90_ms: float
    iqr_ms: float
    samples: int


class ErrorBody(BaseModel):
    detail: str = Field(examples=["ops[1]: op spec field 'kernel': must be one of (1, 3, 5, 7, 9, 11), got 4"])
    code: str = Field(examples=["invalid_input"])


class ContextBody(BaseModel):
    """The measurement context: which backend, batch, dtype and thread count (null: the service default)."""

    model_config = ConfigDict(extra="forbid")

    backend: str = Field("ort-cpu", min_length=1, max_length=64, examples=["ort-cpu"])
    batch: int = Field(1, ge=1, examples=[1])
    dtype: DType = "float32"
    threads: int | None = Field(None, ge=1, le=256, examples=[1])


class LookupRequest(ContextBody):
    ops: list[str] = Field(min_length=1, examples=[EXAMPLE_OPS])


class LookupResponse(BaseModel):
    backend: str
    batch: int
    dtype: str
    threads: int
    env_hash: str
    protocol_version: str
    found: dict[str, Stats]
    missing: list[str]


class MeasureRequest(ContextBody):
    ops: list[str] = Field(min_length=1, examples=[EXAMPLE_OPS])
    force: bool = Field(False, description="measure again even when stored under the same environment")
    wait_s: float = Field(0.0, ge=0, allow_inf_nan=False, strict=True,
                          description="wait up to this many seconds for the job to finish (at most the service's "
                          "max_wait_s; the wait ends early when the service shuts down)")


class ArchitectureRequest(ContextBody):
    architecture: dict[str, Any] = Field(description="an architecture file (ours or an official net.config)")
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


class JobList(BaseModel):
    jobs: list[JobOut]


class BackendInfo(BaseModel):
    name: str
    options: dict[str, Any]
    env_hash: str


class DeviceInfo(BaseModel):
    name: str
    fingerprint: dict[str, Any]
    fingerprint_hash: str
    protocol: dict[str, Any]
    default_threads: int
    backends: list[BackendInfo]
    limits: dict[str, Any]


class Health(BaseModel):
    status: str = "ok"
    version: str


class Readiness(BaseModel):
    status: str
    database: str
    worker: str
