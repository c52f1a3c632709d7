"""What a search costs against training one network: supernet steps, a search epoch, and 1 vs 2 processes.

The paper's claim is that the search costs about as much as training the compact model. Measured side by side in
one run (every figure a median after warm-ups):

    steps       time of one step, in interleaved rounds (each round runs every case once, the order rotated):
                compact (training step of the compact network), weight (the supernet's weight step: the same
                step for modes two and full_v2, which differ in the architecture step only), arch_two and
                arch_full_v2 (the architecture steps of both modes). Targets: weight <= 1.3x compact.
    epoch       images/s of the training part of an epoch (the end-of-epoch evaluation and checkpoint excluded)
                of the real search loop (``SearchRun``, mode full_v2, one architecture step every ``arch_every``
                = 5 weight steps, the defaults) against a compact training epoch over the same data stream,
                alternating. Target: search epoch <= 1.6x the compact epoch's time per image.
    processes   images/s of the same search loop under torchrun with 1 and with 2 processes (gloo, 1 thread
                each, the global batch 2 x batch with 2), alternating launches, the processes' CPU time
                recorded (how much of a core each one got). Target: 2 processes >= 1.6x the images/s of 1.

Like for like: one architecture is drawn with ``--arch-seed`` (uniformly per cell); the compact network is
``build_network`` of it, and the supernet's alphas are set to 20 on its paths and 0 elsewhere, so every weight
step samples exactly those paths and every architecture step has them active (the sampling code is untouched).
The latency table of the search is a FLOPs proxy (each op's multiply-adds / 1e6 as its "ms"; no device is
involved): a step's cost does not depend on the table's values. Data: ``synthetic`` images at the resolution, in
memory (no decoding cost).

Writes ``search_cost_<device>.json`` and ``.md`` to ``--out-dir`` (runs/benchmarks by default) with the machine's load
average around each section; the last printed line is ``search_cost device=D weight_ratio=X arch_two_ratio=X
arch_full_v2_ratio=X epoch_ratio=X speedup_2proc=X`` (ratios of time over the compact step or epoch; the
speed-up of images/s). ``--quick`` is a small run of every section (micro-16) for the smoke test.

Example: ``.venv/bin/python -m benchmarks.search_cost`` (CPU: proxyless-mobile at 128, batch 16; CUDA with
``--device cuda``: 224, batch 64, ``--amp`` for mixed precision).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import OUT_DIR, child_env, cpu_model
from nas_ops.network import build_network  # noqa: E402
from nas_ops.counting import count_flops  # noqa: E402
from nas_ops.space import SearchSpace, load_space  # noqa: E402
from nas_ops.spec import parse_spec  # noqa: E402
from search_client.nas.callbacks import SearchCallbacks  # noqa: E402
from search_client.nas.config import SearchConfig  # noqa: E402
from search_client.nas.distributed_search import broadcast_tables  # noqa: E402
from search_client.nas.gradients import gradient_arch_step  # noqa: E402
from search_client.nas.losses import LatencyLoss  # noqa: E402
from search_client.nas.schedule import PAPER_ARCH_LR  # noqa: E402
from search_client.nas.search_loop import SearchRun  # noqa: E402
from search_client.nas.supernet import Supernet  # noqa: E402
from search_client.nas.weight_step import weight_step  # noqa: E402
from search_client.table.latency_table import LatencyTable, table_specs  # noqa: E402
from search_client.training.cuda import DeviceTraining  # noqa: E402
from search_client.training.datasets import DataOptions
from search_client.training.distributed import (  # noqa: E402
    distributed_session,
    exit_at_end_under_torchrun,
    gather_objects,
)
from search_client.training.train import train_step  # noqa: E402

STEP_CASES = ("compact", "weight", "arch_two", "arch_full_v2")
TARGETS = {"weight_ratio": ("max", 1.3), "epoch_ratio": ("max", 1.6), "speedup_2proc": ("min", 1.6)}
RIGGED_ALPHA = 20.0
ARCH_EVERY = 5


# --- arguments ----------------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--space", default=None, help="search space (default: proxyless-mobile; micro-16 with --quick)")
    parser.add_argument("--resolution", type=int, default=None,
                        help="square input size (default: 128 on CPU, 224 on CUDA; the space's own with --quick)")
    parser.add_argument("--batch", type=int, default=None, help="batch per process (default: 16 CPU, 64 CUDA)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="device of the steps and epochs")
    parser.add_argument("--amp", action="store_true", help="CUDA: weight and compact steps in mixed precision")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (each process: 1)")
    parser.add_argument("--rounds", type=int, default=7, help="rounds of the step cases (after 1 warm-up round)")
    parser.add_argument("--epoch-steps", type=int, default=10, help="weight steps of one epoch (1 process)")
    parser.add_argument("--epochs", type=int, default=3, help="search and compact epochs measured (alternating)")
    parser.add_argument("--procs", default="1,2", help="process counts of the processes section ('' to skip)")
    parser.add_argument("--proc-repeats", type=int, default=2, help="launches of each process count (alternating)")
    parser.add_argument("--proc-epochs", type=int, default=2, help="epochs of each launch")
    parser.add_argument("--arch-seed", type=int, default=0, help="seed of the architecture every case trains")
    parser.add_argument("--quick", action="store_true", help="a small run of every section (the smoke test)")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR, help="where the reports are written")
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)  # internal: one torchrun rank
    args = parser.parse_args(argv)
    if args.quick:
        args.space = args.space or "micro-16"
        args.resolution = 0 if args.resolution is None else args.resolution
        args.batch = args.batch or 8
        args.rounds, args.epoch_steps, args.epochs = 2, ARCH_EVERY, 1
        args.proc_repeats, args.proc_epochs = 1, 1
    on_gpu = args.device == "cuda"
    args.space = args.space or "proxyless-mobile"
    args.resolution = (224 if on_gpu else 128) if args.resolution is None else args.resolution
    args.batch = args.batch or (64 if on_gpu else 16)
    for name in ("batch", "threads", "rounds", "epoch_steps", "epochs", "proc_repeats", "proc_epochs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.resolution < 0:
        parser.error("--resolution must be >= 0 (0: the space's own)")
    if args.epoch_steps < ARCH_EVERY:
        parser.error(f"--epoch-steps: at least {ARCH_EVERY} (one architecture step per {ARCH_EVERY} weight steps)")
    try:
        args.procs = [int(p) for p in args.procs.split(",") if p.strip()]
    except ValueError:
        parser.error(f"--procs: expected comma-separated integers, got {args.procs!r}")
    if any(p < 1 for p in args.procs):
        parser.error("--procs: process counts must be >= 1")
    if on_gpu and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    if args.amp and not on_gpu:
        parser.error("--amp: mixed precision is for --device cuda")
    return args


# --- the shared set-up -------------------------------------------------------------------------------------------
def bench_space(args: argparse.Namespace) -> SearchSpace:
    space = load_space(args.space)
    return space.with_resolution(args.resolution, args.resolution) if args.resolution else space


def flops_table(space: SearchSpace) -> LatencyTable:
    """A complete latency table whose "ms" are each op's multiply-adds / 1e6 (a proxy: no device measured it)."""
    stats = {}
    for spec in table_specs(space):
        ms = count_flops(parse_spec(spec)) / 1e6
        stats[spec] = {"median_ms": ms, "mean_ms": ms, "std_ms": 0.0, "min_ms": ms, "p10_ms": ms, "p90_ms": ms,
                       "iqr_ms": 0.0, "samples": 1}
    device = {"url": "flops-proxy", "name": "flops-proxy", "fingerprint": {}, "fingerprint_hash": "0" * 64}
    return LatencyTable.from_stats(space, stats, device=device, backend="flops-proxy", batch=1, threads=1,
                                   protocol_version="flops-proxy", env_hash="0" * 64)


def draw_architecture(space: SearchSpace, seed: int) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return [int(torch.randint(len(cell.candidates), (1,), generator=gen).item()) for cell in space.cells()]


def rig_alphas(supernet: Supernet, choices: Sequence[int]) -> None:
    """Alphas that make every draw the given paths (p of any other path ~ e^-20)."""
    with torch.no_grad():
        for cell, choice in zip(supernet.cells, choices):
            cell.alpha.zero_()
            cell.alpha[choice] = RIGGED_ALPHA


def search_config(space: SearchSpace, args: argparse.Namespace, epochs: int) -> SearchConfig:
    """The search of the epoch and processes sections: ``synthetic`` data of as many balanced classes as the
    space's head has outputs (a search refuses data of another class count), with
    ``epoch_steps x batch`` training images (rounded up to whole classes) and enough held-out images per class for
    a batch of architecture steps on each of the most processes; full_v2, ``arch_every`` 5."""
    table = flops_table(space)
    low, high = table.min_latency()[0], table.max_latency()[0]
    classes = space.num_classes
    train_per_class = -(-args.epoch_steps * args.batch // classes)
    valid_per_class = -(-args.batch * max([1, *args.procs]) // classes)
    source = f"synthetic:{classes * (train_per_class + valid_per_class)}:{classes}"
    return SearchConfig(targets_ms=[(low + high) / 2], data=DataOptions(source, valid_per_class=valid_per_class),
                        epochs=epochs, batch_size=args.batch, arch_every=ARCH_EVERY, arch_lr=PAPER_ARCH_LR,
                        mode="full_v2")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class EpochTimer(SearchCallbacks):
    """Times the training part of each epoch (first step to last; the evaluation after it excluded) and the
    process's CPU time over it."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.epochs: list[dict[str, float]] = []
        self._start = self._cpu = self._last = self._last_cpu = 0.0
        self._steps = 0

    def warning(self, message: str) -> None:
        pass  # the benchmark's schedule (arch lr 1e-3 on rigged alphas) is meant not to move them

    def epoch_start(self, epoch: int, total_epochs: int, phase: str, steps: int) -> None:
        _sync(self.device)
        self._start, self._cpu, self._steps = time.perf_counter(), time.process_time(), 0

    def step(self) -> None:
        _sync(self.device)
        self._last, self._last_cpu = time.perf_counter(), time.process_time()
        self._steps += 1

    def epoch_end(self, row: dict[str, Any]) -> None:
        self.epochs.append({"seconds": self._last - self._start, "cpu_seconds": self._last_cpu - self._cpu,
                            "steps": self._steps})


# --- steps --------------------------------------------------------------------------------------------------------
def build_steps(space: SearchSpace, choices: list[int], args: argparse.Namespace) -> dict[str, Callable[[], Any]]:
    """The step of each case, as closures over their models, optimizers and one random batch."""
    placement = DeviceTraining(args.device, amp=args.amp)
    torch.manual_seed(0)
    x, y = placement.to_device((torch.randn(args.batch, space.in_chs, *space.input_size),
                                torch.randint(0, space.num_classes, (args.batch,))))
    net = placement.prepare_model(build_network(space.architecture(choices)))
    sgd = torch.optim.SGD(net.parameters(), lr=0.025, momentum=0.9, nesterov=True, weight_decay=4e-5)
    supernet = placement.prepare_model(Supernet(space))
    rig_alphas(supernet, choices)
    super_sgd = torch.optim.SGD(supernet.weight_parameters(), lr=0.025, momentum=0.9, nesterov=True,
                                weight_decay=4e-5)
    adam = torch.optim.Adam(supernet.arch_parameters(), lr=PAPER_ARCH_LR, betas=(0.0, 0.999), eps=1e-8)
    gen = torch.Generator().manual_seed(0)
    loss_fn = LatencyLoss("add#linear")

    def arch(mode: str) -> Callable[[], Any]:
        return lambda: gradient_arch_step(supernet, (x, y), mode=mode, objective=None, loss_fn=loss_fn,
                                          optimizer=adam, generator=gen)

    return {
        "compact": lambda: train_step(net, (x, y), sgd, label_smoothing=0.1, precision=placement.precision),
        "weight": lambda: weight_step(supernet, (x, y), super_sgd, mode="full_v2", label_smoothing=0.1,
                                      generator=gen, precision=placement.precision),
        "arch_two": arch("two"),
        "arch_full_v2": arch("full_v2"),
    }


def measure_steps(steps: dict[str, Callable[[], Any]], rounds: int, device: torch.device) -> dict[str, list[float]]:
    """Seconds per step of every case over ``rounds`` rounds (one warm-up round first, not kept)."""
    times: dict[str, list[float]] = {case: [] for case in steps}
    cases = list(steps)
    for r in range(rounds + 1):
        order = cases[r % len(cases):] + cases[:r % len(cases)]
        for case in order:
            _sync(device)
            start = time.perf_counter()
            steps[case]()
            _sync(device)
            if r > 0:
                times[case].append(time.perf_counter() - start)
    return times


# --- epochs -------------------------------------------------------------------------------------------------------
def measure_epochs(space: SearchSpace, choices: list[int], args: argparse.Namespace, work: Path
                   ) -> dict[str, list[float]]:
    """Images/s of search epochs and compact epochs over the same data, alternating (one warm-up epoch each)."""
    config = search_config(space, args, args.epochs + 1)
    device = torch.device(args.device)
    timer = EpochTimer(device)
    run = SearchRun(config, [flops_table(space)], work / "epochs", callbacks=timer, device=args.device, amp=args.amp)
    rig_alphas(run.supernet, choices)
    placement = DeviceTraining(args.device, amp=args.amp)
    data = config.open_data(space.input_size, space.in_chs)
    net = placement.prepare_model(build_network(space.architecture(choices)))
    sgd = torch.optim.SGD(net.parameters(), lr=0.025, momentum=0.9, nesterov=True, weight_decay=4e-5)
    search_rates, compact_rates = [], []
    for epoch in range(args.epochs + 1):
        run.run(stop_after_epochs=1)
        _sync(device)
        start, images = time.perf_counter(), 0
        for batch in data.train.epoch():
            train_step(net, placement.to_device(batch), sgd, label_smoothing=0.1, precision=placement.precision)
            images += int(batch[1].shape[0])
        _sync(device)
        compact_seconds = time.perf_counter() - start
        if epoch > 0:  # the first of each is the warm-up
            last = timer.epochs[-1]
            search_rates.append(last["steps"] * args.batch / last["seconds"])
            compact_rates.append(images / compact_seconds)
    data.close()
    run.data.close()
    return {"search_images_s": search_rates, "compact_images_s": compact_rates}


# --- processes ----------------------------------------------------------------------------------------------------
def run_child(spec_path: Path) -> None:
    """One rank of a processes launch: the search loop on CPU for ``epochs``; rank 0 prints every rank's epoch
    times as JSON."""
    spec = json.loads(spec_path.read_text())
    torch.set_num_threads(spec["threads"])
    args = argparse.Namespace(**spec["args"])
    space = bench_space(args)
    with distributed_session("cpu") as ctx:
        config = search_config(space, args, spec["epochs"])
        tables = broadcast_tables(lambda: [flops_table(space)], ctx)
        timer = EpochTimer(torch.device("cpu"))
        run = SearchRun(config, tables, spec["out"], callbacks=timer, dist=ctx)
        rig_alphas(run.supernet, spec["choices"])
        run.run()
        everyone = gather_objects(timer.epochs, ctx, "the epoch times")
        run.data.close()
    if ctx.is_main:
        print(json.dumps({"world_size": ctx.world_size, "epochs": everyone}))


def measure_processes(space: SearchSpace, choices: list[int], args: argparse.Namespace, work: Path
                      ) -> dict[str, Any]:
    """Images/s of the search loop with each process count (alternating launches; the first epoch of each
    launch is its warm-up)."""
    rates: dict[int, list[float]] = {p: [] for p in args.procs}
    cpu_share: dict[int, list[float]] = {p: [] for p in args.procs}
    env = child_env(OMP_NUM_THREADS=str(args.threads))
    for repeat in range(args.proc_repeats):
        for procs in args.procs:
            spec = {"threads": args.threads, "epochs": args.proc_epochs + 1, "choices": choices,
                    "out": str(work / f"procs{procs}_{repeat}"),
                    "args": {"space": args.space, "resolution": args.resolution, "batch": args.batch,
                             "epoch_steps": args.epoch_steps, "procs": args.procs}}
            spec_path = work / f"procs{procs}_{repeat}.json"
            spec_path.write_text(json.dumps(spec))
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}",
                   "-m", "benchmarks.search_cost", "--child", str(spec_path)]
            done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"{procs}-process launch failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
            report = json.loads(done.stdout.strip().splitlines()[-1])
            for e in range(1, args.proc_epochs + 1):  # epoch 0: warm-up
                epochs = [rank_epochs[e] for rank_epochs in report["epochs"]]
                wall = max(ep["seconds"] for ep in epochs)
                images = sum(ep["steps"] for ep in epochs) * args.batch
                rates[procs].append(images / wall)
                cpu_share[procs].append(statistics.mean(ep["cpu_seconds"] / ep["seconds"] for ep in epochs))
            print(f"processes {procs}: {statistics.median(rates[procs][-args.proc_epochs:]):.1f} images/s", flush=True)
    return {"images_s": {str(p): v for p, v in rates.items()}, "cpu_share": {str(p): v for p, v in cpu_share.items()}}


# --- report -------------------------------------------------------------------------------------------------------
def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def ratios(steps: dict[str, list[float]], epochs: dict[str, list[float]], procs: dict[str, Any] | None
           ) -> dict[str, float]:
    """The figures of the last line (nan for a section that did not run)."""
    compact = _median(steps["compact"])
    speedup = float("nan")
    if procs and "1" in procs["images_s"] and "2" in procs["images_s"]:
        speedup = _median(procs["images_s"]["2"]) / _median(procs["images_s"]["1"])
    return {
        "weight_ratio": _median(steps["weight"]) / compact,
        "arch_two_ratio": _median(steps["arch_two"]) / compact,
        "arch_full_v2_ratio": _median(steps["arch_full_v2"]) / compact,
        "epoch_ratio": _median(epochs["compact_images_s"]) / _median(epochs["search_images_s"]),
        "speedup_2proc": speedup,
    }


def summary_line(device: str, figures: dict[str, float]) -> str:
    return f"search_cost device={device} " + " ".join(f"{k}={v:.2f}" for k, v in figures.items())


def targets_met(figures: dict[str, float]) -> dict[str, dict[str, Any]]:
    out = {}
    for name, (kind, bound) in TARGETS.items():
        value = figures[name]
        met = None if value != value else (value <= bound if kind == "max" else value >= bound)
        out[name] = {kind: bound, "value": value, "met": met}
    return out


def write_reports(doc: dict[str, Any], out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"search_cost_{doc['device']}.json"
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    s, e = doc["steps"], doc["epoch"]
    lines = [f"# Search cost on {doc['device']} ({doc['gpu'] or doc['cpu']}, {doc['cores']} cores)", "",
             f"Space {doc['space']} at {doc['resolution'][0]}x{doc['resolution'][1]}, batch {doc['batch']} per "
             f"process, {doc['threads']} thread(s), amp {doc['amp']}; architecture {' '.join(doc['choice_names'])}. "
             f"Load average (1 min) at the start of each section: {doc['load_average']}.", "",
             "| step | median s | x compact | all (s) |", "| --- | ---: | ---: | --- |"]
    for case in STEP_CASES:
        med = _median(s[case])
        lines.append(f"| {case} | {med:.4f} | {med / _median(s['compact']):.2f} | "
                     f"{', '.join(f'{v:.3f}' for v in s[case])} |")
    lines += ["", f"Epoch of {e['steps']} weight steps (+ one architecture step per {ARCH_EVERY}, full_v2): search "
              f"{_median(e['search_images_s']):.1f} images/s, compact {_median(e['compact_images_s']):.1f} images/s "
              f"(medians of {len(e['search_images_s'])} epochs each)."]
    if doc["processes"]:
        lines += ["", "| processes | median images/s | per epoch | CPU share per process |", "| ---: | ---: | --- | ---: |"]
        for p, values in doc["processes"]["images_s"].items():
            share = _median(doc["processes"]["cpu_share"][p])
            lines.append(f"| {p} | {_median(values):.1f} | {', '.join(f'{v:.1f}' for v in values)} | {share:.2f} |")
    lines += ["", "| target | bound | value | met |", "| --- | ---: | ---: | --- |"]
    for name, t in doc["targets"].items():
        bound = f"<= {t['max']}" if "max" in t else f">= {t['min']}"
        lines.append(f"| {name} | {bound} | {t['value']:.2f} | {t['met']} |")
    lines += ["", f"`{doc['summary']}`", ""]
    (out_dir / f"search_cost_{doc['device']}.md").write_text("\n".join(lines), encoding="utf-8")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        with exit_at_end_under_torchrun():
            run_child(args.child)
        return 0
    torch.set_num_threads(args.threads)
    space = bench_space(args)
    choices = draw_architecture(space, args.arch_seed)
    device = torch.device(args.device)
    load: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="search_cost_") as tmp:
        work = Path(tmp)
        load["steps"] = list(os.getloadavg())
        steps = measure_steps(build_steps(space, choices, args), args.rounds, device)
        for case in STEP_CASES:
            print(f"step {case:13s} {_median(steps[case]):.4f} s", flush=True)
        load["epoch"] = list(os.getloadavg())
        epochs = measure_epochs(space, choices, args, work)
        print(f"epoch search {_median(epochs['search_images_s']):.1f} images/s, compact "
              f"{_median(epochs['compact_images_s']):.1f} images/s", flush=True)
        procs = None
        if args.procs:
            load["processes"] = list(os.getloadavg())
            procs = measure_processes(space, choices, args, work)
        load["end"] = list(os.getloadavg())
    figures = ratios(steps, epochs, procs)
    doc = {
        "device": args.device, "space": space.name, "resolution": list(space.input_size), "batch": args.batch,
        "threads": args.threads, "amp": args.amp, "cores": os.cpu_count(), "cpu": cpu_model(),
        "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None, "torch": torch.__version__,
        "platform": platform.platform(), "choices": choices,
        "choice_names": [cell.candidate_names[c] for cell, c in zip(space.cells(), choices)],
        "load_average": {k: round(v[0], 2) for k, v in load.items()},
        "load_average_1_5_15": load, "quick": args.quick,
        "steps": {**steps, "rounds": args.rounds},
        "epoch": {**epochs, "steps": args.epoch_steps, "arch_every": ARCH_EVERY, "mode": "full_v2"},
        "processes": None if procs is None else {**procs, "threads_per_process": args.threads,
                                                 "epochs_per_launch": args.proc_epochs,
                                                 "launches": args.proc_repeats},
        "ratios": figures, "targets": targets_met(figures), "summary": summary_line(args.device, figures),
    }
    print(f"report: {write_reports(doc, args.out_dir)}")
    print(doc["summary"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
