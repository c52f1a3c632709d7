"""The README's quick start as a user runs it: does `verify` agree with the table, and how long does `lut` take?

On a fresh profiler (started as the README starts it: SQLite, ``--backends ort-cpu --threads 1``, every other
setting at its default), through the real command line:

1. ``lut`` for tiny-32 and micro-16 while another process keeps one core busy (``--load``, on by default: a user's
   machine is rarely idle while a table is built);
2. the README's ``search`` on tiny-32 with its derived target (the middle of the table's range), quiet;
3. ``verify`` of the searched network and of ``--networks`` random networks of each space (one random candidate
   per cell), quiet, each against its table: the relative error of the table's prediction;
4. with ``--lut-space`` (default proxyless-mobile): ``lut`` of that space on a second fresh profiler, quiet, timed
   (the table a user builds for a real-size space).

It prints every figure and writes ``readme_path.json`` and ``.md`` to ``--out-dir`` (runs/benchmarks): the
machine (CPU model, cores, per-core cache), the load before each phase, each ``lut``'s wall time and each
``verify``'s error. The last line is ``readme_path verify_within10=N/M worst=E% lut_s=S`` (S: the ``--lut-space``
table). Exit code 0 when every network is within +-10% and the ``--lut-space`` table took at most ``--lut-limit-s``
(120 s), else 1; 2 when the run could not be set up.

Example: ``.venv/bin/python -m benchmarks.readme_path`` (about 10 minutes on a 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks.common import OUT_DIR, cpu_model, loadavg
from nas_ops.space import load_space
from profiler_service.engine.cache_regime import read_core_cache

BIN = Path(sys.executable).parent
VERIFY_TARGET = 0.10


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (``--help`` lists it)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--spaces", default="tiny-32,micro-16", help="spaces whose tables are built and verified")
    parser.add_argument("--networks", type=int, default=6, help="random networks verified per space")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random networks")
    parser.add_argument("--epochs", type=int, default=10, help="epochs of the README's search (its own value: 10)")
    parser.add_argument("--no-load", dest="load", action="store_false", help="build the tables on a quiet machine")
    parser.add_argument("--lut-space", default="proxyless-mobile", help="space of the timed table ('' skips it)")
    parser.add_argument("--lut-limit-s", type=float, default=120.0, help="the timed table's target")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR, help="where the reports are written")
    return parser.parse_args(argv)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _busy(core: int) -> None:  # pragma: no cover - runs in a child process
    os.sched_setaffinity(0, {core})
    while True:
        pass


@contextmanager
def busy_core(enabled: bool) -> Iterator[int | None]:
    """A process spinning on core 0 while the block runs (None: not enabled, or a single core)."""
    cores = sorted(os.sched_getaffinity(0))
    if not enabled or len(cores) < 2:
        yield None
        return
    process = multiprocessing.get_context("spawn").Process(target=_busy, args=(cores[0],), daemon=True)
    process.start()
    try:
        yield cores[0]
    finally:
        process.kill()
        process.join()


@contextmanager
def profiler(work: Path, name: str) -> Iterator[str]:
    """A profiler started as the README starts it, on a free port and a fresh database; its URL."""
    port = _free_port()
    log = (work / f"{name}.log").open("w")
    process = subprocess.Popen([str(BIN / "proxyless-profiler"), "serve", "--db", f"sqlite:///{work / name}.db",
                                "--backends", "ort-cpu", "--threads", "1", "--port", str(port)],
                               stdout=log, stderr=subprocess.STDOUT, cwd=work)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the profiler did not start: see {log.name}") from None
                time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=60)
        log.close()


def run(command: list[str], work: Path) -> tuple[str, float]:
    """Run a command of the README in ``work``; (its stdout, wall seconds). RuntimeError with its output if it
    fails."""
    started = time.perf_counter()
    done = subprocess.run(command, cwd=work, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return done.stdout + done.stderr, seconds


def lut(url: str, space: str, work: Path) -> dict[str, Any]:
    """The README's lut for ``space``: its wall time and the range it printed."""
    out, seconds = run([str(BIN / "proxyless-search"), "lut", "--space", space, "--device", url, "--backend",
                        "ort-cpu", "--out", f"{space}.lut.json"], work)
    match = re.search(r"latency: fixed ([\d.]+) ms, min ([\d.]+) ms, max ([\d.]+) ms", out)
    if match is None:
        raise RuntimeError(f"lut printed no latency line:\n{out[-2000:]}")
    fixed, low, high = map(float, match.groups())
    print(f"lut {space}: {seconds:.1f} s, fixed {fixed:.4f} ms, min {low:.4f} ms, max {high:.4f} ms", flush=True)
    return {"space": space, "seconds": seconds, "fixed_ms": fixed, "min_ms": low, "max_ms": high,
            "table": str(work / f"{space}.lut.json"), "output": out[-3000:]}


def verify(url: str, arch: Path, table: str, work: Path) -> dict[str, Any]:
    """The README's verify of one network against its table: predicted, measured, relative error."""
    out, seconds = run([str(BIN / "proxyless-search"), "verify", str(arch), "--device", url, "--table", table], work)
    # its last stdout line is JSON; warnings (drift, regimes) go to stderr, after it in ``out``
    result = json.loads(next(line for line in reversed(out.splitlines()) if line.startswith("{")))
    regime = re.search(r"^regime (\S+)", out, re.M)
    return {"arch": arch.name, "seconds": seconds, "regime": regime.group(1) if regime else None, **result,
            "notes": [line for line in out.splitlines() if "across regimes" in line or "drift" in line]}


def random_networks(space_name: str, count: int, seed: int, work: Path) -> list[Path]:
    """``count`` random architectures of the space (one random candidate per cell), saved in ``work``."""
    space = load_space(space_name)
    rng = random.Random(f"readme_path:{space_name}:{seed}")
    paths = []
    for i in range(count):
        path = work / f"{space_name}_random{i}.json"
        space.architecture(space.random_choices(rng)).save(path)
        paths.append(path)
    return paths


def machine() -> dict[str, Any]:
    cache = read_core_cache()
    return {"cpu": cpu_model(), "cores": os.cpu_count(),
            "core_cache_kib": None if cache.size_bytes is None else cache.size_bytes // 1024,
            "cache_source": cache.source}


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = ["# README path: lut and verify as a user runs them", "",
             f"- Date: {report['date']}", f"- Command: `{report['command']}`",
             f"- Machine: {m['cpu']}, {m['cores']} cores, per-core cache {m['core_cache_kib']} KiB",
             f"- Load: one core kept busy while the small tables were built: {report['load_during_lut']}; load "
             f"average before each phase {report['loadavg']}", "",
             "| table | lut s | min ms | max ms |", "|---|---:|---:|---:|"]
    lines += [f"| {t['space']} | {t['seconds']:.1f} | {t['min_ms']:.4f} | {t['max_ms']:.4f} |" for t in report["luts"]]
    lines += ["", "| network | regime | predicted ms | measured ms | error |", "|---|---|---:|---:|---:|"]
    lines += [f"| {v['arch']} | {v['regime']} | {v['predicted_ms']:.4f} | {v['measured_ms']:.4f} | "
              f"{100 * v['relative_error']:+.2f}% |" for v in report["verifies"]]
    lines += ["", f"`{report['summary']}`", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    spaces = [s for s in args.spaces.split(",") if s]
    if args.networks < 0 or not spaces or "tiny-32" not in spaces:
        print("readme_path: --spaces must include tiny-32 (the README's search) and --networks be >= 0",
              file=sys.stderr)
        return 2
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "machine": machine(),
                              "command": "python -m benchmarks.readme_path " + " ".join(argv or sys.argv[1:]),
                              "luts": [], "verifies": [], "loadavg": {}}
    work = Path(tempfile.mkdtemp(prefix="readme_path_"))
    try:
        with profiler(work, "latency") as url:
            report["loadavg"]["lut"] = loadavg()
            with busy_core(args.load) as core:
                report["load_during_lut"] = "none" if core is None else f"a spinning process on core {core}"
                for space in spaces:
                    report["luts"].append(lut(url, space, work))
            tiny = next(t for t in report["luts"] if t["space"] == "tiny-32")
            target = (tiny["min_ms"] + tiny["max_ms"]) / 2  # the README's T: the middle of lut's range
            report["loadavg"]["search"] = loadavg()
            run([str(BIN / "proxyless-search"), "search", "--table", tiny["table"], "--target-ms", f"{target:g}",
                 "--data", "digits", "--epochs", str(args.epochs), "--warmup-epochs", "2", "--adaptive",
                 "--out", "runs/tiny", "--no-progress"], work)
            report["loadavg"]["verify"] = loadavg()
            checks = [(work / "runs" / "tiny" / "arch.json", tiny["table"])]
            for table in report["luts"]:
                checks += [(path, table["table"]) for path in random_networks(table["space"], args.networks,
                                                                              args.seed, work)]
            for arch, table in checks:
                result = verify(url, arch, table, work)
                print(f"verify {result['arch']}: {100 * result['relative_error']:+.2f}% ({result['regime']})",
                      flush=True)
                report["verifies"].append(result)
        lut_seconds = float("nan")
        if args.lut_space:
            with profiler(work, "timed") as url:
                report["loadavg"]["timed_lut"] = loadavg()
                timed = lut(url, args.lut_space, work)
                timed["timed"] = True
                report["luts"].append(timed)
                lut_seconds = timed["seconds"]
    except RuntimeError as exc:
        print(f"readme_path: {exc}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(work, ignore_errors=True)
    errors = [v["relative_error"] for v in report["verifies"]]
    within = sum(abs(e) <= VERIFY_TARGET for e in errors)
    worst = max(errors, key=abs)
    report["summary"] = (f"readme_path verify_within10={within}/{len(errors)} worst={100 * worst:+.1f}% "
                         f"lut_s={lut_seconds:.1f}")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "readme_path.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (args.out_dir / "readme_path.md").write_text(markdown(report), encoding="utf-8")
    print(f"reports: {args.out_dir / 'readme_path'}.{{json,md}}")
    print(report["summary"])
    timed_ok = not args.lut_space or lut_seconds <= args.lut_limit_s
    return 0 if within == len(errors) and timed_ok else 1


if __name__ == "__main__":
    sys.exit(main())
