"""The search checkpoint: ``checkpoint.pt`` in the output directory, written atomically after every epoch.

It holds (see :meth:`search_client.nas.search_loop.SearchRun.state_dict`) the format marker and version, the
config (:meth:`search_client.nas.config.SearchConfig.to_dict`), the tables' content hashes, the epoch and step
counters, the supernet's weights and alphas, both optimizers, the weight lr schedule, the path-sampling generator,
both data streams' positions, the latency weight, the REINFORCE baseline, the log rows, the number of
processes that wrote it (``world_size``) and the fp16 gradient scaler's state (``grad_scaler``, or None). A resume must use the
same config and tables (:func:`check_checkpoint`); it then gives the same result as not stopping.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from search_client.nas.config import SearchConfig

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = "proxyless-search-checkpoint"
CHECKPOINT_VERSION = 3


def checkpoint_path(out_dir: str | Path) -> Path:
    """Where the checkpoint of a search writing into ``out_dir`` lives."""
    return Path(out_dir) / CHECKPOINT_NAME


def save_checkpoint(state: dict[str, Any], out_dir: str | Path) -> Path:
    """Write ``state`` (with the format marker and version) to ``out_dir/checkpoint.pt``: a temporary file renamed
    over the old one, so an interruption leaves the previous checkpoint whole."""
    path = checkpoint_path(out_dir)
    tmp = path.with_suffix(".pt.tmp")
    torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(out_dir: str | Path) -> dict[str, Any]:
    """The checkpoint in ``out_dir``; ValueError when there is none or it is not a search checkpoint of this
    version."""
    path = checkpoint_path(out_dir)
    if not path.is_file():
        raise ValueError(f"resume: no checkpoint at {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") != CHECKPOINT_FORMAT or state.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"checkpoint {path}: not a search checkpoint of version {CHECKPOINT_VERSION} (it was "
                         "written by another version of the search; start a new search in another directory)")
    return state


def checkpoint_epoch(out_dir: str | Path) -> int | None:
    """The number of finished epochs the checkpoint in ``out_dir`` holds; None when there is no checkpoint."""
    path = checkpoint_path(out_dir)
    if not path.is_file():
        return None
    return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["epoch"])


def check_checkpoint(state: dict[str, Any], config: SearchConfig, table_hashes: Sequence[str],
                     world_size: int = 1) -> None:
    """ValueError when ``state`` belongs to another config, other tables or another number of processes (naming
    what differs)."""
    saved = SearchConfig.from_dict(state["config"]).to_dict()
    differ = [k for k, v in config.to_dict().items() if saved.get(k) != v]
    if differ:
        raise ValueError(f"checkpoint: config differs from the checkpoint's in {', '.join(differ)} "
                         f"(checkpoint: {', '.join(f'{k}={saved[k]!r}' for k in differ)})")
    if list(state["table_hashes"]) != list(table_hashes):
        raise ValueError("checkpoint: the latency tables differ from the ones the search started with "
                         "(content hash mismatch)")
    saved_world = int(state.get("world_size", 1))  # checkpoints written before runs of several processes: 1
    if saved_world != world_size:
        raise ValueError(f"checkpoint: written by a search of {saved_world} process(es); resume it with "
                         f"{saved_world} (--nproc {saved_world}), not {world_size}: each process's share of the "
                         "data and the number of steps per epoch depend on it")
