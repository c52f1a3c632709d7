"""Data pipeline from disk: loader throughput at 0 and N workers, and peak memory of a search epoch vs folder size.

What it does:

1. Generates JPEG folders in the ImageNet layout (``train/CLASS/*.jpg``, 10 classes) of ``--sizes`` images
   (default 1,000 and 20,000) at ``--image-size`` (256x256) in a temporary directory. Generation is fast: a few
   distinct images (smooth random colour fields plus noise, so a JPEG is a realistic 10-30 KB) are encoded once
   and their bytes written many times; every file is a real file (the page cache holds them after writing, so
   reads cost no disk time: the figures are decode + augmentation + transfer).
2. Throughput: for each ``--workers`` count, in a fresh subprocess, ``open_search_data`` on the largest folder
   at ``--input-size`` (224) and batch ``--batch``; the train stream (random-resized crop, flip, normalise) is
   read for ``--throughput-batches`` batches after one warm-up batch (worker start-up excluded): images/s, and
   the CPU time it got (the main process's over the timed batches, the workers' over their whole lives, read
   from getrusage once they are reaped): ``cores_obtained`` = CPU seconds / wall seconds says how much of the
   machine the run had, which decides whether more workers can help.
3. Peak memory of a search epoch: for each folder, in a fresh subprocess, ``open_search_data`` (valid split: 5 per
   class held out) with ``--epoch-workers`` workers, then one whole epoch as the search reads it: every train
   batch (train transform) and one valid batch (eval transform) every 5 train batches, as the architecture
   steps do. No model step runs (the model's memory does not depend on the folder's size; a supernet step at 224
   costs seconds per batch on this machine's 2 cores): this measures the data pipeline's own memory. Reported:
   the main process's peak RSS (VmHWM), the largest worker's peak RSS (getrusage of the reaped children), and
   the peak PSS of the process tree (main + workers, sampled every 0.2 s from /proc/PID/smaps_rollup; PSS
   splits shared pages between processes, so the sum is not inflated by the shared torch libraries).

Targets (the last line): the largest folder's main-process peak RSS within 1.2x the smallest's; N workers at
least 1.6x the images/s of 0 workers. On a machine with 2 cores shared with other jobs (the load average and
whether the scheduler's autogroup is on are recorded), 2 workers compete with the neighbours for those 2 cores;
with autogroup, the kernel shares CPU time between sessions, not processes, so extra worker processes do not
get this run a larger share of a loaded machine.

Writes ``data_pipeline.json`` and ``.md`` (``data_pipeline_quick.*`` with ``--quick``) to ``--out-dir``.

Example: ``.venv/bin/python -m benchmarks.data_pipeline`` (``--quick``: 120 and 400 images at 64x64, input 56)
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.common import OUT_DIR, child_env, cpu_model, status_kib


CLASSES = 10
DISTINCT_IMAGES = 32
ARCH_EVERY = 5
VALID_PER_CLASS = 5
RSS_TARGET = 1.2
SPEEDUP_TARGET = 1.6
MIB = 2**20
QUICK = {"sizes": "120,400", "image_size": 64, "input_size": 56, "batch": 16, "throughput_batches": 6}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="small run for smoke tests: " + ", ".join(f"{k}={v}" for k, v in QUICK.items()))
    parser.add_argument("--sizes", default="1000,20000", help="comma-separated image counts of the folders")
    parser.add_argument("--image-size", type=int, default=256, help="side of the generated square JPEGs")
    parser.add_argument("--input-size", type=int, default=224, help="the network's input side")
    parser.add_argument("--batch", type=int, default=64, help="batch size")
    parser.add_argument("--workers", default="0,2", help="comma-separated worker counts of the throughput runs")
    parser.add_argument("--epoch-workers", type=int, default=2, help="workers of the search-epoch memory runs")
    parser.add_argument("--throughput-batches", type=int, default=40, help="batches timed per throughput run")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR, help="where the reports are written")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: "throughput" or "epoch"
    parser.add_argument("--folder", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-workers", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    try:
        args.sizes = [int(s) for s in str(args.sizes).split(",") if s]
        args.workers = [int(w) for w in str(args.workers).split(",") if w]
    except ValueError:
        parser.error("--sizes and --workers: comma-separated integers")
    if not args.sizes or min(args.sizes) < 2 * CLASSES * VALID_PER_CLASS:
        parser.error(f"--sizes: each folder needs at least {2 * CLASSES * VALID_PER_CLASS} images "
                     f"({CLASSES} classes, {VALID_PER_CLASS} per class held out)")
    if not args.workers or min(args.workers) < 0 or args.epoch_workers < 0:
        parser.error("--workers and --epoch-workers: integers >= 0")
    if min(args.image_size, args.input_size, args.batch, args.throughput_batches) < 1:
        parser.error("--image-size, --input-size, --batch and --throughput-batches must be >= 1")
    return args


# --- folders ---------------------------------------------------------------------------------------------------
def _distinct_jpegs(side: int, count: int, seed: int = 0) -> list[bytes]:
    """``count`` JPEG encodings of smooth random colour fields with noise (quality 90)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((side, side),
                                                                                          Image.Resampling.BICUBIC)
        pixels = np.asarray(coarse, dtype=np.int16) + rng.integers(-24, 25, (side, side, 3))
        buffer = io.BytesIO()
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def make_folder(root: Path, images: int, side: int) -> dict[str, Any]:
    """An ImageNet-layout folder of ``images`` JPEGs (``CLASSES`` classes, round robin); returns its figures."""
    start = time.perf_counter()
    jpegs = _distinct_jpegs(side, DISTINCT_IMAGES)
    for k in range(CLASSES):
        (root / "train" / f"class{k:02d}").mkdir(parents=True, exist_ok=True)
    total = 0
    for i in range(images):
        data = jpegs[i % len(jpegs)]
        (root / "train" / f"class{i % CLASSES:02d}" / f"img{i:06d}.jpg").write_bytes(data)
        total += len(data)
    return {"images": images, "image_size": side, "bytes": total, "seconds": time.perf_counter() - start}


# --- children --------------------------------------------------------------------------------------------------
def _open(args: argparse.Namespace, workers: int) -> Any:
    """The search data of the folder, as a search opens it, with ``workers`` loader processes."""
    from search_client.training.datasets import DataOptions, open_search_data

    options = DataOptions(str(args.folder), valid_per_class=VALID_PER_CLASS, workers=workers)
    return open_search_data(options, (args.input_size, args.input_size), 3, args.batch, seed=0)


def child_throughput(args: argparse.Namespace) -> dict[str, Any]:
    """Images/s of the train stream with ``--child-workers`` workers (after one warm-up batch)."""
    import torch

    torch.set_num_threads(1)
    data = _open(args, args.child_workers)
    stream = data.train
    batches = min(args.throughput_batches, len(stream) - 1)
    stream.next_batch()  # workers started, first batches in flight
    start = time.perf_counter()
    cpu_start = time.process_time()  # this process's CPU time only
    images = 0
    for _ in range(batches):
        x, _ = stream.next_batch()
        images += int(x.shape[0])
    seconds = time.perf_counter() - start
    main_cpu = time.process_time() - cpu_start
    data.close()  # the workers exit and are reaped: their CPU time is in RUSAGE_CHILDREN
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    workers_cpu = children.ru_utime + children.ru_stime  # the whole workers' lives (start-up and warm-up too)
    return {"workers": args.child_workers, "images": images, "seconds": seconds, "images_per_s": images / seconds,
            "main_cpu_s": main_cpu, "workers_cpu_s": workers_cpu,
            "cores_obtained": (main_cpu + workers_cpu) / seconds}


def _pss_kib(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    match = re.search(r"^Pss:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) if match else 0


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


class _TreePss:
    """Samples the PSS of this process and its children every ``period`` seconds; keeps the peak."""

    def __init__(self, period: float = 0.2) -> None:
        self.period, self.peak_kib = period, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            total = _pss_kib(me) + sum(_pss_kib(c) for c in _children(me))
            self.peak_kib = max(self.peak_kib, total)
            self._stop.wait(self.period)

    def __enter__(self) -> _TreePss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def child_epoch(args: argparse.Namespace) -> dict[str, Any]:
    """One search epoch's reads (every train batch, a valid batch every ARCH_EVERY) and the peak memory."""
    import torch

    torch.set_num_threads(1)
    base_kib = status_kib("VmRSS")
    start = time.perf_counter()
    with _TreePss() as tree:
        data = _open(args, args.child_workers)
        opened_kib = status_kib("VmRSS")
        train_batches = valid_batches = 0
        checksum = 0.0
        for x, _ in data.train.epoch():
            checksum += float(x[:, :, ::16, ::16].sum())
            train_batches += 1
            if train_batches % ARCH_EVERY == 0:
                vx, _ = data.valid.next_batch()
                checksum += float(vx[:, :, ::16, ::16].sum())
                valid_batches += 1
        data.close()
        tree_peak_kib = tree.peak_kib
    seconds = time.perf_counter() - start
    main_peak_kib = status_kib("VmHWM")
    workers_peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
    return {"images": data.info["train_images"] + data.info["valid_images"], "workers": args.child_workers,
            "train_batches": train_batches, "valid_batches": valid_batches, "seconds": seconds,
            "base_rss_mb": base_kib / 1024, "opened_rss_mb": opened_kib / 1024,
            "main_peak_rss_mb": main_peak_kib / 1024, "worker_peak_rss_mb": workers_peak_kib / 1024,
            "tree_peak_pss_mb": tree_peak_kib / 1024, "file_list_bytes": data.train.images.files.nbytes,
            "checksum": checksum}


def _run_child(kind: str, folder: Path, workers: int, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.data_pipeline", "--child", kind, "--folder", str(folder),
           "--child-workers", str(workers), "--input-size", str(args.input_size), "--batch", str(args.batch),
           "--throughput-batches", str(args.throughput_batches), "--sizes", ",".join(map(str, args.sizes))]
    done = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} run on {folder} with {workers} workers failed (exit {done.returncode}):\n"
                           f"{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- report ----------------------------------------------------------------------------------------------------
def _autogroup() -> bool | None:
    """Whether the kernel shares CPU time fairly between sessions rather than processes (None: unknown)."""
    try:
        return Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
    except OSError:
        return None


def evaluate_targets(throughput: list[dict[str, Any]], epochs: list[dict[str, Any]]) -> dict[str, Any]:
    """The two targets' figures: RSS ratio of the largest to the smallest folder, speed-up of the most workers."""
    rss_ratio = epochs[-1]["main_peak_rss_mb"] / epochs[0]["main_peak_rss_mb"]
    pss_ratio = epochs[-1]["tree_peak_pss_mb"] / epochs[0]["tree_peak_pss_mb"]
    by_workers = {t["workers"]: t["images_per_s"] for t in throughput}
    most = max(by_workers)
    speedup = by_workers[most] / by_workers[min(by_workers)] if len(by_workers) > 1 else float("nan")
    return {"rss_ratio": rss_ratio, "rss_target": RSS_TARGET, "rss_met": rss_ratio <= RSS_TARGET,
            "tree_pss_ratio": pss_ratio, "speedup": speedup, "speedup_workers": most,
            "speedup_target": SPEEDUP_TARGET, "speedup_met": speedup >= SPEEDUP_TARGET}


def summary_line(report: dict[str, Any]) -> str:
    """The last printed line: the figures and whether each target is met."""
    t = report["targets"]
    small, large = report["epochs"][0], report["epochs"][-1]
    rates = " ".join(f"w{r['workers']}_img_s={r['images_per_s']:.1f}" for r in report["throughput"])
    return (f"data_pipeline {rates} speedup={t['speedup']:.2f} (target >= {t['speedup_target']}: "
            f"{'met' if t['speedup_met'] else 'NOT met'}) rss_{small['images']}={small['main_peak_rss_mb']:.1f}MB "
            f"rss_{large['images']}={large['main_peak_rss_mb']:.1f}MB rss_ratio={t['rss_ratio']:.3f} "
            f"(target <= {t['rss_target']}: {'met' if t['rss_met'] else 'NOT met'}) "
            f"tree_pss_ratio={t['tree_pss_ratio']:.3f} load1={report['machine']['load_after'][0]:.2f}")


def write_markdown(report: dict[str, Any], path: Path) -> None:
    m, t = report["machine"], report["targets"]
    lines = [
        f"# Data pipeline from disk ({m['cpu']}, {m['cores']} cores)", "",
        f"Generated ImageNet-layout JPEG folders at {report['image_size']}x{report['image_size']}, input "
        f"{report['input_size']}x{report['input_size']}, batch {report['batch']}. Load average before "
        f"{m['load_before'][0]:.2f}, after {m['load_after'][0]:.2f} (1 min) on {m['cores']} cores shared with "
        f"other jobs; scheduler autogroup {m['sched_autogroup']} (when true, CPU time is shared fairly between "
        "sessions, so this run's workers share one session's slice of a loaded machine).", "",
        "## Loader throughput (train stream: random-resized crop, flip, normalise)", "",
        "| workers | images | seconds | images/s | main CPU s | workers CPU s (whole life) | cores obtained |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [f"| {r['workers']} | {r['images']} | {r['seconds']:.2f} | {r['images_per_s']:.1f} | "
              f"{r['main_cpu_s']:.2f} | {r['workers_cpu_s']:.2f} | {r['cores_obtained']:.2f} |"
              for r in report["throughput"]]
    lines += [
        "", f"## Peak memory of a search epoch ({report['epochs'][0]['workers']} workers; every train batch and a "
        f"valid batch every {ARCH_EVERY}; no model step)", "",
        "| images | batches (train/valid) | seconds | RSS at start MB | main peak RSS MB | largest worker peak "
        "RSS MB | tree peak PSS MB | file list bytes |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [f"| {e['images']} | {e['train_batches']}/{e['valid_batches']} | {e['seconds']:.1f} | "
              f"{e['base_rss_mb']:.1f} | {e['main_peak_rss_mb']:.1f} | {e['worker_peak_rss_mb']:.1f} | "
              f"{e['tree_peak_pss_mb']:.1f} | {e['file_list_bytes']} |" for e in report["epochs"]]
    lines += [
        "", "## Targets", "",
        f"- peak RSS of the {report['epochs'][-1]['images']}-image epoch / the {report['epochs'][0]['images']}-image "
        f"one: {t['rss_ratio']:.3f} (target <= {t['rss_target']}: {'met' if t['rss_met'] else 'NOT met'}); "
        f"process tree PSS ratio {t['tree_pss_ratio']:.3f}",
        f"- images/s with {t['speedup_workers']} workers / 0 workers: {t['speedup']:.2f} "
        f"(target >= {t['speedup_target']}: {'met' if t['speedup_met'] else 'NOT met'})", "",
        f"`{summary_line(report)}`", "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child == "throughput":
        print(json.dumps(child_throughput(args)))
        return 0
    if args.child == "epoch":
        print(json.dumps(child_epoch(args)))
        return 0
    load_before = list(os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="data_pipeline_") as tmp:
        folders, generated = [], []
        for size in sorted(args.sizes):
            folder = Path(tmp) / f"images_{size}"
            generated.append(make_folder(folder, size, args.image_size))
            folders.append(folder)
            g = generated[-1]
            print(f"generated {size} images ({g['bytes'] / MIB:.1f} MiB) in {g['seconds']:.1f} s", flush=True)
        throughput = []
        for workers in args.workers:
            args.folder = folders[-1]
            result = _run_child("throughput", folders[-1], workers, args)
            throughput.append(result)
            print(f"throughput {workers} workers: {result['images_per_s']:.1f} images/s "
                  f"({result['images']} images in {result['seconds']:.2f} s)", flush=True)
        epochs = []
        for folder in folders:
            result = _run_child("epoch", folder, args.epoch_workers, args)
            epochs.append(result)
            print(f"epoch {result['images']} images: main peak RSS {result['main_peak_rss_mb']:.1f} MB, largest "
                  f"worker {result['worker_peak_rss_mb']:.1f} MB, tree peak PSS {result['tree_peak_pss_mb']:.1f} MB "
                  f"({result['seconds']:.1f} s)", flush=True)
    report = {
        "benchmark": "data_pipeline", "quick": args.quick, "sizes": sorted(args.sizes),
        "image_size": args.image_size, "input_size": args.input_size, "batch": args.batch,
        "epoch_workers": args.epoch_workers, "model_step": None, "generated": generated,
        "throughput": throughput, "epochs": epochs, "targets": evaluate_targets(throughput, epochs),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "sched_autogroup": _autogroup(),
                    "load_before": load_before,
                    "load_after": list(os.getloadavg()), "python": platform.python_version()},
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = "data_pipeline_quick" if args.quick else "data_pipeline"
    (args.out_dir / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    write_markdown(report, args.out_dir / f"{stem}.md")
    print(summary_line(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
