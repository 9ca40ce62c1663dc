"""Data parallelism (`sdlora train --gpus N`), on the CPU with gloo: gradients are averaged across processes, and
a run of several processes leaves one run folder that only rank 0 writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import yaml
from safetensors import safe_open

from sdlora.commands.train import without_gpus_flag
from sdlora.train.distributed import GradientSync


def _average_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2, 2))]
    sync = GradientSync(params)
    # Each rank's gradients differ: rank r holds r+1 everywhere, so the mean is (1 + 2) / 2 = 1.5.
    (params[0].sum() * (rank + 1) + params[1].sum() * (rank + 1)).backward()
    sync.all_reduce()
    torch.save([p.grad.clone() for p in params], f"{out}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_gradient_sync_averages_the_gradients_of_all_processes(tmp_path):
    from sdlora.train.distributed import _free_port

    mp.spawn(_average_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        grads = torch.load(tmp_path / f"rank{rank}.pt")
        assert [g.shape for g in grads] == [torch.Size([3]), torch.Size([2, 2])]
        assert all(torch.equal(g, torch.full_like(g, 1.5)) for g in grads), grads


def test_the_workers_get_the_command_line_without_the_gpus_flag():
    assert without_gpus_flag(["train", "--preset", "p.yaml", "--gpus", "2", "--set", "a=1"]) == \
        ["train", "--preset", "p.yaml", "--set", "a=1"]
    assert without_gpus_flag(["train", "--gpus=4", "--preset", "p.yaml"]) == ["train", "--preset", "p.yaml"]


def adapter_shapes(path: Path) -> dict[str, tuple]:
    with safe_open(str(path), "pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


@pytest.mark.slow  # two training processes: ~23 s on 2 cores
def test_two_processes_train_one_run_that_rank_0_writes(shapes_dir, tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text(yaml.safe_dump({
        "name": "dp", "model": "tiny", "data": {"dir": str(shapes_dir), "resolution": 64, "repeats": 2},
        "network": {"rank": 4}, "train": {"steps": 4, "batch_size": 2, "device": "cpu"},
        "save": {"output_dir": str(tmp_path / "out"), "every": 2}}))
    proc = subprocess.run([sys.executable, "-m", "sdlora", "train", "--preset", str(preset), "--gpus", "2"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = tmp_path / "out" / "dp"
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    kinds = [e["event"] for e in events]
    # One writer: each step once, one start and one done (two writers would double them).
    assert [e["step"] for e in events if e["event"] == "step"] == [1, 2, 3, 4]
    assert kinds.count("start") == 1 and kinds.count("done") == 1
    assert "x 2 processes" in events[0]["message"]
    assert proc.stderr.count("adapter: ") == 1
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000002", "step-000004"]
    # The adapter has the form of a single-process run's (here, in this process): same layers, same shapes.
    from sdlora.config import load_config, replace_keys
    from sdlora.events import EventBus
    from sdlora.train.rundir import new_run
    from sdlora.train.trainer import Trainer

    config = replace_keys(load_config(preset), {"name": "single", "train.steps": 1})
    single = Trainer(config, new_run(config), EventBus())
    single.setup()
    assert single.run().status == "done"
    assert adapter_shapes(run / "dp.safetensors") == adapter_shapes(tmp_path / "out" / "single" / "single.safetensors")


def _pid_with_env(marker: str, rank: str) -> int | None:
    """The process whose environment holds `marker` and RANK=`rank` (a worker of the launcher under test)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            env = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker.encode() in env and f"RANK={rank}".encode() in env and b"LOCAL_RANK=" + rank.encode() in env:
            return int(proc.name)
    return None


@pytest.mark.slow
def test_a_dead_worker_ends_the_run_within_seconds_naming_it(shapes_dir, tmp_path):
    import signal
    import time
    import uuid

    preset = tmp_path / "p.yaml"
    preset.write_text(yaml.safe_dump({
        "name": "dead", "model": "tiny", "data": {"dir": str(shapes_dir), "resolution": 64, "repeats": 2},
        "network": {"rank": 4}, "train": {"steps": 100000, "batch_size": 2, "device": "cpu"},
        "save": {"output_dir": str(tmp_path / "out")}}))
    marker = f"SDLORA_TEST_MARK={uuid.uuid4().hex}"
    env = dict(os.environ, SDLORA_TEST_MARK=marker.split("=", 1)[1])
    proc = subprocess.Popen([sys.executable, "-m", "sdlora", "train", "--preset", str(preset), "--gpus", "2"],
                            stderr=subprocess.PIPE, text=True, env=env)
    events = tmp_path / "out" / "dead" / "events.jsonl"
    deadline = time.monotonic() + 300
    while not (events.is_file() and '"event": "step"' in events.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, "the run did not start training"
        time.sleep(0.5)
    victim = _pid_with_env(marker, "1")
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    _, err = proc.communicate(timeout=120)
    took = time.monotonic() - killed_at
    print(f"the run ended {took:.1f} s after worker 1 was killed")
    assert proc.returncode == 1 and took < 30  # not the collective's 30-minute timeout
    assert "worker 1 of 2 was killed by SIGKILL" in err.strip().splitlines()[-1]
