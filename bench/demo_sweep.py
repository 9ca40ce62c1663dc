"""Run many bench/demo_concept.py jobs side by side, one CPU thread each, and tabulate their ring counts.

    python bench/demo_sweep.py JOBS.txt --workers 15 --out results.jsonl --deadline 540

JOBS.txt holds one job a line: a label, then demo_concept.py's arguments ("v1-s7 --ring 1.45 0.8 --count 20
--set train.seed=7"); '#' starts a comment. Each job runs in its own process with OMP_NUM_THREADS=1 (as the
tests run), so a machine of N cores measures N recipes or training seeds at once. No job starts after
`--deadline` seconds, and running ones are stopped at `--deadline` + `--grace`; what finished is in `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("jobs", type=Path)
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    parser.add_argument("--out", type=Path, default=Path("demo_sweep.jsonl"))
    parser.add_argument("--deadline", type=float, default=540.0, help="seconds after which no job starts")
    parser.add_argument("--grace", type=float, default=30.0)
    args = parser.parse_args()
    queue = []
    for line in args.jobs.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            label, *rest = shlex.split(line)
            queue.append((label, rest))
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    start, running = time.monotonic(), {}
    with args.out.open("a", encoding="utf-8") as out:
        while queue or running:
            now = time.monotonic() - start
            while queue and len(running) < args.workers and now < args.deadline:
                label, rest = queue.pop(0)
                cmd = [sys.executable, str(HERE / "demo_concept.py"), "--label", label, *rest]
                running[label] = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                  text=True)
            for label, proc in list(running.items()):
                if proc.poll() is None and now < args.deadline + args.grace:
                    continue
                if proc.poll() is None:
                    proc.kill()
                stdout, stderr = proc.communicate()
                del running[label]
                lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
                if proc.returncode == 0 and lines:
                    out.write(lines[-1] + "\n")
                    out.flush()
                    print(lines[-1], flush=True)
                else:
                    print(json.dumps({"label": label, "failed": proc.returncode, "stderr": stderr[-1500:]}),
                          flush=True)
            if not queue and not running:
                break
            if now >= args.deadline and not running:
                break
            time.sleep(1.0)
    print(f"left unrun: {[label for label, _ in queue]}", flush=True)


if __name__ == "__main__":
    main()
