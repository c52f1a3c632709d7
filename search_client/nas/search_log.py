"""What a search writes about itself: one log row per epoch (``log.jsonl``, ``log.csv``), the line printed per
epoch, the lines that end it (:func:`derive_lines`), and the fields of ``summary.json``.

Log row (one per epoch)::

    epoch, phase                      1-based epoch over warm-up and search; "warmup" or "search"
    lr                                weight lr of the next step
    train_loss, train_acc             mean over the epoch's weight steps
    arch_loss, arch_steps             mean architecture loss of the epoch (null without arch steps); steps so far
    valid_loss, valid_acc             the argmax architecture on the held-out split (inherited weights)
    expected_ms, argmax_ms            per device: E[LAT] under p, and the argmax architecture's table latency
    argmax_ratio, targets_ms          the argmax's combined latency ratio; per-device targets
    entropy                           mean over cells of the entropy of p (nats; uniform: mean of log N)
    strength, aim                     the latency weight after the epoch, and the expected latency's ratio the
                                      two-sided loss pulls to (1 unless the adaptive rule moved it)
    choices, seconds                  the argmax per cell; the epoch's wall time

In ``log.csv`` the per-device lists become ``<name>_<device index>`` columns and ``choices`` one space-separated
string.

``summary.json`` of a finished search: what :func:`search_client.nas.derive.export_search_result` writes (space,
choices, choice_names, predicted_latency_ms, targets_ms, min/max_latency_ms, files) and :func:`search_summary`::

    epochs, mode, grad_estimator, loss         the config's
    final_strength, adaptive                   the latency weight at the end, and whether it adapted
    arch_lr, arch_every, arch_steps            the architecture step's lr as used (scaled to the run when the
    arch_reach                                 config gives none), its period, the steps made, and Adam's bound
                                               on how far each alpha could move (arch_steps x arch_lr)
    entropy_uniform, entropy_final             mean entropy of p at the start (uniform) and at the end
    derive, target_band                        the derive rule and the target's tolerance
    choices, ratio                             the exported architecture and its latency ratio to the target,
                                               combined over the devices like the objective
    device_ratios, device_target_met           per device ({"<device key>": value}, the keys of targets_ms):
                                               the exported architecture's own ratio, and whether it is in the band
    target_met                                 whether every device meets its target (:mod:`search_client.nas.target`)
    argmax_choices, argmax_ratio               the argmax architecture at the end, its combined ratio and its
    argmax_device_ratios                       ratio per device
    derive_kept_argmax                         whether the exported architecture is the argmax
    derive_changes                             the cells where it is not: [{"cell": index in choices (0-based),
                                               "argmax": op name, "exported": op name}] ([] when kept)
    derive_log_prob_given_up                   sum over those cells of log p(argmax op) - log p(exported op) under
                                               the final p (0 when kept)
    valid_acc_inherited_argmax                 the argmax's validation top-1 with inherited weights
    search_seconds_this_run                    wall time of this process's part of the search
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from search_client.nas.schedule import arch_reach

if TYPE_CHECKING:
    from search_client.nas.config import SearchConfig
    from search_client.nas.within_target import Derived


def entropy(probs: Sequence[torch.Tensor]) -> float:
    """Mean over cells of the entropy of p (nats)."""
    values = [float(-(p * torch.log(p.clamp_min(1e-12))).sum().item()) for p in probs]
    return sum(values) / len(values)


def uniform_entropy(candidate_counts: Sequence[int]) -> float:
    """The mean entropy of uniform probabilities over cells of these candidate counts (a search's start)."""
    return sum(math.log(n) for n in candidate_counts) / len(candidate_counts)


def write_logs(history: Sequence[dict[str, Any]], out_dir: str | Path) -> None:
    """Rewrite ``log.jsonl`` and ``log.csv`` in ``out_dir`` from the rows of every epoch so far."""
    out = Path(out_dir)
    with open(out / "log.jsonl", "w", encoding="utf-8") as fh:
        for row in history:
            fh.write(json.dumps(row) + "\n")
    rows = [_flat(row) for row in history]
    with open(out / "log.csv", "w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in row.items():
        if key == "choices":
            out[key] = " ".join(str(c) for c in value)
        elif isinstance(value, list):
            out.update({f"{key}_{d}": v for d, v in enumerate(value)})
        else:
            out[key] = value
    return out


def summary_line(row: dict[str, Any]) -> str:
    """One line per epoch for the terminal."""
    lat = ", ".join(f"{a:.3f}/{t:.3f}" for a, t in zip(row["argmax_ms"], row["targets_ms"]))
    return (f"epoch {row['epoch']} {row['phase']}: train loss {row['train_loss']:.3f} acc {row['train_acc']:.3f}, "
            f"valid acc {row['valid_acc']:.3f}, argmax/target ms {lat}, entropy {row['entropy']:.3f}, "
            f"strength {row['strength']:.3g}")


def mean_or_none(values: Sequence[float]) -> float | None:
    """The mean, or None (null in the logs) when there is nothing to average."""
    return sum(values) / len(values) if values else None


def derive_changes(derived: Derived, candidate_names: Sequence[Sequence[str]]) -> list[dict[str, Any]]:
    """The cells where the exported architecture is not the argmax: ``{"cell", "argmax", "exported"}`` each, with
    the op names of ``candidate_names`` (one tuple per cell)."""
    return [{"cell": i, "argmax": candidate_names[i][derived.argmax_choices[i]],
             "exported": candidate_names[i][derived.choices[i]]} for i in derived.changed_cells]


def derive_lines(derived: Derived, candidate_names: Sequence[Sequence[str]], devices: Sequence[str],
                 targets_ms: Sequence[float], bounds: tuple[float, float]) -> list[str]:
    """The lines that end a search on the terminal: how the export was derived, whether it changed the argmax
    (which cells, and the log-probability given up), and each device's prediction, ratio and verdict
    (``devices`` and ``targets_ms``: one per device, in the objective's order; ``bounds``: the ratios that meet
    the target, :func:`search_client.nas.target.target_bounds`)."""
    how = "the argmax architecture" if derived.from_argmax else \
        "the most probable architecture within every device's target"
    band = f"latency ratio in [{bounds[0]:g}, {bounds[1]:g}]"
    if derived.target_met:
        verdict = f"meets the target on every device ({band})"
    else:
        verdict = f"MISSES the target ({band}) on {derived.device_met.count(False)} of {len(derived.device_met)} " \
                  "device(s)"
    lines = [f"derive ({derived.rule}): {how}; {verdict}"]
    changes = derive_changes(derived, candidate_names)
    if changes:
        cells = ", ".join(f"{c['cell']} ({c['argmax']} -> {c['exported']})" for c in changes)
        lines.append(f"derive changed the argmax in {len(changes)} cell(s): {cells}; log-probability given up "
                     f"{derived.log_prob_given_up:.3f}")
    else:
        lines.append("derive kept the argmax")
    for name, target, ratio, a_ratio, ok in zip(devices, targets_ms, derived.device_ratios,
                                                derived.argmax_device_ratios, derived.device_met):
        argmax = "" if derived.from_argmax else f"; the argmax's {a_ratio:.3f}"
        lines.append(f"{name}: predicted {ratio * target:.4f} ms, target {target:.4f} ms, latency ratio {ratio:.3f} "
                     f"({100 * (ratio - 1):+.1f}%), {'meets' if ok else 'MISSES'} its target{argmax}")
    if len(devices) > 1:
        lines.append(f"combined latency ratio {derived.ratio:.3f} (what the search optimises; the verdict is per "
                     "device)")
    return lines


def search_summary(config: SearchConfig, derived: Derived, *, devices: Sequence[str],
                   candidate_names: Sequence[Sequence[str]], final_strength: float | None, arch_lr: float,
                   arch_steps: int, entropy_start: float, final_row: dict[str, Any], seconds: float
                   ) -> dict[str, Any]:
    """The search's own fields of ``summary.json`` (listed in the module docstring); ``devices`` are the device
    keys (:func:`search_client.nas.derive.device_keys`), ``candidate_names`` the op names of each cell."""
    return {
        "epochs": config.total_epochs, "mode": config.mode, "grad_estimator": config.grad_estimator,
        "loss": config.loss, "final_strength": final_strength, "adaptive": config.adaptive,
        "arch_lr": arch_lr, "arch_every": config.arch_every, "arch_steps": arch_steps,
        "arch_reach": arch_reach(arch_steps, arch_lr),
        "entropy_uniform": entropy_start, "entropy_final": final_row.get("entropy"),
        "derive": derived.rule, "target_band": config.target_band, "target_met": derived.target_met,
        "ratio": derived.ratio, "device_ratios": dict(zip(devices, derived.device_ratios)),
        "device_target_met": dict(zip(devices, derived.device_met)),
        "argmax_choices": derived.argmax_choices, "argmax_ratio": derived.argmax_ratio,
        "argmax_device_ratios": dict(zip(devices, derived.argmax_device_ratios)),
        "derive_kept_argmax": derived.from_argmax, "derive_changes": derive_changes(derived, candidate_names),
        "derive_log_prob_given_up": derived.log_prob_given_up,
        "valid_acc_inherited_argmax": final_row.get("valid_acc"),
        "search_seconds_this_run": seconds,
    }
