"""Derive the searched architecture (argmax per cell) and export it: architecture file, weights, ONNX, summary.

The derived network is ``nas_ops.network.build_network(arch)``; its state_dict is inherited from the supernet's
chosen paths (``blocks.{k}.candidates.{c}.*`` of the chosen candidate c becomes ``blocks.{k}.*``; stem, first
block, mix and head keep their keys; alphas are dropped). A chosen Zero is an identity block with no weights.

Architecture metadata written by :func:`derive_architecture`::

    space, choices, choice_names        the space name, the candidate index and name per cell
    probabilities                       softmax(alpha) per cell at the end of the search
    devices                             per latency table: name, url, backend, batch, dtype, threads,
                                        fingerprint_hash, env_hash, table_hash, target_ms, predicted_ms,
                                        protocol_version and working_set_bytes (the table's regime: verify
                                        measures the network in it)
    predicted_latency_ms                {"<device name>/<backend>": predicted ms} ("#<i>" appended to keys that
                                        two tables share)
    backend                             the first table's backend
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from nas_ops.arch import Architecture
from nas_ops.export import export_onnx
from nas_ops.network import Network, build_network
from search_client.table.objective import MultiDeviceLatency
from search_client.nas.supernet import Supernet


def device_key(table: Any) -> str:
    """``"<device name>/<backend>"``: the key of a table's prediction in the architecture metadata."""
    return f"{table.device.get('name') or table.device.get('url')}/{table.backend}"


def device_keys(tables: Sequence[Any]) -> list[str]:
    """:func:`device_key` of each table, with ``#<index>`` appended where two tables would share a key."""
    keys = [device_key(t) for t in tables]
    return [f"{k}#{d}" if keys.count(k) > 1 else k for d, k in enumerate(keys)]


def derive_architecture(supernet: Supernet, objective: MultiDeviceLatency | None = None,
                        choices: Sequence[int] | None = None) -> Architecture:
    """The architecture of ``choices`` (default: argmax alpha per cell), with the metadata above."""
    choices = supernet.argmax_choices() if choices is None else [int(c) for c in choices]
    arch = supernet.space.architecture(choices)
    with torch.no_grad():
        probs = [[round(float(v), 6) for v in p] for p in supernet.probs()]
    metadata: dict[str, Any] = {
        **arch.metadata,
        "choice_names": [cell.cell.candidate_names[c] for cell, c in zip(supernet.cells, choices)],
        "probabilities": probs,
    }
    if objective is not None:
        predicted = objective.latency_of(choices)
        metadata["devices"] = [
            {"name": t.device.get("name"), "url": t.device.get("url"), "backend": t.backend, "batch": t.batch,
             "dtype": t.dtype, "threads": t.threads, "fingerprint_hash": t.device.get("fingerprint_hash"),
             "env_hash": t.env_hash, "table_hash": t.content_hash(), "target_ms": target, "predicted_ms": ms,
             "protocol_version": t.protocol_version, "working_set_bytes": t.request_working_set()}
            for t, target, ms in zip(objective.tables, objective.targets_ms, predicted)
        ]
        metadata["predicted_latency_ms"] = dict(zip(device_keys(objective.tables), predicted))
        metadata["backend"] = objective.tables[0].backend
    arch.metadata = metadata
    return arch


def derived_state_dict(supernet: Supernet, choices: Sequence[int]) -> dict[str, torch.Tensor]:
    """The supernet's weights of the chosen paths, keyed like ``build_network(space.architecture(choices))``."""
    if len(choices) != len(supernet.cells):
        raise ValueError(f"choices: expected {len(supernet.cells)} values (one per cell), got {len(choices)}")
    out: dict[str, torch.Tensor] = {}
    for key, value in supernet.state_dict().items():
        parts = key.split(".")
        if parts[0] == "blocks" and parts[1] != "0":
            k = int(parts[1])
            if parts[2] == "alpha":
                continue
            # blocks.{k}.candidates.{c}.rest -> blocks.{k}.rest for the chosen c only
            if int(parts[3]) != choices[k - 1]:
                continue
            key = ".".join(["blocks", parts[1], *parts[4:]])
        out[key] = value.detach().clone()
    return out


def derived_network(supernet: Supernet, arch: Architecture) -> Network:
    """``build_network(arch)`` loaded (strictly) with the weights inherited from the supernet."""
    choices = arch.metadata.get("choices")
    if not isinstance(choices, list):
        raise ValueError("architecture metadata 'choices': missing; derive it with derive_architecture")
    net = build_network(arch)
    net.load_state_dict(derived_state_dict(supernet, choices), strict=True)
    return net


def export_search_result(supernet: Supernet, objective: MultiDeviceLatency, out_dir: str | Path, *,
                         summary: dict[str, Any] | None = None, onnx: bool = True,
                         choices: Sequence[int] | None = None) -> dict[str, Path]:
    """Write ``arch.json``, ``weights.pt`` (state_dict of the derived net), ``model.onnx`` (batch 1, eval mode)
    and ``summary.json`` into ``out_dir`` for ``choices`` (default: the argmax); returns the paths by name."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    arch = derive_architecture(supernet, objective, choices)
    net = derived_network(supernet, arch)
    files = {"arch": out / "arch.json", "weights": out / "weights.pt", "summary": out / "summary.json"}
    arch.save(files["arch"])
    torch.save(net.state_dict(), files["weights"])
    if onnx:
        files["onnx"] = export_onnx(net, out / "model.onnx", input_shape=(1, arch.in_chs, *arch.input_size))
    keys = device_keys(objective.tables)
    doc = {
        "space": supernet.space.name, "choices": arch.metadata["choices"],
        "choice_names": arch.metadata["choice_names"],
        "predicted_latency_ms": arch.metadata["predicted_latency_ms"],
        "targets_ms": dict(zip(keys, objective.targets_ms)),
        "min_latency_ms": {k: t.min_latency()[0] for k, t in zip(keys, objective.tables)},
        "max_latency_ms": {k: t.max_latency()[0] for k, t in zip(keys, objective.tables)},
        **(summary or {}),
        "files": {name: path.name for name, path in files.items()},
    }
    files["summary"].write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return files
