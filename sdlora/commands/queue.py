"""`sdlora queue add --preset FILE [--set K=V]... | list [--json] | run | cancel ID | resume ID`.

The queue lives in the output folder (`--dir`, default `outputs`): queue.json, shared with the app.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path



def register(sub) -> None:
    p = sub.add_parser("queue", help="a queue of trainings run one after another (survives restarts)")
    p.add_argument("--dir", type=Path, default=Path("outputs"), metavar="DIR",
                   help="output folder that holds the queue (queue.json; default outputs)")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    add = actions.add_parser("add", help="queue a training of a preset")
    add.add_argument("--preset", type=Path, required=True, help="preset YAML (see presets/)")
    add.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a preset key, e.g. --set train.steps=200 (repeatable)")
    listing = actions.add_parser("list", help="the jobs in run order with their state and progress")
    listing.add_argument("--json", action="store_true", help="print a JSON list of the jobs")
    actions.add_parser("run", help="run queued jobs one after another until none is left (Ctrl-C stops the "
                                   "running job after its step and saves)")
    cancel = actions.add_parser("cancel", help="take a job off the queue; the running job is stopped (saved)")
    cancel.add_argument("id", type=int, metavar="ID")
    resume = actions.add_parser("resume", help="continue a stopped, failed or interrupted job from its last "
                                               "checkpoint, first in line; runs the queue unless a runner runs")
    resume.add_argument("id", type=int, metavar="ID")
    for action in actions.choices.values():
        # --dir after the action too (`sdlora queue list --dir runs`); SUPPRESS keeps the one given before it.
        action.add_argument("--dir", type=Path, default=argparse.SUPPRESS, metavar="DIR", help="as above")
        action.set_defaults(handler=run)


def run(args) -> int:
    from sdlora.queue import Queue

    queue = Queue(args.dir)
    return {"add": add, "list": show, "run": run_queue, "cancel": cancel, "resume": resume}[args.action](queue, args)


def add(queue, args) -> int:
    from sdlora.commands.train import resolve_data_dir
    from sdlora.config import load_config

    config = resolve_data_dir(load_config(args.preset, args.overrides), args.preset)
    job = queue.add(config, preset=str(args.preset))
    print(f"job {job.id}: {job.name} -> {job.run_dir} (queued; `sdlora queue run` runs the queue)")
    return 0


def show(queue, args) -> int:
    jobs = [job.as_dict() for job in queue.jobs()]
    if args.json:
        print(json.dumps(jobs, indent=2))
        return 0
    if not jobs:
        print(f"the queue ({queue.file}) is empty; add a job with sdlora queue add --preset FILE")
        return 0
    clock = lambda t: time.strftime("%m-%d %H:%M", time.localtime(t)) if t else "-"  # noqa: E731
    rows = [("ID", "STATE", "NAME", "STEP", "STARTED", "ENDED", "RUN FOLDER")]
    for job in jobs:
        step = f"{job['step']}/{job['total_steps']}" if job["total_steps"] else "-"
        rows.append((str(job["id"]), job["state"], job["name"], step, clock(job["started"]), clock(job["ended"]),
                     job["run_dir"]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
    for job in jobs:
        if job["message"] and job["state"] in ("failed", "interrupted", "stopped"):
            print(f"job {job['id']}: {job['message']}")
    pid = queue.runner_pid()
    print(f"runner: process {pid}" if pid else "runner: none (sdlora queue run starts one)")
    return 0


def run_queue(queue, args) -> int:
    from sdlora.queue.runner import Runner

    ran = Runner(queue).run()
    left = [job for job in queue.jobs() if job.state == "queued"]
    print(f"sdlora queue: {ran} job(s) ran; {len(left)} still queued")
    return 0


def cancel(queue, args) -> int:
    print(queue.cancel(args.id))
    return 0


def resume(queue, args) -> int:
    job = queue.requeue(args.id)
    pid = queue.runner_pid()
    if pid is not None:
        print(f"job {job.id}: queued first to resume; the runner (process {pid}) takes it next")
        return 0
    print(f"job {job.id}: resuming from its last checkpoint")
    return run_queue(queue, args)
