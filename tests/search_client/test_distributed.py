"""torch.distributed helpers without processes: the shard rule of the streams, the torchrun environment, the rank
device, collectives in a single process, failures turned into one-line errors, gradient averaging (the all-reduce
replaced by a recording one), the checkpoint's world size, and the CLI's --nproc rules."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import search_client.training.distributed as distributed
from search_client.cli.distributed import check_nproc, torchrun_command
from search_client.nas.checkpoint import check_checkpoint
from search_client.nas.config import SearchConfig
from search_client.training.distributed import (
    SINGLE,
    DistContext,
    PeerFailure,
    RanksDisagree,
    StreamShard,
    all_reduce_sum,
    average_gradients_now,
    average_gradients_on_step,
    backend_for,
    broadcast_object,
    check_same,
    distributed_session,
    on_main_rank,
    rank_device,
    restart_count,
    torchrun_env,
)
from search_client.training.image_sets import ImageSet
from search_client.training.streams import BatchStream

ROOT = Path(__file__).resolve().parents[2]
TWO = DistContext(rank=1, world_size=2, local_rank=1, backend="gloo", timeout_s=5.0)


class SeedEcho(ImageSet):
    """An image set whose 'image' of an item is (index, pass seed, position): what a stream asked it for."""

    def __init__(self, n: int) -> None:
        self.labels = np.arange(n, dtype=np.int64) % 3
        self.num_classes, self.name = 3, "echo"

    def content_hash(self) -> str:
        return "echo"

    def batch(self, indices: np.ndarray, seeds: Sequence[Sequence[int]] | None) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [[float(i), float(s[0] % 1000), float(s[1])] for i, s in zip(indices, seeds or [])]
        return torch.tensor(rows).view(len(indices), 3, 1, 1), torch.as_tensor(indices)


def _items(stream: BatchStream, batches: int | None = None) -> list[tuple[float, float, float]]:
    out = []
    for b, (x, _) in enumerate(stream.epoch()):
        out.extend(tuple(row) for row in x.view(-1, 3).tolist())
        if batches is not None and b + 1 == batches:
            break
    return out


# --- the shard rule ---------------------------------------------------------------------------------------------
def test_shards_are_disjoint_equal_and_cover_all_but_the_remainder() -> None:
    shards = [StreamShard(r, 3).positions(11) for r in range(3)]
    assert [len(s) for s in shards] == [3, 3, 3]
    assert sorted(np.concatenate(shards).tolist()) == list(range(9))
    assert shards[1].tolist() == [1, 4, 7]
    with pytest.raises(ValueError, match="rank 2 of world size 2"):
        StreamShard(2, 2)


def test_sharded_streams_hold_the_items_and_augmentation_seeds_of_one_pass() -> None:
    whole = BatchStream(SeedEcho(22), 4, augment=True, seed=5, drop_last=True)
    parts = [BatchStream(SeedEcho(22), 4, augment=True, seed=5, drop_last=True) for _ in range(2)]
    for rank, stream in enumerate(parts):
        stream.set_shard(StreamShard(rank, 2))
    assert len(whole) == 5 and [len(p) for p in parts] == [2, 2]  # 11 items each: 2 batches of 4
    reference = {item[0]: item for item in _items(whole)}
    seen = [_items(p) for p in parts]
    assert not {i[0] for i in seen[0]} & {i[0] for i in seen[1]}
    for items in seen:  # same item, same pass seed, same position in the pass as in the unsharded stream
        assert all(reference[item[0]] == item for item in items)
    # the next pass: a new permutation, still disjoint
    again = [_items(p) for p in parts]
    assert again[0] != seen[0] and not {i[0] for i in again[0]} & {i[0] for i in again[1]}


def test_a_sharded_stream_resumes_mid_pass() -> None:
    stream = BatchStream(SeedEcho(40), 4, augment=True, seed=1, drop_last=True)
    stream.set_shard(StreamShard(1, 2))
    _items(stream, batches=2)
    state = stream.state_dict()
    rest = _items(stream)
    restored = BatchStream(SeedEcho(40), 4, augment=True, seed=1, drop_last=True)
    restored.set_shard(StreamShard(1, 2))
    restored.load_state_dict(state)
    assert _items(restored) == rest and len(rest) == 12


def test_a_share_smaller_than_a_batch_is_refused() -> None:
    stream = BatchStream(SeedEcho(10), 8, drop_last=True)
    with pytest.raises(ValueError, match="give each of 2 processes 5, fewer than a batch of 8"):
        stream.set_shard(StreamShard(0, 2))
    started = BatchStream(SeedEcho(10), 2, augment=True)
    started.next_batch()
    with pytest.raises(ValueError, match="before the first batch"):
        started.set_shard(StreamShard(0, 2))


# --- environment and devices -----------------------------------------------------------------------------------
def test_torchrun_environment() -> None:
    assert torchrun_env({}) is None
    assert torchrun_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == (3, 4, 1)
    with pytest.raises(ValueError, match="RANK='x' is not an integer"):
        torchrun_env({"RANK": "x", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="is not a rank of the world"):
        torchrun_env({"RANK": "2", "WORLD_SIZE": "2"})
    assert restart_count({}) == 0 and restart_count({"TORCHELASTIC_RESTART_COUNT": "2"}) == 2


def test_backend_and_rank_device() -> None:
    assert backend_for("cpu") == "gloo" and backend_for("cuda:0") == "nccl"
    with pytest.raises(ValueError, match="only cpu and cuda"):
        backend_for("meta")
    assert rank_device("cpu", TWO) == "cpu"
    assert rank_device("cuda", TWO) == "cuda:1" and rank_device("cuda:1", SINGLE) == "cuda:1"
    with pytest.raises(ValueError, match="each one trains on its own GPU"):
        rank_device("cuda:0", TWO)


def test_a_single_process_needs_no_group() -> None:
    with distributed_session("cpu", environ={}) as ctx:
        assert ctx is SINGLE and not ctx.active and ctx.is_main and ctx.shard() is None
        assert on_main_rank(lambda: 7, ctx, "seven") == 7
        assert broadcast_object({"a": 1}, ctx, "a dict") == {"a": 1}
        assert all_reduce_sum([1, 2.5], ctx, "two numbers") == [1.0, 2.5]
        check_same("x", ctx, "a letter")
    with pytest.raises(ValueError, match="distributed timeout"):
        with distributed_session("cpu", timeout_s=0, environ={}):
            pass


# --- failures ---------------------------------------------------------------------------------------------------
def test_a_failed_collective_is_one_line_naming_rank_and_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    def closed(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("[pair.cc:553] Connection closed by peer [127.0.0.1]:4242\nmore lines")

    monkeypatch.setattr(distributed.dist, "broadcast_object_list", closed)
    with pytest.raises(PeerFailure) as info:
        broadcast_object(None, TWO, "the latency tables")
    message = str(info.value)
    assert message.startswith("rank 1 of 2: broadcast of the latency tables failed: another process of the run "
                              "died or did not answer within the 5 s timeout (gloo: [pair.cc:553] Connection closed")
    assert "\n" not in message
    # the backend's traceback is dropped: it would keep the collective's work alive to the process's end
    assert info.value.__suppress_context__ and info.value.__context__.__traceback__ is None


_ENDING_WORKER = """
import atexit, sys
from pathlib import Path
from search_client.training.distributed import exit_at_end_under_torchrun
atexit.register(lambda: Path(sys.argv[1]).write_text("atexit ran"))
with exit_at_end_under_torchrun():
    print("buffered line", end="")
    {body}
print("not reached under torchrun")
"""


@pytest.mark.parametrize(("body", "code", "err"), [
    ("pass", 0, ""),
    ("raise SystemExit(3)", 3, ""),
    ("raise SystemExit('error: one line')", 1, "error: one line"),
    ("raise KeyError('boom')", 1, "KeyError: 'boom'"),
])
def test_a_torchrun_process_ends_with_the_blocks_code_after_atexit_and_flushed_streams(
        tmp_path: Path, body: str, code: int, err: str) -> None:
    marker = tmp_path / "marker.txt"
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", _ENDING_WORKER.format(body=body), str(marker)], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == code, done.stderr
    assert done.stdout == "buffered line"  # flushed, and nothing after the block ran
    assert marker.read_text() == "atexit ran"
    assert err in done.stderr and (err or done.stderr == "")


def test_outside_torchrun_the_block_ends_as_usual() -> None:
    with pytest.raises(KeyError):
        with distributed.exit_at_end_under_torchrun(environ={}):
            raise KeyError("boom")
    with distributed.exit_at_end_under_torchrun(environ={}):
        pass


def test_rank_0s_error_reaches_the_other_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(distributed, "broadcast_object", lambda obj, ctx, what: ("value", "no such file t.json"))
    with pytest.raises(ValueError, match="^rank 0: no such file t.json$"):
        on_main_rank(lambda: pytest.fail("only rank 0 computes"), TWO, "the tables")
    main = DistContext(rank=0, world_size=2, backend="gloo", timeout_s=5.0)
    monkeypatch.setattr(distributed, "broadcast_object", lambda obj, ctx, what: obj)

    def missing() -> None:
        raise FileNotFoundError("t.json")

    with pytest.raises(FileNotFoundError):  # rank 0 raises its own error
        on_main_rank(missing, main, "the tables")


def test_ranks_that_disagree_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(distributed, "gather_objects", lambda value, ctx, what: ["aaa", "bbb"])
    with pytest.raises(RanksDisagree, match=r"the ranks disagree on the data \(rank 0: 'aaa', rank 1: 'bbb'\)"):
        check_same("aaa", TWO, "the data")


# --- gradient averaging -----------------------------------------------------------------------------------------
class _Reducer:
    """Stands in for dist.all_reduce with 2 identical ranks: the sum is twice the tensor; records sizes."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def __call__(self, tensor: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        self.sizes.append(tensor.numel())
        tensor.mul_(2)


def _model_with_one_idle_layer() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    net = torch.nn.ModuleList([torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)])
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    net[0](torch.randn(4, 3)).sum().backward()  # only layer 0 has gradients
    return net, opt


def test_gradients_of_the_parameters_that_ran_are_averaged_before_each_step(monkeypatch: pytest.MonkeyPatch) -> None:
    reducer = _Reducer()
    monkeypatch.setattr(distributed.dist, "all_reduce", reducer)
    monkeypatch.setattr(distributed, "gather_objects", lambda value, ctx, what: [value, value])
    net, opt = _model_with_one_idle_layer()
    before = [p.detach().clone() for p in net.parameters()]
    grads = [p.grad.clone() for p in net[0].parameters()]
    average_gradients_on_step(opt, TWO, "the test net")
    opt.step()
    assert reducer.sizes == [8]  # weight 2x3 + bias 2 of layer 0; layer 1 has no gradient and is left out
    for p, g in zip(net[0].parameters(), grads):
        assert torch.equal(p.grad, g)  # (g + g) / 2
    assert all(torch.equal(p, b) for p, b in zip(net[1].parameters(), before[2:]))
    average_gradients_now(opt)  # averaged now, then the step does not average again
    opt.step()
    assert reducer.sizes == [8, 8]
    with pytest.raises(ValueError, match="already attached"):
        average_gradients_on_step(opt, TWO, "the test net")


def test_ranks_with_gradients_of_different_parameters_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(distributed, "gather_objects", lambda value, ctx, what: [value, (5, "other")])
    _, opt = _model_with_one_idle_layer()
    average_gradients_on_step(opt, TWO, "the supernet's weights")
    with pytest.raises(RanksDisagree, match="the ranks computed gradients of different parameters \\(rank 0: 2 "
                                            "tensors, rank 1: 5 tensors\\); they must run the same paths"):
        opt.step()


def test_nothing_is_attached_in_a_single_process() -> None:
    _, opt = _model_with_one_idle_layer()
    average_gradients_on_step(opt, SINGLE, "the test net")
    assert not opt._optimizer_step_pre_hooks


# --- checkpoint and command line --------------------------------------------------------------------------------
def test_a_checkpoint_resumes_only_with_its_number_of_processes() -> None:
    config = SearchConfig(targets_ms=[1.0])
    state = {"config": config.to_dict(), "table_hashes": ["h"], "world_size": 2}
    check_checkpoint(state, config, ["h"], 2)
    with pytest.raises(ValueError, match=r"written by a search of 2 process\(es\); resume it with 2 \(--nproc 2\)"):
        check_checkpoint(state, config, ["h"], 1)
    check_checkpoint({k: v for k, v in state.items() if k != "world_size"}, config, ["h"], 1)


def test_nproc_starts_torchrun_with_the_same_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    cmd = torchrun_command("search", ["--out", "runs/x", "--epochs", "2"], 4)
    assert cmd[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4", "-m"]
    assert cmd[6:] == ["search_client.cli", "search", "--out", "runs/x", "--epochs", "2"]
    check_nproc(2)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="already runs under torchrun"):
        check_nproc(2)
    check_nproc(1)


def _one_rank_environ() -> dict[str, str]:
    """A torchrun environment of a world of one, its store on a free local port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}


def test_the_ranks_meet_before_the_group_is_destroyed_after_a_normal_end_only(monkeypatch: pytest.MonkeyPatch
                                                                               ) -> None:
    barriers: list[bool] = []
    real_barrier = distributed.dist.barrier
    monkeypatch.setattr(distributed.dist, "barrier", lambda *a, **k: (barriers.append(True), real_barrier(*a, **k)))
    with distributed_session("cpu", timeout_s=30, environ=_one_rank_environ()) as ctx:
        assert ctx.world_size == 1 and distributed.dist.is_initialized() and not barriers
    assert barriers == [True] and not distributed.dist.is_initialized()
    with pytest.raises(RuntimeError, match="boom"):
        with distributed_session("cpu", timeout_s=30, environ=_one_rank_environ()):
            raise RuntimeError("boom")
    assert barriers == [True] and not distributed.dist.is_initialized()  # no barrier after an error
