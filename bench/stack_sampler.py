"""Run an `sdlora` command line with a thread that samples the main thread's Python stack every few ms, and write
where the wall time went as JSON when it exits:

    python bench/stack_sampler.py OUT.json train --preset P.yaml

cProfile hooks every call, so it slows Python-heavy work (imports, dynamo's tracing) 1.4-2x and moves the shares;
a sampler costs a stack walk per sample and keeps them. Each sample is weighted by the wall time since the one
before, so a long C call that holds the GIL is charged to the stack it was in when the sampler woke again.

The JSON holds, in seconds: `by_sdlora` (the innermost sdlora frame of each sample: which step of the set-up or of
the first step it was), `inclusive` (every frame on the stack, the top ones: like cProfile's cumulative), `leaf`
(the innermost frame: like its tottime), `phases` (the innermost sdlora frame paired with the torch subsystem
under it, e.g. `compiled.py:__call__ | dynamo tracing`), `timeline`: runs of consecutive samples with the same
innermost sdlora frame, with their unix start time, to lay beside the events' times; `stacks`: the heaviest
stacks (their innermost frames, outermost first, `;`-joined as flame-graph tools read them); `counters`: the
compile caches' hits and misses (bench/compile_times.py's `compile_counters`).
"""

from __future__ import annotations

import atexit
import json
import sys
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from compile_times import compile_counters  # noqa: E402  (bench/ is not a package)

INTERVAL_S = 0.005
STACK_DEPTH = 30  # frames kept per sample in `stacks`: enough to see a leaf's callers
# The torch subsystem a frame belongs to, by the path it was loaded from (the first match, innermost frame out).
SUBSYSTEMS = (("torch/_dynamo/symbolic_convert", "dynamo tracing"), ("torch/_dynamo/guards", "dynamo guards"),
              ("torch/_dynamo/output_graph", "dynamo graph"), ("torch/_functorch/_aot_autograd", "aot autograd"),
              ("torch/_inductor/codecache", "inductor cache load"), ("torch/_inductor/runtime", "inductor runtime"),
              ("torch/_inductor", "inductor"), ("triton/", "triton"), ("torch/_subclasses/fake", "fake tensors"),
              ("torch/cuda", "cuda"), ("<frozen importlib", "import"), ("torch/_dynamo", "dynamo"),
              ("torch/autograd", "autograd"), ("safetensors", "safetensors"), ("diffusers/", "diffusers"),
              ("peft/", "peft"), ("transformers/", "transformers"), ("accelerate/", "accelerate"))


def label(code) -> str:
    path = code.co_filename
    for marker in ("site-packages/", "/sdlora/", "/bench/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{path}:{code.co_name}"


class Sampler(threading.Thread):
    def __init__(self, main_id: int):
        super().__init__(daemon=True, name="stack-sampler")
        self.main_id, self.running = main_id, True
        self.inclusive, self.leaf, self.by_sdlora, self.phases = Counter(), Counter(), Counter(), Counter()
        self.timeline: list[list] = []  # [unix start, seconds, innermost sdlora frame]
        self.stacks: Counter = Counter()  # the innermost STACK_DEPTH frames, outermost first, ";"-joined
        self.samples = 0

    def record(self, frame, weight: float, now: float) -> None:
        codes = []
        while frame is not None:
            codes.append(frame.f_code)
            frame = frame.f_back
        labels = [label(c) for c in codes]  # innermost first
        self.samples += 1
        self.stacks[";".join(reversed(labels[:STACK_DEPTH]))] += weight
        self.leaf[labels[0]] += weight
        for name in set(labels):
            self.inclusive[name] += weight
        sdlora = next((name for c, name in zip(codes, labels) if "/sdlora/" in c.co_filename), "(outside sdlora)")
        self.by_sdlora[sdlora] += weight
        sub = next((name for c in codes for marker, name in SUBSYSTEMS if marker in c.co_filename), "other")
        self.phases[f"{sdlora} | {sub}"] += weight
        if self.timeline and self.timeline[-1][2] == sdlora:
            self.timeline[-1][1] += weight
        else:
            self.timeline.append([now - weight, weight, sdlora])

    def run(self) -> None:
        last = time.perf_counter()
        while self.running:
            time.sleep(INTERVAL_S)
            now = time.perf_counter()
            frame = sys._current_frames().get(self.main_id)
            if frame is not None:
                self.record(frame, now - last, time.time())
            last = now


def write(out: Path, sampler: Sampler, started: float) -> None:
    # Stop the thread before the interpreter finalizes: a sampler still walking frames then made the process
    # abort at exit ("terminate called without an active exception").
    sampler.running = False
    sampler.join()

    def top(counter: Counter, n: int) -> dict:
        return {k: round(v, 3) for k, v in counter.most_common(n)}

    timeline = [[round(t, 2), round(s, 2), name] for t, s, name in sampler.timeline if s >= 0.2]
    out.write_text(json.dumps({"wall_s": round(time.perf_counter() - started, 2), "samples": sampler.samples,
                               "counters": compile_counters(),
                               "interval_s": INTERVAL_S, "by_sdlora": top(sampler.by_sdlora, 60),
                               "phases": top(sampler.phases, 80), "inclusive": top(sampler.inclusive, 150),
                               "leaf": top(sampler.leaf, 60), "timeline": timeline,
                               "stacks": top(sampler.stacks, 400)}, indent=1))


def main() -> int:
    out = Path(sys.argv[1])
    started = time.perf_counter()
    sampler = Sampler(threading.main_thread().ident)
    sampler.start()
    atexit.register(write, out, sampler, started)
    from sdlora.cli import main as sdlora_main

    return sdlora_main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
