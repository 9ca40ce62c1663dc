"""Run an `sdlora` command line and, when it exits, write where torch.compile's time went as JSON: dynamo's
per-phase totals (`torch._dynamo.utils.compile_times`), the number of graphs, and the wall time.

    python bench/compile_times.py OUT.json train --preset P.yaml

Used by bench/gpu_round.py's precompile stage to see where a cold compile goes before choosing how to shorten it.
"""

from __future__ import annotations

import atexit
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def compile_counters() -> dict:
    """dynamo's, AOTAutograd's, inductor's and sdlora's counters (the compile caches' hits and misses; the saved
    block variants loaded and called, sdlora/train/saved_blocks.py); {} when nothing compiled in this process
    (importing torch at exit to read them can fail)."""
    dynamo_utils = sys.modules.get("torch._dynamo.utils")
    if dynamo_utils is None:
        return {}
    parts = ("stats", "inductor", "aot_autograd", "sdlora", "saved_block_refusals")
    return {k: dict(v) for k, v in dynamo_utils.counters.items() if k in parts}


def write_times(out: Path, started: float) -> None:
    phases = {}
    dynamo_utils = sys.modules.get("torch._dynamo.utils")
    if dynamo_utils is not None:
        raw = dynamo_utils.compile_times(repr="csv", aggregate=True)  # (names, totals)
        if isinstance(raw, tuple) and len(raw) == 2:
            phases = {name: float(value) for name, value in zip(*raw)}
    out.write_text(json.dumps({"wall_s": round(time.perf_counter() - started, 1), "phases_s": phases,
                               "counters": compile_counters()}, default=str))


def main() -> int:
    out = Path(sys.argv[1])
    started = time.perf_counter()
    atexit.register(write_times, out, started)
    from sdlora.cli import main as sdlora_main

    return sdlora_main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
