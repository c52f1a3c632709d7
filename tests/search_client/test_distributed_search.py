"""One search across 2 processes (torchrun, gloo, 1 thread each) on micro-16: the ranks hold bit-identical alphas
after every step, see disjoint data, derive the same architecture; only rank 0 reads the table and the checkpoint
and writes files; a stopped 2-process run resumed equals an uninterrupted one, also after a torchrun restart; a
rank that dies or hangs ends the run with a clear error, never a hang.

The file is also the worker those runs start: ``python tests/search_client/test_distributed_search.py SPEC.json``
under torchrun (or with the torchrun environment set by hand) runs :func:`search_worker`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
if __name__ == "__main__":  # started as a worker: the repository on the path, like pytest's rootdir
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from search_client.nas import search_loop  # noqa: E402
from search_client.nas.callbacks import SearchCallbacks  # noqa: E402
from search_client.nas.config import SearchConfig  # noqa: E402
from search_client.nas.distributed_search import broadcast_tables, resumes_after_restart  # noqa: E402
from search_client.table.latency_table import LatencyTable  # noqa: E402
from search_client.training.datasets import DataOptions  # noqa: E402
from search_client.training.distributed import (  # noqa: E402
    DistributedError,
    distributed_session,
    exit_at_end_under_torchrun,
    tensors_digest,
)
from tests.search_client.conftest import make_table  # noqa: E402

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
LAUNCH_TIMEOUT_S = 90


# --- the worker (runs in each rank) -----------------------------------------------------------------------------
class Recorder(SearchCallbacks):
    """Records, on every rank, the alphas' digest after every step and each step's input batch; injects the
    failure a test asks for (exit, SIGKILL or hang of one rank at one point)."""

    def __init__(self, spec: dict[str, Any], rank: int) -> None:
        self.spec, self.rank = spec, rank
        self.run: search_loop.SearchRun | None = None
        self.alphas: list[str] = []
        self.batches: list[float] = []
        self.steps = 0

    def warning(self, message: str) -> None:
        pass

    def epoch_start(self, epoch: int, total_epochs: int, phase: str, steps: int) -> None:
        fail = self.spec.get("exit_at_epoch")
        if fail and fail["rank"] == self.rank and fail["epoch"] == epoch and "TORCHELASTIC_RESTART_COUNT" in os.environ \
                and int(os.environ["TORCHELASTIC_RESTART_COUNT"]) == 0:
            os._exit(17)

    def step(self) -> None:
        assert self.run is not None
        self.steps += 1
        self.alphas.append(tensors_digest(self.run.supernet.arch_parameters()))
        fail = self.spec.get("fail_at_step")
        if fail and fail["rank"] == self.rank and fail["step"] == self.steps:
            if fail["how"] == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(600)  # hang: the test ends this process


def search_worker(spec: dict[str, Any]) -> None:
    """Run the search ``spec`` describes on this rank and write what it saw to ``records/rank<r>.json``."""
    torch.set_num_threads(1)
    with distributed_session("cpu", timeout_s=spec.get("timeout_s", 60)) as ctx:
        recorder = Recorder(spec, ctx.rank)

        class RecordingRun(search_loop.SearchRun):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                recorder.run = self

            def _to_device(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
                recorder.batches.append(float(batch[0].double().sum()))
                return super()._to_device(batch)

        search_loop.SearchRun = RecordingRun  # type: ignore[misc]
        # rank 0 alone reads the table file and writes into "out": the other ranks get paths that do not exist
        table_file = spec["table"] if ctx.is_main else spec["table"] + f".rank{ctx.rank}"
        out = Path(spec["out"] if ctx.is_main else spec["out"] + f".rank{ctx.rank}")
        tables = broadcast_tables(lambda: [LatencyTable.load(table_file)], ctx)
        config = SearchConfig.from_dict(spec["config"])
        for stop in spec.get("stops", [None]):
            resume = spec.get("resume", False) or resumes_after_restart(out, ctx)
            result = search_loop.run_search(config, tables, out, resume=resume, callbacks=recorder,
                                            stop_after_epochs=stop, dist=ctx)
            spec = {**spec, "resume": True}
        assert recorder.run is not None
        record = {"rank": ctx.rank, "world_size": ctx.world_size, "alphas": recorder.alphas,
                  "batches": recorder.batches, "choices": result.choices, "finished": result.finished,
                  "final_alphas": [a.tolist() for a in recorder.run.supernet.arch_parameters()],
                  "weights": tensors_digest(recorder.run.supernet.weight_parameters()),
                  "history": [{k: v for k, v in row.items() if k != "seconds"} for row in result.history],
                  "out_exists": out.exists()}
        records = Path(spec["records"])
        records.mkdir(parents=True, exist_ok=True)
        (records / f"rank{ctx.rank}.json").write_text(json.dumps(record))


# --- helpers of the tests ---------------------------------------------------------------------------------------
def _config(**overrides: Any) -> dict[str, Any]:
    table = make_table("micro-16")
    low, high = table.min_latency()[0], table.max_latency()[0]
    base: dict[str, Any] = dict(targets_ms=[low + 0.4 * (high - low)], data=DataOptions("synthetic:180:10"), epochs=2,
                                warmup_epochs=0, batch_size=16, loss="add#linear", arch_every=2)
    return SearchConfig(**{**base, **overrides}).to_dict()


def _spec(tmp: Path, name: str, **fields: Any) -> Path:
    table = tmp / "table.json"
    if not table.exists():
        make_table("micro-16").save(table)
    spec = {"table": str(table), "out": str(tmp / name / "out"), "records": str(tmp / name / "records"),
            "config": _config(), **fields}
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(spec))
    return path


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _torchrun(spec: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [*TORCHRUN, *extra, str(Path(__file__).resolve()), str(spec)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S, env=_env(), check=False)


def _records(spec: Path) -> list[dict[str, Any]]:
    records = Path(json.loads(spec.read_text())["records"])
    return [json.loads((records / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    """An uninterrupted 2-process search (2 epochs), and in the same launch the same search stopped after its
    first epoch and resumed from its checkpoint (out dir ``stopped``)."""
    tmp = tmp_path_factory.mktemp("distributed")
    spec = _spec(tmp, "straight")
    done = _torchrun(spec)
    assert done.returncode == 0, done.stderr[-3000:]
    stopped = _spec(tmp, "stopped", stops=[1, None])
    again = _torchrun(stopped)
    assert again.returncode == 0, again.stderr[-3000:]
    return tmp, [*_records(spec), *_records(stopped)]


# --- the tests ------------------------------------------------------------------------------------------------------
def test_ranks_hold_identical_alphas_after_every_step_and_derive_one_architecture(
        straight: tuple[Path, list[dict[str, Any]]]) -> None:
    tmp, (rank0, rank1, _, _) = straight
    assert rank0["world_size"] == rank1["world_size"] == 2
    # synthetic:180:10 holds out 40 images: 140 train images, 70 per rank, 4 steps of 16 per epoch
    assert len(rank0["alphas"]) == len(rank1["alphas"]) == 8
    assert rank0["alphas"] == rank1["alphas"]
    assert len(set(rank0["alphas"])) > 1  # the alphas moved
    assert rank0["weights"] == rank1["weights"]
    assert rank0["choices"] == rank1["choices"] and rank0["finished"]
    assert rank0["history"] == rank1["history"]
    # the ranks trained on disjoint shares of each pass
    assert not set(rank0["batches"]) & set(rank1["batches"])


def test_only_rank_0_reads_the_table_and_writes(straight: tuple[Path, list[dict[str, Any]]]) -> None:
    tmp, (rank0, rank1, _, _) = straight
    assert rank0["out_exists"] and not rank1["out_exists"]
    out = tmp / "straight" / "out"
    for name in ("log.jsonl", "log.csv", "checkpoint.pt", "arch.json", "weights.pt", "model.onnx", "summary.json"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["distributed_backend"] == "gloo"
    assert summary["choices"] == rank0["choices"]
    assert len((out / "log.jsonl").read_text().splitlines()) == 2
    assert torch.load(out / "checkpoint.pt", weights_only=True)["world_size"] == 2


def test_a_resumed_two_process_search_equals_an_uninterrupted_one(
        straight: tuple[Path, list[dict[str, Any]]]) -> None:
    _, (rank0, _, resumed0, resumed1) = straight
    assert resumed0["final_alphas"] == rank0["final_alphas"]
    assert resumed0["weights"] == rank0["weights"] == resumed1["weights"]
    assert resumed0["history"] == rank0["history"]
    assert resumed0["choices"] == rank0["choices"]
    # the resumed launch made its first epoch, stopped, and made the second from the checkpoint
    assert resumed0["alphas"] == rank0["alphas"]


def test_reinforce_ranks_share_rewards_and_alphas(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "reinforce", config=_config(grad_estimator="reinforce", reinforce_samples=2, epochs=1))
    done = _torchrun(spec)
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = _records(spec)
    assert len(rank0["alphas"]) == 4 and rank0["alphas"] == rank1["alphas"] and len(set(rank0["alphas"])) > 1
    assert rank0["choices"] == rank1["choices"]


CLI = [sys.executable, "-m", "search_client.cli"]
CLI_COMMON = ["--data", "synthetic:180:10", "--epochs", "1", "--batch-size", "16", "--train-threads", "1",
              "--nproc", "2"]


def test_search_with_nproc_2(tmp_path: Path) -> None:
    table = make_table("micro-16")
    path = table.save(tmp_path / "table.json")
    target = (table.min_latency()[0] + table.max_latency()[0]) / 2
    search = subprocess.run([*CLI, "search", "--table", str(path), "--target-ms", f"{target:.4f}", "--out",
                             str(tmp_path / "run"), "--arch-every", "2", "--no-progress", "--deterministic",
                             *CLI_COMMON], capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S, env=_env(),
                            check=False)
    assert search.returncode == 0, search.stderr[-3000:]
    assert search.stdout.count("architecture:") == 1  # rank 0 alone prints
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (summary["world_size"], summary["distributed_backend"], summary["deterministic"]) == (2, "gloo", True)


def test_train_with_nproc_2(tmp_path: Path) -> None:
    space = make_table("micro-16").space
    arch = space.architecture([0] * len(space.cells()))
    arch.save(tmp_path / "arch.json")
    train = subprocess.run([*CLI, "train", str(tmp_path / "arch.json"), "--out", str(tmp_path / "retrain"),
                            *CLI_COMMON], capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S, env=_env(),
                           check=False)
    assert train.returncode == 0, train.stderr[-3000:]
    assert train.stdout.count("on the held-out split") == 1 and train.stdout.count("epoch 1/1") == 1
    runtime = json.loads((tmp_path / "retrain" / "train_summary.json").read_text())["runtime"]
    assert (runtime["world_size"], runtime["distributed_backend"]) == (2, "gloo")


def test_torchrun_restart_resumes_from_the_last_checkpoint(straight: tuple[Path, list[dict[str, Any]]]) -> None:
    tmp, (rank0, *_) = straight
    spec = _spec(tmp, "restarted", exit_at_epoch={"rank": 1, "epoch": 2})
    done = _torchrun(spec, "--max-restarts", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    restarted0, restarted1 = _records(spec)
    assert restarted0["final_alphas"] == rank0["final_alphas"]
    assert restarted0["weights"] == restarted1["weights"] == rank0["weights"]
    assert restarted0["history"] == rank0["history"]
    # the restarted processes ran only the second epoch (4 steps), from the first epoch's checkpoint
    assert len(restarted0["alphas"]) == 4 and restarted0["alphas"] == rank0["alphas"][4:]


def test_a_rank_killed_mid_run_ends_the_run_with_an_error(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "killed", fail_at_step={"rank": 1, "step": 3, "how": "kill"})
    done = _torchrun(spec)  # bounded: subprocess.run's timeout fails the test if the run hangs
    assert done.returncode != 0
    assert "rank      : 1" in done.stderr and "SIGKILL" in done.stderr
    assert not (Path(json.loads(spec.read_text())["records"]) / "rank0.json").exists()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_hanging_rank_ends_the_others_at_the_timeout_with_a_clear_error(tmp_path: Path) -> None:
    """Without torchrun's agent to end the processes: rank 1 stops answering, rank 0 fails at the gloo timeout."""
    spec = _spec(tmp_path, "hung", fail_at_step={"rank": 1, "step": 2, "how": "hang"}, timeout_s=5)
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {**_env(), "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, str(Path(__file__).resolve()), str(spec)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        _, err = procs[0].communicate(timeout=LAUNCH_TIMEOUT_S)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    assert procs[0].returncode == 1, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: rank 0 of 2: ") and "did not answer within the 5 s timeout" in last, last


def test_each_rank_checks_the_tables_content_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    """A rank whose copy of a table does not have rank 0's content hash refuses to train."""
    import search_client.nas.distributed_search as distributed_search
    from search_client.training.distributed import DistContext

    sent = make_table("micro-16")
    other = make_table("micro-16", scale=2.0)
    monkeypatch.setattr(distributed_search, "on_main_rank",
                        lambda compute, ctx, what: [(sent.to_dict(), other.content_hash())])
    ctx = DistContext(rank=1, world_size=2, backend="gloo", timeout_s=5.0)
    with pytest.raises(ValueError, match="latency table 0: rank 1's copy has content hash"):
        broadcast_tables(lambda: pytest.fail("only rank 0 loads the tables"), ctx)


def main() -> None:
    """Worker entry point: run the spec; a distributed failure is one line on stderr and exit code 1. The process
    ends as the commands' do (:func:`exit_at_end_under_torchrun`)."""
    with exit_at_end_under_torchrun():
        try:
            search_worker(json.loads(Path(sys.argv[1]).read_text()))
        except DistributedError as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(1) from None


if __name__ == "__main__":
    main()
