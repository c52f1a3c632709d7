"""Do the memory limits mean what they say? The six requests of the isolation issue's table, against a real
profiler, and each op measured under the limit even when the request checks would refuse it.

1. **Service** (``serve`` as the README starts it, every setting at its default: ``max_op_memory_mib`` 2048,
   measuring in a measuring process): each spec is sent as ``POST /v1/measure`` at its batch. Reported: the HTTP
   status and what the answer says (a 422 names the bound and the limit), for an accepted one the item's outcome and
   its row's ``peak_rss_bytes``, and the service process's own peak resident memory (VmHWM) after all of them.
2. **Direct** (``--direct``, on by default): each spec measured by an
   :class:`~profiler_service.isolation.measurer.IsolatedMeasurer` with the same limit, bypassing the request
   checks: what a bound that let it through would have cost. Reported: the outcome (measured, or refused at the
   limit by the runtime or by the service ending the process) and the measuring process's peak against the limit.

The report (markdown and JSON in ``--out-dir``) has one row per spec and phase; the last line is
``memory_limits accepted=A refused=R peak_over_limit=K`` (K must be 0: no process ever held more than the limit).
Exit status 0 when K is 0, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import OUT_DIR, cpu_model, loadavg

MIB = 1 << 20
#: (op spec, batch): the requests of the issue's table.
SPECS: list[tuple[str, int]] = [
    ("conv_r512x512_c3-512_k3_s1_relu6", 1),
    ("zero_r512x512_c1024-1024_s1", 1),
    ("mix_r512x512_c1984-8_relu6", 1),
    ("head_r512x512_c2040-1000", 1),
    ("identity_r512x512_c2048-2048", 1),
    ("identity_r256x256_c2048-2048", 4),
]
LIMIT_MIB = 2048


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory_limits", description=__doc__.split("\n")[0])
    parser.add_argument("--no-direct", dest="direct", action="store_false",
                        help="skip measuring each op under the limit past the request checks")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR, help="where the reports are written")
    return parser.parse_args(argv)


def service_phase(workdir: Path) -> tuple[list[dict[str, Any]], int | None]:
    """Every spec sent to a real profiler with default settings; its rows and the service's own peak (bytes)."""
    from profiler_service.isolation.memory import peak_rss_bytes
    from search_client.device.local_profiler import LocalProfiler

    rows = []
    with LocalProfiler(f"sqlite:///{workdir / 'memory.db'}", workdir / "serve.log",
                       env={"PROFILER_CANARY_INTERVAL_S": "0"}) as profiler:
        for spec, batch in SPECS:
            answer = httpx.post(f"{profiler.url}/v1/measure", json={"backend": "ort-cpu", "ops": [spec],
                                                                    "batch": batch}, timeout=60)
            row: dict[str, Any] = {"phase": "service", "spec": spec, "batch": batch, "status": answer.status_code}
            if answer.status_code != 202:
                row.update(outcome="refused", detail=answer.json().get("detail"))
            else:
                row.update(wait_job(profiler.url, answer.json()["id"]))
            rows.append(row)
            print(f"service {spec} batch {batch}: {row['status']} {row['outcome']}", flush=True)
        service_peak = peak_rss_bytes(profiler.process.pid)
    return rows, service_peak


def wait_job(url: str, job_id: int) -> dict[str, Any]:
    """The outcome of an accepted job's only item."""
    while True:
        job = httpx.get(f"{url}/v1/jobs/{job_id}", timeout=10).json()
        if job["status"] not in ("queued", "running"):
            break
        time.sleep(0.5)
    outcome = {"outcome": job["status"], "detail": job.get("error")}
    rows = httpx.post(f"{url}/v1/lookup", json={"backend": "ort-cpu", "ops": job["ops"]}, timeout=10).json()
    found = rows.get("found") or {}
    for entry in found.values():
        outcome["peak_mib"] = None if entry.get("peak_rss_bytes") is None else entry["peak_rss_bytes"] / MIB
    return outcome


def direct_phase() -> list[dict[str, Any]]:
    """Every spec measured under the limit in a measuring process, past the request checks."""
    from nas_ops.spec import parse_spec
    from profiler_service.engine.backends import get_backend
    from profiler_service.engine.protocol import ProtocolParams
    from profiler_service.isolation.errors import IsolationError
    from profiler_service.isolation.footprint import op_peak_bytes
    from profiler_service.isolation.measurer import IsolatedMeasurer

    rows = []
    measurer = IsolatedMeasurer(op_memory_bytes=LIMIT_MIB * MIB, network_memory_bytes=LIMIT_MIB * MIB,
                                time_limit_s=600)
    try:
        for spec, batch in SPECS:
            parsed = parse_spec(spec)
            row: dict[str, Any] = {"phase": "direct", "spec": spec, "batch": batch,
                                   "bound_mib": op_peak_bytes(parsed, batch, "float32") / MIB}
            started = time.perf_counter()
            try:
                measured = measurer.measure_op_round(parsed, get_backend("ort-cpu"), batch, "float32", 1,
                                                     ProtocolParams.fast())
                row.update(outcome="measured", peak_mib=measured.peak_rss_bytes / MIB)
            except IsolationError as exc:
                peak = exc.peak_rss_bytes
                row.update(outcome="refused at the limit", detail=str(exc)[:300],
                           peak_mib=None if peak is None else peak / MIB)
            row["seconds"] = round(time.perf_counter() - started, 1)
            rows.append(row)
            print(f"direct {spec} batch {batch}: {row['outcome']} peak {row.get('peak_mib')} MiB "
                  f"({row['seconds']} s)", flush=True)
    finally:
        measurer.close()
    return rows


def markdown(report: dict[str, Any]) -> str:
    lines = ["# Memory limits: the isolation issue's requests", "", f"- Date: {report['date']}",
             f"- Command: `{report['command']}`", f"- Machine: {report['machine']}", f"- Load: {report['load']}",
             f"- Limit: max_op_memory_mib {LIMIT_MIB} (the default); the service's own peak resident memory after "
             f"every request: {report['service_peak_mib']:.0f} MiB", "",
             "| phase | op | batch | answer | outcome | peak MiB | bound MiB | detail |",
             "|---|---|---:|---:|---|---:|---:|---|"]
    for row in report["rows"]:
        peak = "-" if row.get("peak_mib") is None else f"{row['peak_mib']:.0f}"
        bound = "-" if row.get("bound_mib") is None else f"{row['bound_mib']:.0f}"
        detail = (row.get("detail") or "").replace("|", "/")
        lines.append(f"| {row['phase']} | `{row['spec']}` | {row['batch']} | {row.get('status', '-')} | "
                     f"{row['outcome']} | {peak} | {bound} | {detail} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    load = loadavg()
    with tempfile.TemporaryDirectory() as tmp:
        rows, service_peak = service_phase(Path(tmp))
    if args.direct:
        rows += direct_phase()
    over = [row for row in rows if row.get("peak_mib") is not None and row["peak_mib"] > LIMIT_MIB]
    report = {"date": date.today().isoformat(), "machine": cpu_model(), "load": f"load average at the start {load}",
              "command": "python -m benchmarks.memory_limits " + " ".join(sys.argv[1:] if argv is None else argv),
              "service_peak_mib": (service_peak or 0) / MIB, "rows": rows}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "memory_limits.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out_dir / "memory_limits.md").write_text(markdown(report))
    accepted = sum(row.get("status") == 202 for row in rows)
    refused = sum(row["outcome"].startswith("refused") for row in rows)
    print(f"reports: {args.out_dir / 'memory_limits.md'}")
    print(f"memory_limits accepted={accepted} refused={refused} peak_over_limit={len(over)}")
    return 0 if not over else 1


if __name__ == "__main__":
    raise SystemExit(main())
