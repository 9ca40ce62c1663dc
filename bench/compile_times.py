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


def write_times(out: Path, started: float) -> None:
    if "torch._dynamo.utils" not in sys.modules:  # nothing compiled (importing torch at exit can fail)
        out.write_text(json.dumps({"wall_s": round(time.perf_counter() - started, 1), "phases_s": {}, "counters": {}}))
        return
    import torch._dynamo.utils as dynamo_utils

    phases = {}
    raw = dynamo_utils.compile_times(repr="csv", aggregate=True)  # (names, totals)
    if isinstance(raw, tuple) and len(raw) == 2:
        phases = {name: float(value) for name, value in zip(*raw)}
    counters = {k: dict(v) for k, v in dynamo_utils.counters.items() if k in ("stats", "inductor", "aot_autograd")}
    out.write_text(json.dumps({"wall_s": round(time.perf_counter() - started, 1), "phases_s": phases,
                               "counters": counters}, default=str))


def main() -> int:
    out = Path(sys.argv[1])
    started = time.perf_counter()
    atexit.register(write_times, out, started)
    from sdlora.cli import main as sdlora_main

    return sdlora_main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
