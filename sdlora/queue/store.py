"""The queue file: outputs/queue.json, its jobs in run order, each edit a locked read-modify-atomic-write.

A job is a snapshot of the resolved config (outputs/.queue/job-N.yaml), so what was queued is what runs, however
the preset changes afterwards. States: queued -> running -> done | stopped | failed; a job recorded as running
while no runner holds the runner lock was running when its runner died: it is shown (and, when the next runner
starts, recorded) as interrupted, and continues only through `resume` (from its last checkpoint), never from
step 0 on its own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from sdlora.atomic import write_text
from sdlora.config import Config
from sdlora.errors import SdloraError
from sdlora.events import read_events
from sdlora.lockfile import lock_owner

STATES = ("queued", "running", "done", "stopped", "failed", "interrupted")
PENDING = ("queued", "running", "stopped", "failed", "interrupted")  # a job that may still write its run folder
RESUMABLE = ("stopped", "failed", "interrupted")


@dataclass
class Job:
    id: int
    name: str
    preset: str  # where the settings came from (a preset file, or "app")
    config: str  # the resolved config snapshot the job trains with
    run_dir: str  # the run folder it writes (absolute)
    cwd: str  # the folder `sdlora train` runs in (relative model and output paths resolve from it)
    state: str = "queued"
    resume: bool = False  # continue the run folder from its last checkpoint (--resume) instead of a fresh start
    added: float = 0.0
    started: float | None = None
    ended: float | None = None
    pid: int | None = None  # the `sdlora train` process, while it runs
    returncode: int | None = None
    message: str = ""
    log: str = ""

    @classmethod
    def of(cls, record: dict) -> "Job":
        """From the file; keys this version does not know (written by a newer one) are ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in known})

    def progress(self) -> tuple[int, int]:
        """(last step, total steps) from the run folder's events.jsonl; (0, 0) before the first step."""
        return run_progress(Path(self.run_dir) / "events.jsonl")

    def as_dict(self) -> dict:
        step, total = self.progress()
        return {**dataclasses.asdict(self), "step": step, "total_steps": total}


_progress: dict[Path, tuple[tuple[int, int], tuple[int, int]]] = {}  # events file -> ((mtime, size), progress)


def run_progress(events: Path) -> tuple[int, int]:
    """(last step, total steps) of a run's events.jsonl, read again only when the file changed (the app polls)."""
    try:
        stat = events.stat()
    except OSError:
        return 0, 0
    stamp = (stat.st_mtime_ns, stat.st_size)
    if events in _progress and _progress[events][0] == stamp:
        return _progress[events][1]
    step, total = 0, 0
    for event in read_events(events):
        if "total_steps" in event:
            total = event["total_steps"] or total
        if event.get("event") == "step":
            step = event.get("step", step)
    _progress[events] = (stamp, (step, total))
    return step, total


class Queue:
    """The queue under `folder` (the output folder, `outputs` by default)."""

    def __init__(self, folder: Path | str = "outputs"):
        self.folder = Path(folder).resolve()
        self.file = self.folder / "queue.json"
        self.private = self.folder / ".queue"  # config snapshots, job logs, locks
        self.runner_lock = self.private / "runner.lock"

    # ------------------------------------------------------------------ reading
    def _read(self) -> dict:
        try:
            data = json.loads(self.file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"version": 1, "next_id": 1, "jobs": []}
        except (OSError, ValueError) as exc:
            raise SdloraError(f"{self.file}: unreadable queue file ({exc}); move it aside to start an empty "
                              f"queue") from None
        return data

    def runner_pid(self) -> int | None:
        """The PID of the live runner, or None."""
        owner = lock_owner(self.runner_lock)
        return None if owner is None else int(owner["pid"])

    def jobs(self) -> list[Job]:
        """The jobs in run order, as they stand: a running job without a live runner is interrupted."""
        jobs = [Job.of(job) for job in self._read()["jobs"]]
        if any(j.state == "running" for j in jobs) and self.runner_pid() is None:
            for job in jobs:
                if job.state == "running":
                    job.state, job.message = "interrupted", interrupted_message(job.id)
        return jobs

    def job(self, job_id: int) -> Job:
        for job in self.jobs():
            if job.id == job_id:
                return job
        raise SdloraError(f"no job {job_id} in {self.file}; `sdlora queue list` shows the jobs")

    # ------------------------------------------------------------------ editing
    @contextlib.contextmanager
    def edit(self) -> Iterator[dict]:
        """Read the file under an exclusive lock, let the block change it, write it back atomically."""
        self.private.mkdir(parents=True, exist_ok=True)
        with open(self.private / "edit.lock", "a+") as lock:
            _lock_exclusive(lock)
            data = self._read()
            yield data
            write_text(self.file, json.dumps(data, indent=2) + "\n")

    def update(self, job_id: int, **changes) -> None:
        with self.edit() as data:
            for job in data["jobs"]:
                if job["id"] == job_id:
                    job.update(changes)

    def add(self, config: Config, preset: str, cwd: Path | str | None = None) -> Job:
        """Queue a training of `config` (data paths already resolved); refuses a run folder already in use."""
        from sdlora.train.rundir import RunPaths, has_training

        cwd = Path(cwd or Path.cwd()).resolve()
        run_dir = (cwd / config.save.output_dir / config.name).resolve()
        if has_training(RunPaths(run_dir, config.name)):
            raise SdloraError(f"{run_dir} already holds a run; queue it under another name with "
                              f"--set name={config.name}-2 (or continue it with sdlora train --resume {run_dir})")
        with self.edit() as data:
            for other in data["jobs"]:
                if other["run_dir"] == str(run_dir) and other["state"] in PENDING:
                    raise SdloraError(f"job {other['id']} in the queue already trains {run_dir}; give this one "
                                      f"another name with --set name={config.name}-2")
            job_id = data["next_id"]
            data["next_id"] = job_id + 1
            snapshot = self.private / f"job-{job_id}.yaml"
            write_text(snapshot, config.to_yaml())
            job = Job(id=job_id, name=config.name, preset=preset, config=str(snapshot), run_dir=str(run_dir),
                      cwd=str(cwd), added=round(time.time(), 3), log=str(self.private / f"job-{job_id}.log"))
            data["jobs"].append(dataclasses.asdict(job))
        return job

    def remove(self, job_id: int) -> Job:
        """Take a job that is not running off the queue (its run folder is left as it is)."""
        with self.edit() as data:
            job = self._find(data, job_id)
            if job["state"] == "running" and self.runner_pid() is not None:
                raise SdloraError(f"job {job_id} is running; stop it first (sdlora queue cancel {job_id} stops it)")
            data["jobs"].remove(job)
        Path(job["config"]).unlink(missing_ok=True)
        return Job.of(job)

    def cancel(self, job_id: int) -> str:
        """Take a job off the queue, or stop it if it runs (it saves and ends stopped); says what was done."""
        import signal

        job = self.job(job_id)
        if job.state == "running":
            if not job.pid:
                raise SdloraError(f"job {job.id} is starting; cancel it again in a moment")
            os.kill(job.pid, signal.SIGTERM)  # `sdlora train` finishes its step and saves; the runner goes on
            return f"job {job.id}: stopping after its step (saved; resume continues it)"
        self.remove(job.id)
        kept = f"; its run folder {job.run_dir} is kept" if Path(job.run_dir).exists() else ""
        return f"job {job.id} ({job.name}): removed from the queue{kept}"

    def move(self, job_id: int, offset: int) -> None:
        """Move a job `offset` places later (negative: earlier) in the run order."""
        with self.edit() as data:
            jobs = data["jobs"]
            job = self._find(data, job_id)
            index = jobs.index(job)
            jobs.insert(max(0, min(len(jobs) - 1, index + offset)), jobs.pop(index))

    def requeue(self, job_id: int) -> Job:
        """Queue a stopped, failed or interrupted job again, first in line, to continue from its checkpoint."""
        live = self.runner_pid() is not None
        with self.edit() as data:
            job = self._find(data, job_id)
            state = "interrupted" if job["state"] == "running" and not live else job["state"]
            if state not in RESUMABLE:
                hint = {"done": "it is done; to train it longer use sdlora train --resume RUN_DIR --set "
                                "train.steps=N", "queued": "it is queued already",
                        "running": "it is running"}[state]
                raise SdloraError(f"job {job_id} cannot be resumed: {hint}")
            job.update(state="queued", resume=True, ended=None, returncode=None, message="")
            jobs = data["jobs"]
            jobs.remove(job)
            first = next((i for i, j in enumerate(jobs) if j["state"] == "queued"), len(jobs))
            jobs.insert(first, job)
        return Job.of(job)

    def claim_next(self) -> Job | None:
        """The first queued job, now recorded as running (called by the runner, which holds the runner lock)."""
        with self.edit() as data:
            for job in data["jobs"]:
                if job["state"] == "queued":
                    job.update(state="running", started=round(time.time(), 3), ended=None, pid=None,
                               returncode=None, message="")
                    return Job.of(job)
        return None

    def mark_interrupted(self) -> list[int]:
        """Record jobs left running by a dead runner as interrupted (called by a runner that holds the lock)."""
        found = []
        with self.edit() as data:
            for job in data["jobs"]:
                if job["state"] == "running":
                    job.update(state="interrupted", message=interrupted_message(job["id"]))
                    found.append(job["id"])
        return found

    @staticmethod
    def _find(data: dict, job_id: int) -> dict:
        for job in data["jobs"]:
            if job["id"] == job_id:
                return job
        raise SdloraError(f"no job {job_id} in the queue; `sdlora queue list` shows the jobs")


def interrupted_message(job_id: int) -> str:
    return (f"its queue runner stopped while it ran; `sdlora queue resume {job_id}` continues it from its last "
            f"checkpoint")


def _lock_exclusive(fh) -> None:
    try:
        import fcntl
    except ImportError:  # Windows: edits from two processes at the same instant are not guarded there
        return
    fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
