"""Data parallelism for LoRA training: one process per GPU, one gradient all-reduce per optimizer step.

Why not DDP: a LoRA's trainable parameters are a few MB (SD 1.5 rank 16: 3.2 M parameters), so a single
all-reduce of one flat gradient buffer after the backward costs microseconds on NVLink, needs no hooks inside
the backward pass, and so leaves the compiled, CUDA-graphed UNet step exactly as it is on one GPU.

`sdlora train --gpus N` starts N copies of itself through torch's elastic launcher (torchrun's), which sets the
usual rendezvous variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT); a run started by torchrun or
`accelerate launch` itself works the same way. Rank 0 owns the run folder, the events, samples and checkpoints; every rank loads the same
checkpoint to resume.
"""

from __future__ import annotations

import logging
import os
import socket
import sys

import torch


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_distributed() -> bool:
    return world_size() > 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(processes: int, argv: list[str]) -> int:
    """Run `sdlora <argv>` in `processes` processes on this machine through torch's elastic launcher (what
    `torchrun` runs), and wait for all of them.

    The launcher watches the workers: when one dies (a crash, an out-of-memory kill), it stops the others at
    once instead of leaving them blocked in the next all-reduce until the collective times out, and the run
    ends with a one-line error naming the worker. SIGINT/SIGTERM are passed on to every worker, which then stops
    after the current report window and saves."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=processes, run_id=f"sdlora-{os.getpid()}",
                          rdzv_backend="c10d", rdzv_endpoint=f"127.0.0.1:{_free_port()}", max_restarts=0,
                          monitor_interval=0.5)
    # The launcher logs its rendezvous and shutdown steps at INFO/WARNING; the workers' own output is the log.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.ERROR)
    try:
        elastic_launch(config, sys.executable)("-m", "sdlora", *argv)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        how = (f"was killed by {failure.signal_name()}" if failure.exitcode < 0
               else f"exited with code {failure.exitcode}")
        raise RuntimeError(f"worker {rank} of {processes} {how}; the other workers were stopped (its own "
                           f"messages are above; resume with --resume once the cause is fixed)") from None
    return 0


class GradientSync:
    """The LoRA gradients as views into one flat fp32 buffer, averaged across processes with one all-reduce.

    The buffer is also what CUDA graphs need (compiled.py): gradients live in memory the trainer owns and are
    zeroed in place."""

    def __init__(self, params: list[torch.nn.Parameter]):
        total = sum(p.numel() for p in params)
        self.flat = torch.zeros(total, dtype=params[0].dtype, device=params[0].device)
        offset = 0
        for p in params:
            p.grad = self.flat[offset:offset + p.numel()].view_as(p)
            offset += p.numel()

    def all_reduce(self) -> None:
        if is_distributed():
            torch.distributed.all_reduce(self.flat, op=torch.distributed.ReduceOp.AVG
                                         if self.flat.is_cuda else torch.distributed.ReduceOp.SUM)
            if not self.flat.is_cuda:  # gloo has no AVG
                self.flat.div_(world_size())


def mean_across_processes(values: torch.Tensor) -> torch.Tensor:
    """The mean of `values` over all processes (the loss each rank saw on its own slice of the batch)."""
    if not is_distributed():
        return values
    values = values.clone()
    torch.distributed.all_reduce(values, op=torch.distributed.ReduceOp.SUM)
    return values / world_size()


def any_process(flag: bool, device: torch.device) -> bool:
    """True on every process when any one of them has `flag` set (a stop request reaches ranks at different
    steps; they must stop at the same one or the next all-reduce would wait forever)."""
    if not is_distributed():
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())
