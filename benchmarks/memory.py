"""Peak memory of one search step: the compact derived network vs the ProxylessNAS modes vs the DARTS mixture.

Cases (same space, batch and input; every supernet case runs the same heaviest path, the largest kernel and
expand ratio in every cell, so the comparison is like for like):

    compact       training step of the derived network (forward, label-smoothed CE, backward, SGD step)
    two_weight    ProxylessNAS weight step: one sampled path, alphas frozen
    two_arch      ProxylessNAS architecture step, ``two`` mode: the active path + one stored inactive output
    full          architecture step, ``full`` mode: the active path + N-1 stored inactive outputs
    full_v2       architecture step, ``full_v2``: the active path only; the others recomputed in backward
    darts         DARTS architecture step: the softmax mixture of all N paths, every path's graph in memory
    darts_weight  DARTS weight step through the mixture

The steps are the search code's own (``weight_step.weight_step``, ``gradients.gradient_arch_step``,
``train.train_step``); the heaviest path is made the sampled one by setting its alpha to 20 (the runner-up's,
the second path of ``two``, to 10), which fixes the paths without touching the sampling code.

How memory is measured (each case in a FRESH subprocess, one warm-up step first so that lazy initialisation,
oneDNN primitives and optimizer state exist, then the measured step):

- CPU: torch has no CPU peak-allocation counter and tracemalloc does not see its allocator, so the child reads
  the kernel's peak resident set size. It resets the high-water mark (``/proc/self/clear_refs`` = 5) right before
  the step and reports ``VmHWM - VmRSS(before)``: the memory the step added at its peak (activations,
  gradients, temporaries). glibc is told to serve allocations of 64 KiB and more with mmap and to return freed
  memory at once (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``), so memory freed by the warm-up step
  cannot hide the measured step's allocations.
- CUDA (when present): ``torch.cuda.max_memory_allocated() - memory_allocated()`` around the step, after
  ``reset_peak_memory_stats``.

Writes ``memory_<device>.json`` and ``.md`` to ``--out-dir`` (runs/benchmarks by default); the last printed line is
``memory device=D compact_mb=X two_mb=X full_mb=X darts_mb=X two_ratio=X darts_ratio=X`` where two_mb is the
``two`` architecture step and the ratios are over the compact training step.

Example: ``.venv/bin/python -m benchmarks.memory --space proxyless-mobile --resolution 128 --batch 16``
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import OUT_DIR, child_env, cpu_model, status_kib
from nas_ops.network import build_network  # noqa: E402
from nas_ops.space import SearchSpace, load_space  # noqa: E402
from search_client.nas.gradients import gradient_arch_step  # noqa: E402
from search_client.nas.losses import LatencyLoss  # noqa: E402
from search_client.nas.weight_step import weight_step  # noqa: E402
from search_client.nas.supernet import Supernet  # noqa: E402
from search_client.training.train import train_step  # noqa: E402

CASES = ("compact", "two_weight", "two_arch", "full", "full_v2", "darts", "darts_weight")
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0", "MALLOC_ARENA_MAX": "1"}
MIB = 2**20


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--space", default="proxyless-mobile", help="search space: preset name or space file")
    parser.add_argument("--resolution", type=int, default=128, help="square input size (0: the space's own)")
    parser.add_argument("--batch", type=int, default=16, help="batch size of every step")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: the CPU, and CUDA too when present")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of the CPU runs")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of " + ", ".join(CASES))
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR, help="where the reports are written")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: run one case, print JSON
    args = parser.parse_args(argv)
    if args.batch < 1 or args.threads < 1 or args.resolution < 0:
        parser.error("--batch and --threads must be >= 1, --resolution >= 0")
    cases = [c for c in args.cases.split(",") if c]
    unknown = [c for c in cases if c not in CASES]
    if unknown or not cases:
        parser.error(f"--cases: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(CASES)}")
    args.cases = cases
    return args


def _space(args: argparse.Namespace) -> SearchSpace:
    space = load_space(args.space)
    return space.with_resolution(args.resolution, args.resolution) if args.resolution else space


def _heaviest(space: SearchSpace) -> tuple[int, int]:
    """Indices of the heaviest and the runner-up MBConv candidate (by kernel, then expand ratio)."""
    order = sorted(range(len(space.candidates)),
                   key=lambda i: (space.candidates[i].kernel, space.candidates[i].exp_ratio), reverse=True)
    return order[0], order[1] if len(order) > 1 else order[0]


def build_step(case: str, space: SearchSpace, batch: int, device: torch.device) -> Callable[[], Any]:
    """The step of ``case`` as a closure over its model, optimizer and one random batch."""
    torch.manual_seed(0)
    x = torch.randn(batch, space.in_chs, *space.input_size, device=device)
    y = torch.randint(0, space.num_classes, (batch,), device=device)
    heavy, second = _heaviest(space)
    if case == "compact":
        net = build_network(space.architecture([heavy] * len(space.cells()))).to(device)
        sgd = torch.optim.SGD(net.parameters(), lr=0.025, momentum=0.9, nesterov=True, weight_decay=4e-5)
        return lambda: train_step(net, (x, y), sgd, label_smoothing=0.1)
    supernet = Supernet(space).to(device)
    with torch.no_grad():
        for cell in supernet.cells:
            cell.alpha.zero_()
            cell.alpha[heavy], cell.alpha[second] = 20.0, 10.0
    gen = torch.Generator().manual_seed(0)
    if case in ("two_weight", "darts_weight"):
        sgd = torch.optim.SGD(supernet.weight_parameters(), lr=0.025, momentum=0.9, nesterov=True,
                              weight_decay=4e-5)
        mode = "darts" if case == "darts_weight" else "two"
        return lambda: weight_step(supernet, (x, y), sgd, mode=mode, label_smoothing=0.1, generator=gen)
    adam = torch.optim.Adam(supernet.arch_parameters(), lr=1e-3, betas=(0.0, 0.999), eps=1e-8)
    mode = {"two_arch": "two", "full": "full", "full_v2": "full_v2", "darts": "darts"}[case]
    return lambda: gradient_arch_step(supernet, (x, y), mode=mode, objective=None, loss_fn=LatencyLoss("add#linear"),
                                      optimizer=adam, generator=gen)


def run_child(args: argparse.Namespace) -> dict[str, Any]:
    """Measure one case in this (fresh) process."""
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    space = _space(args)
    step = build_step(args.child, space, args.batch, device)
    step()  # warm-up: lazy initialisation and optimizer state
    if device.type == "cuda":
        torch.cuda.synchronize()
        gc.collect()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        start = time.perf_counter()
        step()
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated()
    else:
        gc.collect()
        base = status_kib("VmRSS") * 1024
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        start = time.perf_counter()
        step()
        seconds = time.perf_counter() - start
        peak = status_kib("VmHWM") * 1024
    return {"case": args.child, "device": device.type, "step_mb": (peak - base) / MIB, "base_mb": base / MIB,
            "peak_mb": peak / MIB, "seconds": seconds}


def measure(case: str, device: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run one case in a fresh subprocess and return its JSON result."""
    cmd = [sys.executable, "-m", "benchmarks.memory", "--child", case, "--device", device,
           "--space", args.space, "--resolution", str(args.resolution), "--batch", str(args.batch),
           "--threads", str(args.threads)]
    env = child_env(**MALLOC_ENV)
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"case {case} on {device} failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def summary_line(device: str, by_case: dict[str, dict[str, Any]]) -> str:
    """The last printed line; a case that was not run is ``nan``."""
    def mb(case: str) -> float:
        return by_case[case]["step_mb"] if case in by_case else float("nan")

    compact = mb("compact")
    return (f"memory device={device} compact_mb={compact:.1f} two_mb={mb('two_arch'):.1f} full_mb={mb('full'):.1f} "
            f"darts_mb={mb('darts'):.1f} two_ratio={mb('two_arch') / compact:.2f} "
            f"darts_ratio={mb('darts') / compact:.2f}")


def write_reports(device: str, results: list[dict[str, Any]], args: argparse.Namespace) -> Path:
    by_case = {r["case"]: r for r in results}
    compact = by_case.get("compact", {}).get("step_mb")
    for r in results:
        r["ratio_to_compact"] = r["step_mb"] / compact if compact else None
    space = _space(args)
    doc = {
        "device": device, "space": space.name, "resolution": list(space.input_size), "batch": args.batch,
        "threads": args.threads, "candidates": len(space.candidates) + int(space.allow_zero),
        "cells": len(space.cells()), "torch": torch.__version__, "platform": platform.platform(),
        "cpu": cpu_model(),
        "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
        "method": "peak RSS over the pre-step RSS in a fresh process" if device == "cpu"
                  else "torch.cuda.max_memory_allocated over memory_allocated",
        "results": results, "summary": summary_line(device, by_case),
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = args.out_dir / f"memory_{device}.json"
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    lines = [f"# Search-step memory on {device} ({doc['gpu'] or doc['cpu']})", "",
             f"Space {space.name} at {space.input_size[0]}x{space.input_size[1]}, batch {args.batch}, "
             f"{doc['cells']} cells, the heaviest path active; {doc['method']}.", "",
             "| case | step MiB | x compact | step s |", "| --- | ---: | ---: | ---: |"]
    for r in results:
        ratio = f"{r['ratio_to_compact']:.2f}" if r["ratio_to_compact"] is not None else "-"
        lines.append(f"| {r['case']} | {r['step_mb']:.1f} | {ratio} | {r['seconds']:.2f} |")
    lines += ["", f"`{doc['summary']}`", ""]
    (args.out_dir / f"memory_{device}.md").write_text("\n".join(lines), encoding="utf-8")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        print(json.dumps(run_child(args)))
        return 0
    devices = ["cpu"] if args.device in ("auto", "cpu") else []
    if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            print("error: --device cuda: no CUDA device", file=sys.stderr)
            return 2
        devices.append("cuda")
    lines = []
    for device in devices:
        results = []
        for case in args.cases:
            result = measure(case, device, args)
            print(f"{device} {case:13s} step {result['step_mb']:8.1f} MiB  ({result['seconds']:.2f} s)", flush=True)
            results.append(result)
        print(f"report: {write_reports(device, results, args)}")
        lines.append(summary_line(device, {r["case"]: r for r in results}))
    for line in lines:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
