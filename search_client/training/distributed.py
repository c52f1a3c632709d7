"""torch.distributed for the search and the retraining: the process group from torchrun's environment, rank
helpers, collectives that fail with a clear error, gradient averaging, and the sharding rule of the data streams.

Process group. Under ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT`` in
the environment) :func:`distributed_session` starts the process group: gloo when the training device is the CPU,
NCCL on CUDA (process ``LOCAL_RANK`` of a node trains on ``cuda:LOCAL_RANK``). Outside torchrun it yields
:data:`SINGLE` (one process, no group) and every helper here does nothing, so the same code runs both ways.

Failures. Every collective of the search goes through this module. A collective that fails (a peer closed its
connection because it died, or nothing arrived within the group's timeout: a peer that hangs) raises
:class:`PeerFailure`, one line naming this rank, the collective and the timeout. torchrun also ends the other
processes when one exits with an error, and ``torchrun --max-restarts K`` starts them all again
(:func:`restart_count` tells a restarted process that it is one, so that it resumes from its checkpoint).

Ending. A process that ran a process group ends through :func:`exit_at_end_under_torchrun` (the commands, the
workers): once its work is done it exits without the interpreter's finalization, in which gloo's threads can
abort it (:func:`exit_now`).

Sharding (:class:`StreamShard`): every rank draws the same permutation of a pass (the streams are seeded alike);
rank r of W takes the pass positions r, r + W, r + 2W, ... below ``(n // W) * W``. The shares are disjoint and
of equal size (every rank makes the same number of steps, so no collective waits for a rank that ran out of
data); the ``n mod W`` positions at the end of a pass are left out of that pass (other items each pass, since the
permutation changes). A stream's position (pass order, batches taken) is the same on every rank, so the one
checkpoint rank 0 writes restores every rank's stream.

Gradients (:func:`average_gradients_on_step`): before each step of an optimizer, the gradients its parameters
hold are averaged over the ranks in one all-reduce. Parameters without a gradient (a path that did not run in a
search step) are left out; the set of parameters with a gradient must be the same on every rank (the search
samples the same paths everywhere), and it is checked before the all-reduce.
"""

from __future__ import annotations

import atexit
import datetime
import gc
import hashlib
import os
import sys
import traceback
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import numpy as np
import torch
import torch.distributed as dist

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 600.0
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


class DistributedError(RuntimeError):
    """The run of several processes cannot go on (the message says why, in one line)."""


class PeerFailure(DistributedError):
    """A collective failed: another process of the run died, or did not answer within the timeout."""


class RanksDisagree(DistributedError):
    """The ranks hold different values where they must hold the same (tables, data, paths, replicas)."""


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the run: rank, world size, local rank (its GPU on a node), the process
    group's backend (None: one process, no group) and timeout, and the device that collectives' tensors live on
    (CPU for gloo, this rank's GPU for NCCL)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    timeout_s: float | None = None
    collective_device: str = "cpu"

    @property
    def active(self) -> bool:
        """Whether a process group runs (under torchrun, even with one process)."""
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that reads tables and checkpoints, talks to devices and writes every output."""
        return self.rank == 0

    def shard(self) -> StreamShard | None:
        """This rank's share of the data streams; None in a single process."""
        return StreamShard(self.rank, self.world_size) if self.world_size > 1 else None


SINGLE = DistContext()


@dataclass(frozen=True)
class StreamShard:
    """Rank ``rank``'s share of every pass of a stream of ``world_size`` ranks (rule in the module docstring)."""

    rank: int
    world_size: int

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"shard: rank {self.rank} of world size {self.world_size}")

    def count(self, n: int) -> int:
        """Items of a pass over ``n`` that each rank gets."""
        return n // self.world_size

    def positions(self, n: int) -> np.ndarray:
        """The positions (into a pass over ``n`` items) of this rank's items, in order."""
        return np.arange(self.rank, self.count(n) * self.world_size, self.world_size, dtype=np.int64)


# --- environment ------------------------------------------------------------------------------------------------
def _int_variable(environ: Mapping[str, str], name: str) -> int:
    value = environ.get(name)
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"torchrun environment: {name}={value!r} is not an integer") from None


def torchrun_env(environ: Mapping[str, str] | None = None) -> tuple[int, int, int] | None:
    """(rank, world size, local rank) set by torchrun; None when this process was not started by it.
    ValueError for a malformed or inconsistent environment."""
    environ = os.environ if environ is None else environ
    if "RANK" not in environ and "WORLD_SIZE" not in environ:
        return None
    rank, world = _int_variable(environ, "RANK"), _int_variable(environ, "WORLD_SIZE")
    local = _int_variable(environ, "LOCAL_RANK") if "LOCAL_RANK" in environ else rank
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ValueError(f"torchrun environment: RANK={rank} WORLD_SIZE={world} LOCAL_RANK={local} is not a "
                         "rank of the world")
    return rank, world, local


def restart_count(environ: Mapping[str, str] | None = None) -> int:
    """How many times torchrun restarted the processes of this run (``--max-restarts``); 0 on the first try."""
    environ = os.environ if environ is None else environ
    if "TORCHELASTIC_RESTART_COUNT" not in environ:
        return 0
    return _int_variable(environ, "TORCHELASTIC_RESTART_COUNT")


def backend_for(train_device: str) -> str:
    """The process group's backend for a training device: gloo for the CPU, NCCL for CUDA."""
    kind = torch.device(train_device).type
    if kind == "cpu":
        return "gloo"
    if kind == "cuda":
        return "nccl"
    raise ValueError(f"train device {train_device!r}: only cpu and cuda are supported")


def rank_device(train_device: str, ctx: DistContext) -> str:
    """The device this rank trains on: the CPU, or ``cuda:LOCAL_RANK`` for ``cuda`` when several processes run
    (one GPU per process). ValueError for a numbered GPU in a run of several processes."""
    device = torch.device(train_device)
    if device.type != "cuda" or ctx.world_size == 1 and not ctx.active:
        return str(device)
    if device.index is not None and ctx.world_size > 1:
        raise ValueError(f"train device {train_device!r}: with several processes each one trains on its own GPU "
                         "(cuda:LOCAL_RANK); give --train-device cuda")
    return f"cuda:{ctx.local_rank if device.index is None else device.index}"


@contextmanager
def distributed_session(train_device: str = "cpu", *, timeout_s: float = DEFAULT_TIMEOUT_S,
                        environ: Mapping[str, str] | None = None) -> Iterator[DistContext]:
    """The run's :class:`DistContext`: a process group for the block when started by torchrun (destroyed after
    it, also after an error), :data:`SINGLE` otherwise. ValueError for a bad timeout or device."""
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
        raise ValueError(f"distributed timeout: must be a number of seconds > 0, got {timeout_s!r}")
    place = torchrun_env(environ)
    if place is None:
        yield SINGLE
        return
    rank, world, local = place
    backend = backend_for(train_device)
    collective_device = "cpu"
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise ValueError(f"train device {train_device!r}: CUDA is not available here")
        if local >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {local}: this node has {torch.cuda.device_count()} GPU(s); start at most "
                             "one process per GPU")
        torch.cuda.set_device(local)
        collective_device = f"cuda:{local}"
    timeout = datetime.timedelta(seconds=timeout_s)
    dist.init_process_group(backend, store=_attempt_store(environ or os.environ, rank, world, timeout), rank=rank,
                            world_size=world, timeout=timeout)
    ctx = DistContext(rank, world, local, backend, float(timeout_s), collective_device)
    try:
        yield ctx
        # Tear down together: a rank that destroys its group (and exits) while rank 0 still writes the run's files
        # can abort in gloo's teardown ("terminate called without an active exception", SIGABRT), seen under
        # load. Not after an error: the other ranks may never come to the barrier.
        with _collective(ctx, "the closing barrier"):
            dist.barrier()
    finally:
        dist.destroy_process_group()
        gc.collect()  # what still holds the group's work or tensors goes now, while the interpreter is whole


def exit_now(code: int) -> NoReturn:
    """End this process with ``code`` without the interpreter's finalization; the atexit handlers run and the
    standard streams are flushed first. For a process that ran a process group: gloo's threads may still release
    tensors when the interpreter tears itself down, and a thread that takes the GIL then aborts the process
    (SIGABRT, "terminate called without an active exception", seen under load after a run's work was done;
    pytorch/pytorch#179291). Skipping the finalization leaves nothing for them to race with."""
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken stream: nothing more can reach it
            pass
    os._exit(code)


@contextmanager
def exit_at_end_under_torchrun(environ: Mapping[str, str] | None = None) -> Iterator[None]:
    """Around the whole work of a process (a command, a worker): started by torchrun, the process ends when the
    block does, through :func:`exit_now`, with exit code 0, a SystemExit's code, or 1 after any other exception
    (its traceback printed first). Outside torchrun the block runs as it is."""
    if torchrun_env(environ) is None:
        yield
        return
    code = 0
    try:
        yield
    except SystemExit as exc:
        code = _exit_status(exc.code)
    except BaseException:  # noqa: BLE001 - printed, then the process ends with code 1
        traceback.print_exc()
        code = 1
    exit_now(code)


def _exit_status(code: object) -> int:
    """The process exit status Python gives ``SystemExit(code)`` (None: 0; an integer as it is; else printed, 1)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _attempt_store(environ: Mapping[str, str], rank: int, world: int, timeout: datetime.timedelta) -> dist.Store:
    """The rendezvous store of this attempt: torchrun's agent store (or, started by hand, one that rank 0 hosts at
    MASTER_ADDR:MASTER_PORT) under a prefix per restart. torchrun keeps one store across ``--max-restarts``, and
    without the prefix a restarted process reads the addresses of the processes that died."""
    address = environ.get("MASTER_ADDR")
    if not address:
        raise ValueError("torchrun environment: MASTER_ADDR is not set")
    port = _int_variable(environ, "MASTER_PORT")
    agent_store = environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(address, port, world, is_master=not agent_store and rank == 0, timeout=timeout,
                          multi_tenant=True)
    return dist.PrefixStore(f"proxyless/attempt_{restart_count(environ)}", store)


# --- collectives --------------------------------------------------------------------------------------------------
@contextmanager
def _collective(ctx: DistContext, what: str) -> Iterator[None]:
    """Turn the failure of a collective into :class:`PeerFailure` (one line, no backend trace)."""
    try:
        yield
    except RuntimeError as exc:
        if isinstance(exc, DistributedError):
            raise
        cause = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        # The backend's traceback keeps the collective's frames (its work and tensors) alive for as long as the
        # error is (to the process's end, in a command that reports it): dropped here.
        exc.__traceback__ = None
        raise PeerFailure(
            f"rank {ctx.rank} of {ctx.world_size}: {what} failed: another process of the run died or did not "
            f"answer within the {ctx.timeout_s:g} s timeout ({ctx.backend}: {cause[:300]})") from None


def broadcast_object(obj: T | None, ctx: DistContext, what: str, src: int = 0) -> T:
    """``obj`` of rank ``src`` on every rank (pickled); ``obj`` itself in a single process."""
    if not ctx.active:
        return obj  # type: ignore[return-value]
    box = [obj]
    with _collective(ctx, f"broadcast of {what}"):
        dist.broadcast_object_list(box, src=src, device=torch.device(ctx.collective_device))
    return box[0]  # type: ignore[return-value]


def gather_objects(obj: Any, ctx: DistContext, what: str) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not ctx.active:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    with _collective(ctx, f"gathering of {what}"):
        dist.all_gather_object(out, obj)
    return out


def on_main_rank(compute: Callable[[], T], ctx: DistContext, what: str) -> T:
    """Run ``compute`` on rank 0 alone and hand its result to every rank. An exception it raises is raised on
    rank 0 as it is, and on the other ranks as a ValueError (for a ValueError) or :class:`DistributedError`
    with rank 0's message, so that they stop with it instead of waiting."""
    if not ctx.active:
        return compute()
    outcome: tuple[str, Any] | None = None
    error: Exception | None = None
    if ctx.is_main:
        try:
            outcome = ("ok", compute())
        except Exception as exc:  # noqa: BLE001 - re-raised below, on every rank
            error = exc
            outcome = ("value" if isinstance(exc, ValueError) else "other", str(exc))
    kind, value = broadcast_object(outcome, ctx, what)
    if error is not None:
        raise error
    if kind == "value":
        raise ValueError(f"rank 0: {value}")
    if kind == "other":
        raise DistributedError(f"rank 0 failed while reading {what}: {value}")
    return value


def check_same(value: Any, ctx: DistContext, what: str) -> None:
    """:class:`RanksDisagree` naming the ranks when ``value`` (small, comparable) is not the same on every
    rank."""
    values = gather_objects(value, ctx, what)
    if any(v != values[0] for v in values):
        differ = ", ".join(f"rank {r}: {v!r}"[:120] for r, v in enumerate(values))
        raise RanksDisagree(f"the ranks disagree on {what} ({differ})")


def all_reduce_sum(values: Sequence[float], ctx: DistContext, what: str) -> list[float]:
    """The sums over the ranks of ``values`` (float64)."""
    if not ctx.active:
        return [float(v) for v in values]
    buffer = torch.tensor([float(v) for v in values], dtype=torch.float64, device=ctx.collective_device)
    with _collective(ctx, f"all-reduce of {what}"):
        dist.all_reduce(buffer)
    return [float(v) for v in buffer.cpu()]


def average_tensors_(tensors: Sequence[torch.Tensor], ctx: DistContext, what: str) -> None:
    """Replace each tensor by its mean over the ranks, in place: one all-reduce per dtype over a flat buffer. Every
    rank holds the same result, bit for bit."""
    if not ctx.active or ctx.world_size == 1 or not tensors:
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for group in by_dtype.values():
        flat = torch.cat([t.detach().reshape(-1) for t in group])
        with _collective(ctx, f"all-reduce of {what}"):
            dist.all_reduce(flat)
        flat.div_(ctx.world_size)
        offset = 0
        for t in group:
            n = t.numel()
            t.detach().copy_(flat[offset:offset + n].view_as(t))
            offset += n


def broadcast_tensors_(tensors: Sequence[torch.Tensor], ctx: DistContext, what: str, src: int = 0) -> None:
    """Overwrite each tensor, in place, with rank ``src``'s: one broadcast per dtype over a flat buffer."""
    if not ctx.active or ctx.world_size == 1 or not tensors:
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for group in by_dtype.values():
        flat = torch.cat([t.detach().reshape(-1) for t in group])
        with _collective(ctx, f"broadcast of {what}"):
            dist.broadcast(flat, src=src)
        offset = 0
        for t in group:
            n = t.numel()
            t.detach().copy_(flat[offset:offset + n].view_as(t))
            offset += n


def align_module(module: torch.nn.Module, ctx: DistContext, what: str) -> None:
    """Give every rank rank 0's parameters and buffers of ``module`` (as DDP does when it wraps a model), so the
    replicas start equal even where the ranks' random initialisations could differ."""
    broadcast_tensors_([*module.parameters(), *module.buffers()], ctx, what)


def tensors_digest(tensors: Sequence[torch.Tensor]) -> str:
    """SHA-256 of the tensors' bytes (to compare replicas across ranks)."""
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def average_batchnorm_stats(modules: Sequence[torch.nn.Module], ctx: DistContext) -> None:
    """Average the running mean and variance of the batch-norm layers in ``modules`` over the ranks (every rank
    then evaluates with the same statistics). After a re-estimation over the same number of batches on each rank,
    the mean of the ranks' cumulative averages is the cumulative average over all their batches."""
    norms = [m for module in modules for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
             and m.running_mean is not None]
    buffers = [b for m in norms for b in (m.running_mean, m.running_var)]
    average_tensors_(buffers, ctx, "batch-norm statistics")


# --- gradients ----------------------------------------------------------------------------------------------------
class _GradientAveraging:
    """The averaging attached to one optimizer: run once per step, before it (see :func:`average_gradients_now`)."""

    def __init__(self, ctx: DistContext, what: str) -> None:
        self.ctx, self.what = ctx, what
        self.done = False

    def average(self, optimizer: torch.optim.Optimizer) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        with_grad = [i for i, p in enumerate(params) if p.grad is not None]
        layout = hashlib.sha256(np.asarray(with_grad, dtype=np.int64).tobytes()).hexdigest()[:16]
        layouts = gather_objects((len(with_grad), layout), self.ctx, f"the gradient layout of {self.what}")
        if any(v != layouts[0] for v in layouts):
            raise RanksDisagree(f"{self.what}: the ranks computed gradients of different parameters "
                               f"({', '.join(f'rank {r}: {n} tensors' for r, (n, _) in enumerate(layouts))}); they "
                               "must run the same paths (same seed, same sampling)")
        average_tensors_([params[i].grad for i in with_grad], self.ctx, f"the gradients of {self.what}")
        self.done = True

    def before_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self.done:
            self.done = False
            return
        self.average(optimizer)
        self.done = False


_ATTACHED: weakref.WeakKeyDictionary[torch.optim.Optimizer, _GradientAveraging] = weakref.WeakKeyDictionary()


def average_gradients_on_step(optimizer: torch.optim.Optimizer, ctx: DistContext, what: str) -> None:
    """Average the gradients of ``optimizer``'s parameters over the ranks before each of its steps (rule in the
    module docstring); nothing in a single process. ``what`` names the optimizer in error messages."""
    if not ctx.active or ctx.world_size == 1:
        return
    if optimizer in _ATTACHED:
        raise ValueError(f"{what}: gradient averaging is already attached to this optimizer")
    averaging = _GradientAveraging(ctx, what)
    _ATTACHED[optimizer] = averaging
    optimizer.register_step_pre_hook(averaging.before_step)


def average_gradients_now(optimizer: torch.optim.Optimizer) -> None:
    """Average the gradients now, before the step (which then does not average again). For a step that may be
    skipped on inspection of the gradients (a gradient scaler that finds inf): averaged first, every rank sees the
    same gradients and skips or takes the same step. Nothing when no averaging is attached."""
    averaging = _ATTACHED.get(optimizer)
    if averaging is not None:
        averaging.average(optimizer)
