"""How many CPU threads training uses, chosen on purpose: PyTorch's default (one per core) runs up to 10x slower
than one thread when other processes already keep the cores busy (measured on a loaded 2-core machine).

In order: `train.cpu_threads`; else OMP_NUM_THREADS when set; else the cores free when the run starts (the cores
this process may use minus the 1-minute load average, at least 1).
"""

from __future__ import annotations

import os


def usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def choose_cpu_threads(configured: int | None, environ=os.environ) -> tuple[int, str]:
    """(threads, why) for training; `why` is said in the log."""
    if configured:
        return int(configured), "train.cpu_threads"
    env = str(environ.get("OMP_NUM_THREADS", "")).strip()
    if env.isdigit() and int(env) > 0:
        return int(env), "OMP_NUM_THREADS"
    cores = usable_cores()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    free = max(1, min(cores, int(cores - load + 0.5)))
    return free, f"{cores} core(s), load {load:.1f}, so {free} free"


def apply_cpu_threads(configured: int | None) -> str:
    """Set PyTorch's intra-op threads; returns the log line that says how many and why."""
    import torch

    threads, why = choose_cpu_threads(configured)
    torch.set_num_threads(threads)
    return f"CPU threads: {threads} ({why}; train.cpu_threads sets it)"
