"""The job worker's measuring functions, served by a measuring process per backend.

:class:`IsolatedMeasurer` has the signatures of the protocol's functions the worker calls
(:func:`~profiler_service.engine.protocol.measure_op_round`,
:func:`~profiler_service.engine.protocol.measure_network_round` and
:func:`~profiler_service.engine.duet.start_regime_duet`), so the worker, its canaries and its duet pool work the
same whether an item is measured in the service process or in a child; here each call becomes one request to the
backend's :class:`~profiler_service.isolation.process.MeasuringProcess` with the item's limits:

- an op (and a canary, and a duet's start) under ``op_memory_bytes``, a whole network under
  ``network_memory_bytes``: limits of the measuring process's real resident memory, its runtimes included;
- every request under ``time_limit_s``.

A duet (protocol point 11) must time its reference next to the measured blocks, so it lives in the child:
:meth:`IsolatedMeasurer.start_regime_duet` starts it there and gives the worker's duet pool a
:class:`RemoteDuet` that stands for it (its label and baselines, as the pool needs them); a measurement through a
:class:`~profiler_service.engine.duet.DuetBackend` of a remote duet names the duet and its shared baseline, and a
restarted child starts that duet again on the same baseline. A job's calibration values stay in the child too,
under the session of the job's :class:`~profiler_service.engine.calibration.CalibrationCache`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from collections.abc import Callable
from typing import Any

from nas_ops.arch import Architecture
from nas_ops.spec import OpSpec
from profiler_service.engine.backends import Backend, get_backend
from profiler_service.engine.calibration import CalibrationCache
from profiler_service.engine.duet import DuetBackend, DuetStart
from profiler_service.engine.protocol import ProtocolParams, StopCheck
from profiler_service.engine.stats import RoundMeasurement
from profiler_service.isolation.process import MeasuringProcess

#: Makes the measuring process of a backend (tests pass scripted ones).
ProcessFactory = Callable[[str], MeasuringProcess]


class RemoteDuet:
    """A duet started in a measuring process (see the module docstring): ``baseline_ms`` in its own regime,
    ``regime_ratio`` from the shared baseline's regime to it, ``key`` its name in the child."""

    def __init__(self, measurer: IsolatedMeasurer, backend: str, key: str, label: str, baseline_ms: float,
                 regime_ratio: float) -> None:
        self.measurer = measurer
        self.backend = backend
        self.key = key
        self.label = label
        self.baseline_ms = baseline_ms
        self.regime_ratio = regime_ratio

    @property
    def shared_baseline_ms(self) -> float:
        """The baseline of the shared regime this duet is scaled to."""
        return self.baseline_ms / self.regime_ratio

    def rebased(self, baseline_ms: float) -> RemoteDuet:
        """This duet on the scale of ``baseline_ms`` (in its own regime), like Duet.rebased."""
        return RemoteDuet(self.measurer, self.backend, self.key, self.label, baseline_ms, self.regime_ratio)

    def wrap(self, runner: Any) -> Any:
        raise TypeError("a duet of a measuring process times its blocks in that process only")

    def close(self) -> None:
        """Drop the duet in the child (nothing to do when the child is gone)."""
        self.measurer.close_duet(self)


class IsolatedMeasurer:
    """Measuring processes by backend name, and the worker's measuring functions served by them."""

    def __init__(self, *, op_memory_bytes: int | None, network_memory_bytes: int | None,
                 time_limit_s: float | None, process_factory: ProcessFactory = MeasuringProcess) -> None:
        self.op_memory_bytes = op_memory_bytes
        self.network_memory_bytes = network_memory_bytes
        self.time_limit_s = time_limit_s
        self.process_factory = process_factory
        self._processes: dict[str, MeasuringProcess] = {}
        self._lock = threading.Lock()

    def process(self, backend: str) -> MeasuringProcess:
        """The measuring process of ``backend`` (made on first use; started by its first request)."""
        with self._lock:
            if backend not in self._processes:
                self._processes[backend] = self.process_factory(backend)
            return self._processes[backend]

    def _request(self, backend: str, message: dict[str, Any], what: str, *, network: bool = False,
                 should_stop: StopCheck | None = None) -> tuple[Any, int | None]:
        memory, setting = ((self.network_memory_bytes, "the per-network memory limit (max_network_memory_mib)")
                           if network else (self.op_memory_bytes, "the per-op memory limit (max_op_memory_mib)"))
        return self.process(backend).request({**message, "backend": backend}, what=what, memory_bytes=memory,
                                             memory_setting=setting, time_limit_s=self.time_limit_s,
                                             should_stop=should_stop)

    def measure_op_round(self, spec: OpSpec, backend: Backend, batch: int, dtype: str, threads: int,
                         params: ProtocolParams | None = None, calibration_cache: CalibrationCache | None = None,
                         should_stop: StopCheck | None = None) -> RoundMeasurement:
        """One round of one op, measured in the backend's measuring process (see measure_op_round)."""
        params = params or ProtocolParams()
        # the job's cache is empty on this side (its values live in the child): test for None, not for falsiness
        session = (calibration_cache if calibration_cache is not None else CalibrationCache()).session
        name, duet = _served(backend)
        value, peak = self._request(name, {"kind": "measure_op", "spec": spec, "batch": batch,
                                           "dtype": dtype, "threads": threads, "params": params.model_dump(),
                                           "calibration_session": session, "duet": duet},
                                    f"op {spec}", should_stop=should_stop)
        return dataclasses.replace(value, peak_rss_bytes=peak)

    def measure_network_round(self, arch: Architecture, backend: Backend, batch: int, dtype: str, threads: int,
                              params: ProtocolParams | None = None,
                              should_stop: StopCheck | None = None) -> RoundMeasurement:
        """One round of a whole network, measured in the backend's measuring process (see measure_network_round)."""
        params = params or ProtocolParams()
        name, duet = _served(backend)
        value, peak = self._request(name, {"kind": "measure_network", "arch": arch,
                                           "batch": batch, "dtype": dtype, "threads": threads,
                                           "params": params.model_dump(), "duet": duet},
                                    f"the network of {len(arch.blocks)} blocks", network=True,
                                    should_stop=should_stop)
        return dataclasses.replace(value, peak_rss_bytes=peak)

    def start_regime_duet(self, backend: Backend, threads: int, params: ProtocolParams,
                          **_: Any) -> DuetStart:
        """The duet of ``params`` started in the backend's measuring process (see start_regime_duet); its
        ``duet`` is a :class:`RemoteDuet`."""
        name, _duet = _served(backend)
        key = hashlib.sha256(f"{name}|{threads}|{params.model_dump_json()}".encode()).hexdigest()[:16]
        value, _peak = self._request(name, {"kind": "start_duet", "threads": threads, "params": params.model_dump(),
                                            "key": key}, f"the duet reference {params.duet_reference}")
        duet = RemoteDuet(self, name, key, value["label"], value["baseline_ms"], value["regime_ratio"])
        return DuetStart(duet, tuple(value["series_ms"]), value["regime_ratio"])  # type: ignore[arg-type]

    def close_duet(self, duet: RemoteDuet) -> None:
        """Drop ``duet`` in its child, if that child runs (a failure to reach it changes nothing)."""
        process = self.process(duet.backend)
        if process.pid is None:
            return
        try:
            self._request(duet.backend, {"kind": "close_duet", "key": duet.key}, "closing a duet")
        except Exception:  # the child is gone, or busy dying: its duets went with it
            pass

    def close(self) -> None:
        """Stop every measuring process."""
        with self._lock:
            processes, self._processes = list(self._processes.values()), {}
        for process in processes:
            process.close()


def _served(backend: Backend) -> tuple[str, dict[str, Any] | None]:
    """The backend name a child measures on and the duet it measures in (None: none). A child builds the backend
    from its name, so only a backend with the registry's options can be measured there."""
    duet = None
    if isinstance(backend, DuetBackend):
        if not isinstance(backend.duet, RemoteDuet):
            raise TypeError("a duet started in the service process cannot time blocks in a measuring process")
        duet = {"key": backend.duet.key, "shared_baseline_ms": backend.duet.shared_baseline_ms}
        backend = backend.inner
    if backend.options != get_backend(backend.name).options:
        raise ValueError(f"backend {backend.name!r} with options {backend.options} cannot be measured in a "
                         "measuring process, which builds the backend from its name (default options)")
    return backend.name, duet
