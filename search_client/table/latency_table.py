"""Latency tables: F[cell, candidate] of one search space on one device/backend, and E[LAT] as one autograd term.

For cell i with path weights p_i (softmax of its alphas), ``E[lat_i] = sum_j p_ij F(o_ij)`` and
``E[LAT] = fixed + sum_i E[lat_i]``, where ``fixed`` is the sum of the medians of the ops every architecture of
the space has (stem, first block, feature mix, head) and a Zero candidate costs 0. An architecture's predicted
latency is the same sum with one-hot p: the prediction rule of docs/architecture.md (sum of stored medians).
Missing entries are an error listing every one of them (:class:`MissingEntriesError`): there is no fallback value.

Table file (JSON, UTF-8), format version 3; files of versions 1 (plain) and 2 (anchored), written before tables
recorded their working set, still load::

    {
      "format": "proxyless-latency-table",   # fixed marker
      "version": 3,                           # 1 or 2 (with "anchor") in older files, which lack working_set_bytes
      "created_at": "2025-01-01T12:00:00+00:00",
      "space": {...},                         # SearchSpace.to_dict()
      "device": {"url": "http://...", "name": "...", "fingerprint": {...}, "fingerprint_hash": "..."},
      "backend": "ort-cpu", "batch": 1, "dtype": "float32", "threads": 1,   # threads: as resolved by the device
      "protocol_version": "4+flush1024+duet", "env_hash": "<sha256 hex>",
      "working_set_bytes": 786432,            # sent with every request of the table (version 3)
      "regime": "flush1024",                  # the cache regime its protocol_version names (warm, flush<K>, cold)
      "fixed_ms": 1.234,                      # sum of the fixed ops' medians
      "fixed": [{"op": "conv_r16x16_c3-8_k3_s2_relu6", "stats": {Stats}}, ...],   # space.fixed_specs() order
      "cells": [                              # space.cells() order
        {"index": 0, "candidates": [
            {"name": "3x3_MBConv3", "op": "mbconv_...", "latency_ms": 0.12, "stats": {Stats}},
            ...,
            {"name": "Zero", "op": "zero_...", "latency_ms": 0.0, "stats": null}]},
        ...],
      "anchor": {"method": "huber-weights", "a_ms": -0.8, "b": 1.15,   # version 2 only: the anchor map
                 "c_ms_per_mb": 0.02,                 # only with method "huber-weights" (else c = 0)
                 "networks": [{"choices": [0, 3, ...], "predicted_ms": 12.3, "measured_ms": 13.1,
                               "weight_mb": 8.1}, ...]},   # weight_mb: absent in files before the weight term
      "quality": {"bound": 0.1, "noisy": ["mbconv_..."], "passes": 2,   # what stays noisy or implausible after
                  "implausible": [{"cell": 1, "cheaper": "mbconv_...", "than": "mbconv_..."}]},   # re-measuring
      "content_hash": "<sha256 hex>"          # LatencyTable.content_hash(); checked on load
    }

A table has one cache regime: every entry was looked up and measured with ``working_set_bytes`` (that of the
space's typical network), and whatever predicts or verifies with the table measures under it too (the anchors,
``verify --table``). ``quality`` (:mod:`search_client.table.quality`) is what :func:`build_table` found still noisy or
implausible after measuring such entries again; absent in tables not built from a device.

Anchored tables (:mod:`search_client.table.anchors`): ``latency_ms`` and ``fixed_ms`` are the anchored values (the
device's median of an op times ``b`` plus ``c_ms_per_mb`` times its weights in MB; ``a_ms`` added to ``fixed_ms``),
``stats`` stay the device's own; an architecture's prediction is the same sum, ``a + b * (its plain sum) + c * (its
weights in MB)``.

``Stats`` is the device's ``{"median_ms", "mean_ms", "std_ms", "min_ms", "p10_ms", "p90_ms", "iqr_ms", "samples"}``,
plus ``"flagged": "<reason>"`` for an entry the device flagged (an upper bound rather than a measurement, e.g. an
op below the timer's resolution). A table with flagged entries is refused (:class:`FlaggedEntriesError`, listing
them) unless it is built with ``allow_flagged``; such a file then carries ``"allow_flagged": true``.
Loading rebuilds the table from the stats and the space, and raises ValueError when the file's ops, latencies or
content hash do not agree with them (a hand-edited or truncated file is refused, not half-used).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from nas_ops.counting import space_working_set_bytes, weight_bytes
from nas_ops.space import SearchSpace
from nas_ops.spec import format_spec
from search_client.device.api_schema import STATS_FIELDS, regime_of_version
from search_client.device.errors import MissingEntriesError
from search_client.table.anchors import (
    ANCHOR_PASSES,
    AnchorFitError,
    BYTES_PER_MB,
    AnchorMap,
    anchor_choices,
    default_anchors,
    fit_anchor_map,
)
from search_client.table.quality import QUALITY_PASSES, TableQuality, check_quality

if TYPE_CHECKING:
    from search_client.device.client import LatencyClient, ProgressCallback

FORMAT_MARKER = "proxyless-latency-table"
FORMAT_VERSION = 1
ANCHORED_FORMAT_VERSION = 2
#: Files that record their working set (and so their regime): anchored or not.
REGIME_FORMAT_VERSION = 3
#: An anchored fixed cost below this share of the unanchored one is reported (the intercept ate it).
FIXED_SHARE_WARNING = 0.1
DEVICE_FIELDS = ("url", "name", "fingerprint", "fingerprint_hash")


class RegimeMismatchError(ValueError):
    """A measurement came back under another protocol version (cache regime, duet) than the table's."""


class FlaggedEntriesError(ValueError):
    """A latency table would use entries the device flagged. ``flagged`` maps each such op spec to its reason."""

    def __init__(self, flagged: Mapping[str, str], context: str = "") -> None:
        self.flagged = dict(flagged)
        where = f" {context}" if context else ""
        listing = "; ".join(f"{spec}: {reason}" for spec, reason in self.flagged.items())
        super().__init__(f"{len(self.flagged)} entr{'y is' if len(self.flagged) == 1 else 'ies are'} flagged by "
                         f"the device{where} (not plain measurements): {listing}; use them anyway with "
                         "--allow-flagged (allow_flagged=True)")


def fixed_weight_mb(space: SearchSpace, dtype: str) -> float:
    """The weights (MB) of the ops every architecture of ``space`` has."""
    return sum(weight_bytes(spec, dtype) for spec in space.fixed_specs()) / BYTES_PER_MB


def cell_weights_mb(space: SearchSpace, dtype: str) -> list[list[float]]:
    """The weights (MB) of every candidate of every cell, in the table's entry order (Zero: 0)."""
    return [[0.0 if cell.is_zero(j) else weight_bytes(op, dtype) / BYTES_PER_MB for j, op in enumerate(cell.candidates)]
            for cell in space.cells()]


def table_specs(space: SearchSpace) -> list[str]:
    """The table's keys: :meth:`nas_ops.space.SearchSpace.table_specs` as op-spec strings."""
    return [format_spec(s) for s in space.table_specs()]


def _check_stats(spec: str, stats: Any) -> dict[str, Any]:
    """A copy of one Stats dict with every field present and a finite, non-negative median; the device's
    ``flagged`` reason is kept when it has one."""
    if not isinstance(stats, Mapping):
        raise ValueError(f"stats of {spec}: expected an object, got {type(stats).__name__}")
    absent = [f for f in STATS_FIELDS if f not in stats]
    if absent:
        raise ValueError(f"stats of {spec}: missing field(s) {', '.join(absent)}")
    median = stats["median_ms"]
    if isinstance(median, bool) or not isinstance(median, (int, float)) or not math.isfinite(median) or median < 0:
        raise ValueError(f"stats of {spec}: median_ms must be a finite number >= 0, got {median!r}")
    checked = {f: stats[f] for f in STATS_FIELDS}
    flagged = stats.get("flagged")
    if flagged is not None:
        if not isinstance(flagged, str) or not flagged:
            raise ValueError(f"stats of {spec}: flagged must be a reason (a non-empty string) or null, "
                             f"got {flagged!r}")
        checked["flagged"] = flagged
    return checked


def _check_device(device: Mapping[str, Any]) -> dict[str, Any]:
    absent = [f for f in DEVICE_FIELDS if f not in device]
    if absent:
        raise ValueError(f"device: missing field(s) {', '.join(absent)} (expected {', '.join(DEVICE_FIELDS)})")
    return dict(device)


@dataclass(eq=True)
class LatencyTable:
    """F[cell, candidate] (ms) of one space on one device + backend + batch + dtype + threads.

    Build it with :meth:`from_stats`, :func:`build_table` (from a device) or :meth:`load` (from a file).
    ``entries[i][j]`` is candidate j of cell i in the cell's candidate order (Zero = 0.0); ``stats`` holds the
    device's full Stats of every op used (fixed and candidates, Zero excluded). ``allow_flagged``: the table has
    flagged entries (see :attr:`flagged`) and was built knowing it. ``anchor``: the map the entries were anchored
    with (None: the plain sums of the device's medians). ``working_set_bytes``: the working set every request of
    the table carried (None: a file written before tables recorded it). ``quality``: what stayed noisy or
    implausible when it was built (None: not checked).
    """

    space: SearchSpace
    device: dict[str, Any]
    backend: str
    batch: int
    dtype: str
    threads: int | None
    protocol_version: str
    env_hash: str
    fixed_ms: float
    entries: list[list[float]]
    stats: dict[str, dict[str, Any]]
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    allow_flagged: bool = False
    anchor: AnchorMap | None = None
    working_set_bytes: int | None = None
    quality: TableQuality | None = None
    _cells: list[torch.Tensor] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.working_set_bytes is not None and (isinstance(self.working_set_bytes, bool) or not isinstance(
                self.working_set_bytes, int) or self.working_set_bytes < 1):
            raise ValueError(f"working_set_bytes: expected a positive integer, got {self.working_set_bytes!r}")
        cells = self.space.cells()
        if len(self.entries) != len(cells):
            raise ValueError(f"entries: {len(self.entries)} rows for a space of {len(cells)} cells")
        for i, (row, cell) in enumerate(zip(self.entries, cells)):
            if len(row) != len(cell.candidates):
                raise ValueError(f"entries[{i}]: {len(row)} values for {len(cell.candidates)} candidates")
        self._cells = [torch.tensor(row, dtype=torch.float64) for row in self.entries]

    # --- construction ---------------------------------------------------------------------------------------
    @classmethod
    def from_stats(
        cls,
        space: SearchSpace,
        stats: Mapping[str, Mapping[str, Any]],
        *,
        device: Mapping[str, Any],
        backend: str,
        batch: int,
        dtype: str = "float32",
        threads: int | None = None,
        protocol_version: str,
        env_hash: str,
        created_at: str | None = None,
        allow_flagged: bool = False,
        anchor: AnchorMap | None = None,
        working_set_bytes: int | None = None,
        quality: TableQuality | None = None,
    ) -> LatencyTable:
        """The table of ``space`` from ``{op spec: Stats}`` (extra specs are ignored), anchored with ``anchor``.

        Raises :class:`MissingEntriesError` listing every spec of :func:`table_specs` that ``stats`` lacks, and
        :class:`FlaggedEntriesError` listing every flagged one unless ``allow_flagged``.
        """
        needed = table_specs(space)
        missing = [spec for spec in needed if spec not in stats]
        if missing:
            raise MissingEntriesError(missing, f"for space {space.name!r} on {backend}")
        used = {spec: _check_stats(spec, stats[spec]) for spec in needed}
        flagged = {spec: s["flagged"] for spec, s in used.items() if "flagged" in s}
        if flagged and not allow_flagged:
            raise FlaggedEntriesError(flagged, f"for space {space.name!r} on {backend}")
        fixed_ms = sum(float(used[format_spec(s)]["median_ms"]) for s in space.fixed_specs())
        entries = [
            [0.0 if cell.is_zero(j) else float(used[format_spec(op)]["median_ms"])
             for j, op in enumerate(cell.candidates)]
            for cell in space.cells()
        ]
        if anchor is not None:
            unanchored_fixed = fixed_ms
            fixed_ms = anchor.shift(fixed_ms, fixed_weight_mb(space, dtype))
            entries = [[anchor.scale_entry(value, weight) for value, weight in zip(row, weights)]
                       for row, weights in zip(entries, cell_weights_mb(space, dtype))]
            negative = [f"cell {i} candidate {j}" for i, row in enumerate(entries) for j, v in enumerate(row) if v < 0]
            if negative or fixed_ms < 0:
                what = ', '.join(negative) or (f"the fixed part ({fixed_ms:.4f} ms anchored, {unanchored_fixed:.4f} "
                                               "ms unanchored)")
                raise AnchorFitError(f"anchors: the map (measured = {anchor.a_ms:.3f} + {anchor.b:.3f} x predicted "
                                     f"ms + {anchor.c_ms_per_mb:.4f} x weight MB) makes {what} negative; measure "
                                     "the table again on a quiet device")
        extra = {} if created_at is None else {"created_at": created_at}
        return cls(space=space, device=_check_device(device), backend=backend, batch=batch, dtype=dtype,
                   threads=threads, protocol_version=protocol_version, env_hash=env_hash, fixed_ms=fixed_ms,
                   entries=entries, stats=used, allow_flagged=bool(allow_flagged and flagged), anchor=anchor,
                   working_set_bytes=working_set_bytes, quality=quality, **extra)

    def anchored(self, anchor: AnchorMap) -> LatencyTable:
        """This table (unanchored) anchored with ``anchor``; ValueError for a table already anchored."""
        if self.anchor is not None:
            raise ValueError("anchored: the table is anchored already")
        return type(self).from_stats(
            self.space, self.stats, device=self.device, backend=self.backend, batch=self.batch, dtype=self.dtype,
            threads=self.threads, protocol_version=self.protocol_version, env_hash=self.env_hash,
            created_at=self.created_at, allow_flagged=self.allow_flagged, anchor=anchor,
            working_set_bytes=self.working_set_bytes, quality=self.quality)

    # --- regime and quality ---------------------------------------------------------------------------------
    @property
    def regime(self) -> str:
        """The cache regime of the table's entries: the one its protocol version names (warm, flush<K>, cold)."""
        return regime_of_version(self.protocol_version)

    def request_working_set(self) -> int:
        """The working set to send with a request that must follow the table's regime: the one its requests
        carried, or for an older file that lacks it, the space's typical network's (what ``lut`` sent)."""
        if self.working_set_bytes is not None:
            return self.working_set_bytes
        return space_working_set_bytes(self.space, self.batch, self.dtype)

    def check_same_regime(self, protocol_version: str | None, what: str) -> None:
        """Raise :class:`RegimeMismatchError` naming both versions when ``what`` came back under another protocol
        version than the table's (None: the device did not say, an error too)."""
        if protocol_version != self.protocol_version:
            raise RegimeMismatchError(
                f"{what} came back under protocol version {protocol_version!r} (regime "
                f"{regime_of_version(protocol_version or '')}), the table's is {self.protocol_version!r} (regime "
                f"{self.regime}): they cannot be compared")

    @property
    def unanchored_fixed_ms(self) -> float:
        """The fixed cost as the device measured it: the sum of the fixed ops' medians, before any anchor map."""
        return sum(float(self.stats[format_spec(s)]["median_ms"]) for s in self.space.fixed_specs())

    def fixed_cost_warning(self) -> str | None:
        """One line when the anchors' intercept makes the fixed cost near 0 (below :data:`FIXED_SHARE_WARNING` of
        the unanchored one), with both values; None otherwise."""
        unanchored = self.unanchored_fixed_ms
        if self.anchor is None or unanchored <= 0 or self.fixed_ms >= FIXED_SHARE_WARNING * unanchored:
            return None
        return (f"the anchors' intercept ({self.anchor.a_ms:+.4f} ms) takes the fixed cost (stem, first "
                f"block, mix, head) from {unanchored:.4f} ms unanchored to {self.fixed_ms:.4f} ms: the table's entries "
                "carry a bias the intercept cancels; predictions of whole networks still follow the anchors, single "
                "entries do not")

    @property
    def flagged(self) -> dict[str, str]:
        """The op specs of the entries the device flagged, with its reasons (empty for a plain table)."""
        return {spec: s["flagged"] for spec, s in self.stats.items() if "flagged" in s}

    # --- latency terms --------------------------------------------------------------------------------------
    @property
    def n_cells(self) -> int:
        return len(self.entries)

    def cell_latency(self, i: int) -> torch.Tensor:
        """F of cell ``i``: float64 tensor of shape [n_candidates_i] (ms; Zero = 0)."""
        if not isinstance(i, int) or not 0 <= i < self.n_cells:
            raise ValueError(f"cell index: expected 0..{self.n_cells - 1}, got {i!r}")
        return self._cells[i]

    def expected_latency(self, probs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """E[LAT] (ms) for per-cell path weights ``probs[i]`` (shape [n_candidates_i]).

        Returns ``(total, per_cell)``: ``total = fixed + sum_i <p_i, F_i>`` (scalar) and ``per_cell`` [n_cells],
        one autograd expression of ``probs`` (``dtotal/dp_ij = F_ij``), in the dtype and device of ``probs``.
        """
        if len(probs) != self.n_cells:
            raise ValueError(f"probs: {len(probs)} tensors for {self.n_cells} cells")
        terms = []
        for i, (p, f) in enumerate(zip(probs, self._cells)):
            if not isinstance(p, torch.Tensor) or p.shape != f.shape:
                shape = tuple(p.shape) if isinstance(p, torch.Tensor) else type(p).__name__
                raise ValueError(f"probs[{i}]: expected a tensor of shape {tuple(f.shape)}, got {shape}")
            terms.append((p * f.to(dtype=p.dtype, device=p.device)).sum())
        per_cell = torch.stack(terms)
        return per_cell.sum() + self.fixed_ms, per_cell

    def _check_choices(self, choices: Sequence[int]) -> None:
        if len(choices) != self.n_cells:
            raise ValueError(f"choices: {len(choices)} values for {self.n_cells} cells")
        for i, (c, row) in enumerate(zip(choices, self.entries)):
            if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < len(row):
                raise ValueError(f"choices[{i}]: expected a candidate index 0..{len(row) - 1}, got {c!r}")

    def latency_of(self, choices: Sequence[int]) -> float:
        """Predicted latency (ms) of the architecture with candidate ``choices[i]`` in cell i."""
        self._check_choices(choices)
        return self.fixed_ms + sum(row[c] for row, c in zip(self.entries, choices))

    def weight_mb_of(self, choices: Sequence[int]) -> float:
        """The weights (MB, in the table's dtype) of the architecture with candidate ``choices[i]`` in cell i."""
        self._check_choices(choices)
        return fixed_weight_mb(self.space, self.dtype) + sum(
            row[c] for row, c in zip(cell_weights_mb(self.space, self.dtype), choices))

    def min_latency(self) -> tuple[float, list[int]]:
        """The fastest architecture of the space and its latency (exact: latency is additive over cells)."""
        choices = [min(range(len(row)), key=row.__getitem__) for row in self.entries]
        return self.latency_of(choices), choices

    def max_latency(self) -> tuple[float, list[int]]:
        """The slowest architecture of the space and its latency."""
        choices = [max(range(len(row)), key=row.__getitem__) for row in self.entries]
        return self.latency_of(choices), choices

    # --- identity and file format ---------------------------------------------------------------------------
    def content_hash(self) -> str:
        """sha256 (hex) of what determines the numbers: space, entries, stats, fixed, context, environment."""
        payload = {
            "space": self.space.to_dict(), "fingerprint_hash": self.device["fingerprint_hash"],
            "backend": self.backend, "batch": self.batch, "dtype": self.dtype, "threads": self.threads,
            "protocol_version": self.protocol_version, "env_hash": self.env_hash, "fixed_ms": self.fixed_ms,
            "entries": self.entries, "stats": self.stats,
        }
        if self.allow_flagged:  # absent otherwise: files without flagged entries hash as before
            payload["allow_flagged"] = True
        if self.anchor is not None:  # likewise: unanchored tables hash as before
            payload["anchor"] = self.anchor.as_dict()
        if self.working_set_bytes is not None:  # likewise: files before version 3 hash as before
            payload["working_set_bytes"] = self.working_set_bytes
        if self.quality is not None:
            payload["quality"] = self.quality.as_dict()
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of the table file (see the module docstring)."""
        cells = []
        for cell, row in zip(self.space.cells(), self.entries):
            candidates = []
            for j, (op, name, value) in enumerate(zip(cell.candidates, cell.candidate_names, row)):
                spec = format_spec(op)
                candidates.append({"name": name, "op": spec, "latency_ms": value,
                                   "stats": None if cell.is_zero(j) else self.stats[spec]})
            cells.append({"index": cell.index, "candidates": candidates})
        fixed = [{"op": format_spec(s), "stats": self.stats[format_spec(s)]} for s in self.space.fixed_specs()]
        extra: dict[str, Any] = {"allow_flagged": True} if self.allow_flagged else {}
        if self.anchor is not None:
            extra["anchor"] = self.anchor.as_dict()
        if self.working_set_bytes is not None:
            extra["working_set_bytes"] = self.working_set_bytes
        if self.quality is not None:
            extra["quality"] = self.quality.as_dict()
        if self.working_set_bytes is not None:
            version = REGIME_FORMAT_VERSION
        else:
            version = FORMAT_VERSION if self.anchor is None else ANCHORED_FORMAT_VERSION
        return {
            "format": FORMAT_MARKER, "version": version, "created_at": self.created_at,
            "space": self.space.to_dict(), "device": self.device, "backend": self.backend, "batch": self.batch,
            "dtype": self.dtype, "threads": self.threads, "protocol_version": self.protocol_version,
            "regime": self.regime, "env_hash": self.env_hash, "fixed_ms": self.fixed_ms, "fixed": fixed,
            "cells": cells, **extra, "content_hash": self.content_hash(),
        }

    def save(self, path: str | Path) -> Path:
        """Write the table file (JSON); return its path."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        """Read a table file; raise ValueError naming the bad field of a malformed or inconsistent file."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: Any, source: str = "table") -> LatencyTable:
        """Rebuild a table from its file object; checks it against its own space, latencies and hash."""
        if not isinstance(data, dict) or data.get("format") != FORMAT_MARKER:
            raise ValueError(f"{source}: field 'format': not a latency table (expected {FORMAT_MARKER!r})")
        version = data.get("version")
        if version not in (FORMAT_VERSION, ANCHORED_FORMAT_VERSION, REGIME_FORMAT_VERSION):
            raise ValueError(f"{source}: field 'version': unsupported version {version!r}")
        if version != REGIME_FORMAT_VERSION and (version == ANCHORED_FORMAT_VERSION) != ("anchor" in data):
            raise ValueError(f"{source}: field 'anchor': version {version} files "
                             f"{'need' if version == ANCHORED_FORMAT_VERSION else 'have no'} one")
        if (version == REGIME_FORMAT_VERSION) != ("working_set_bytes" in data):
            raise ValueError(f"{source}: field 'working_set_bytes': version {version} files "
                             f"{'need' if version == REGIME_FORMAT_VERSION else 'have no'} one")
        required = ("created_at", "space", "device", "backend", "batch", "dtype", "threads", "protocol_version",
                    "env_hash", "fixed", "cells", "content_hash")
        absent = [key for key in required if key not in data]
        if absent:
            raise ValueError(f"{source}: missing field(s) {', '.join(absent)}")
        space = SearchSpace.from_dict(data["space"])
        stats = _file_stats(data, source)
        allow_flagged = data.get("allow_flagged", False)
        if not isinstance(allow_flagged, bool):
            raise ValueError(f"{source}: field 'allow_flagged': expected true or false, got {allow_flagged!r}")
        anchor = AnchorMap.from_dict(data["anchor"], source) if "anchor" in data else None
        quality = TableQuality.from_dict(data["quality"], source) if "quality" in data else None
        table = cls.from_stats(
            space, stats, device=data["device"], backend=data["backend"], batch=data["batch"],
            dtype=data["dtype"], threads=data["threads"], protocol_version=data["protocol_version"],
            env_hash=data["env_hash"], created_at=data["created_at"], allow_flagged=allow_flagged, anchor=anchor,
            working_set_bytes=data.get("working_set_bytes"), quality=quality,
        )
        if "regime" in data and data["regime"] != table.regime:
            raise ValueError(f"{source}: field 'regime': {data['regime']!r} is not the regime of its protocol "
                             f"version {table.protocol_version!r} ({table.regime!r})")
        _check_file_agrees(table, data, source)
        return table


def _file_stats(data: dict[str, Any], source: str) -> dict[str, Any]:
    """``{op: stats}`` from a table file's ``fixed`` and ``cells`` lists."""
    stats: dict[str, Any] = {}
    try:
        for item in data["fixed"]:
            stats[item["op"]] = item["stats"]
        for cell in data["cells"]:
            for cand in cell["candidates"]:
                if cand["stats"] is not None:
                    stats[cand["op"]] = cand["stats"]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{source}: fields 'fixed'/'cells': malformed entry ({exc!r})") from exc
    return stats


def _check_file_agrees(table: LatencyTable, data: dict[str, Any], source: str) -> None:
    """The file's ops per cell and latencies are the ones its space and stats give, and its hash matches."""
    cells = data["cells"]
    if len(cells) != table.n_cells:
        raise ValueError(f"{source}: field 'cells': {len(cells)} cells, its space has {table.n_cells}")
    for i, (cell, file_cell, row) in enumerate(zip(table.space.cells(), cells, table.entries)):
        ops = [c.get("op") for c in file_cell["candidates"]]
        if ops != [format_spec(op) for op in cell.candidates]:
            raise ValueError(f"{source}: field 'cells[{i}]': candidates differ from the space's cell {i}")
        values = [c.get("latency_ms") for c in file_cell["candidates"]]
        if values != row:
            raise ValueError(f"{source}: field 'cells[{i}]': latency_ms values disagree with their stats")
    if data["content_hash"] != table.content_hash():
        raise ValueError(f"{source}: field 'content_hash': does not match the table's content (file edited?)")


def build_table(
    client: LatencyClient,
    space: SearchSpace,
    *,
    backend: str,
    batch: int = 1,
    dtype: str = "float32",
    threads: int | None = None,
    measure_missing: bool = True,
    progress: ProgressCallback | None = None,
    timeout_s: float = 3600.0,
    poll_s: float = 1.0,
    allow_flagged: bool = False,
    anchors: int | None = None,
) -> LatencyTable:
    """The table of ``space`` on the device behind ``client``.

    Looks up every spec of :func:`table_specs` in the cache regime of the space's typical network (its working
    set, :func:`nas_ops.counting.space_working_set_bytes`, is sent with every request: the device measures and
    serves the entries warm when it fits in its per-core cache); the missing ones are measured through a job when
    ``measure_missing`` (waiting up to ``timeout_s``; ``progress`` receives every poll of those jobs), else
    :class:`MissingEntriesError` lists them. Entries the device flagged raise :class:`FlaggedEntriesError` unless
    ``allow_flagged``; before that, when it may measure, flagged entries are measured once more in a new job (a new
    calibration session: a flag from one disturbed timing does not survive a second session; a flag that does is an
    op below the device's resolution).
    Its quality is checked (:mod:`search_client.table.quality`) before the flagged entries are measured again:
    when it may measure, the noisy entries and those in implausible orderings are measured again with ``force``, in
    up to :data:`~search_client.table.quality.QUALITY_PASSES` extra jobs, and what stays (checked once more after the
    flagged entries' job) is the table's ``quality``.
    Then the table is anchored (:func:`anchor_table`) on ``anchors`` networks measured on the
    device (None: the default, :func:`~search_client.table.anchors.default_anchors`; 0: not anchored) in the
    table's regime.
    """
    info = client.device_info()
    device = {"url": client.base_url, "name": info["name"], "fingerprint": info["fingerprint"],
              "fingerprint_hash": info["fingerprint_hash"]}
    specs = table_specs(space)
    working_set = space_working_set_bytes(space, batch, dtype)
    result = client.lookup(specs, backend, batch, dtype, threads, working_set_bytes=working_set)
    found = dict(result.found)
    if result.missing:
        if not measure_missing:
            raise MissingEntriesError(result.missing, f"on {client.base_url} ({backend}); measure them or drop "
                                                      "--no-measure")
        found.update(client.measure_missing(result.missing, backend, batch, dtype, threads, timeout_s=timeout_s,
                                            poll_s=poll_s, progress=progress, working_set_bytes=working_set))
    quality = check_quality(space, {spec: found[spec] for spec in specs}, batch=batch, dtype=dtype)
    while measure_missing and not quality.ok and quality.passes < QUALITY_PASSES:
        found.update(client.measure_missing(quality.suspects(), backend, batch, dtype, threads, timeout_s=timeout_s,
                                            poll_s=poll_s, progress=progress, working_set_bytes=working_set,
                                            force=True))
        quality = check_quality(space, {spec: found[spec] for spec in specs}, batch=batch, dtype=dtype,
                                passes=quality.passes + 1)
    flagged = [spec for spec in specs if found[spec].get("flagged")]
    if flagged and measure_missing and not allow_flagged:
        found.update(client.measure_missing(flagged, backend, batch, dtype, threads, timeout_s=timeout_s,
                                            poll_s=poll_s, progress=progress, working_set_bytes=working_set,
                                            force=True))
        quality = check_quality(space, {spec: found[spec] for spec in specs}, batch=batch, dtype=dtype,
                                passes=quality.passes)
    table = LatencyTable.from_stats(
        space, found, device=device, backend=result.backend, batch=result.batch, dtype=result.dtype,
        threads=result.threads, protocol_version=result.protocol_version, env_hash=result.env_hash,
        allow_flagged=allow_flagged, working_set_bytes=working_set, quality=quality,
    )
    count = default_anchors() if anchors is None else anchors
    if count == 0:
        return table
    return anchor_table(client, table, count, timeout_s=timeout_s, poll_s=poll_s, progress=progress)


def anchor_table(client: LatencyClient, table: LatencyTable, count: int, *, timeout_s: float = 3600.0,
                 poll_s: float = 1.0, progress: ProgressCallback | None = None) -> LatencyTable:
    """``table`` anchored on ``count`` (>= 2) networks of its space from its cheapest to its most expensive
    (:func:`~search_client.table.anchors.anchor_choices`), each measured end to end on the device behind
    ``client`` in the table's context and regime (every request carries :meth:`LatencyTable.request_working_set`),
    in :data:`~search_client.table.anchors.ANCHOR_PASSES` passes over all of them (its latency: the lowest pass).
    Raises :class:`RegimeMismatchError` naming both versions when an anchor comes back under another protocol
    version than the table's, AnchorFitError when they disagree beyond a bias. A weight term that would make an
    entry of the table negative is dropped (the map is refitted without it)."""
    choices = anchor_choices(table.entries, count, cell_weights_mb(table.space, table.dtype))
    archs = [table.space.architecture(choice) for choice in choices]
    working_set = table.request_working_set()

    def measure(k: int, arch: Any) -> float:
        result = client.measure_network(arch, table.backend, table.batch, table.dtype, table.threads,
                                        timeout_s=timeout_s, poll_s=poll_s, progress=progress,
                                        working_set_bytes=working_set)
        table.check_same_regime(result.protocol_version, f"anchor network {k} (job {result.job_id})")
        return float(result.stats["median_ms"])

    passes = [[measure(k, arch) for k, arch in enumerate(archs)] for _ in range(ANCHOR_PASSES)]
    measured = [min(results) for results in zip(*passes)]
    predicted = [table.latency_of(choice) for choice in choices]
    weights = [table.weight_mb_of(choice) for choice in choices]
    fitted = fit_anchor_map(predicted, measured, choices, weights)
    try:
        return table.anchored(fitted)
    except AnchorFitError:
        if fitted.c_ms_per_mb == 0.0:
            raise
        # a noisy weight term that makes an entry of the table negative is not kept: the map without it scales
        # every entry by b > 0 (the table file records which fit it is; a negative fixed part still fails)
        return table.anchored(fit_anchor_map(predicted, measured, choices, None))
