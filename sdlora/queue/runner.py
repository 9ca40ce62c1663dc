"""Run the queue: the first queued job, as its own `sdlora train` process, then the next, until none is left.

One runner at a time (a PID lock that a dead runner does not keep). SIGINT or SIGTERM to the runner is passed on
to the running job, which finishes its step and saves (as `sdlora train` does on Ctrl-C); the job ends stopped
and the runner exits. A second Ctrl-C is passed on too, which aborts the job without saving.

The training process dies with its runner: on Linux it is asked (PR_SET_PDEATHSIG) to get SIGTERM when the
runner goes, even by `kill -9`, so it stops after its step and saves a checkpoint that `resume` continues from.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from sdlora.errors import SdloraError
from sdlora.events import read_events
from sdlora.lockfile import _alive, hold
from sdlora.queue.store import Job, Queue

PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int):
    """A preexec_fn: SIGTERM this child when the process that started it dies (Linux; elsewhere a no-op)."""
    def setup() -> None:
        if not sys.platform.startswith("linux"):
            return
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the runner died before the prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)
    return setup


def train_command(job: Job) -> list[str]:
    """`sdlora train` for the job: --resume RUN_DIR when continuing a run that has a checkpoint, else --preset."""
    from sdlora.train.checkpoint import list_checkpoints
    from sdlora.train.rundir import RunPaths, has_training

    base = [sys.executable, "-m", "sdlora.cli", "train"]
    run_dir = Path(job.run_dir)
    if job.resume and list_checkpoints(run_dir / "checkpoints"):
        return [*base, "--resume", str(run_dir)]
    if has_training(RunPaths(run_dir, job.name)):
        if not job.resume:
            raise SdloraError(f"{run_dir} already holds a run this job did not start; queue it again under another "
                              f"name (--set name={job.name}-2)")
        raise SdloraError(f"{run_dir} holds training but no checkpoint to continue from, and starting again would "
                          f"overwrite it; move the folder aside and resume the job to train it from the start")
    return [*base, "--preset", job.config]


class Runner:
    def __init__(self, queue: Queue, echo: bool = True):
        self.queue = queue
        self.echo = echo  # copy the jobs' output to stderr as well as to their log files
        self.proc: subprocess.Popen | None = None
        self.stopping = False

    def _signal(self, signum, frame) -> None:
        self.stopping = True
        proc = self.proc
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signum)  # the job stops after its step and saves (a second SIGINT aborts it)
        if self.echo:
            print(f"\nsdlora queue: {signal.Signals(signum).name}: stopping the running job after its step; the "
                  f"queue stops after it", file=sys.stderr, flush=True)

    def run(self) -> int:
        """Run queued jobs until none is left or a stop is asked; returns how many ran."""
        what = f"the training queue ({self.queue.file})"
        with hold(self.queue.runner_lock, "sdlora queue run", what=what):
            for job_id in self.queue.mark_interrupted():
                self._say(f"job {job_id} was running when its runner died: interrupted (resume it with "
                          f"`sdlora queue resume {job_id}`)")
            previous = {sig: signal.signal(sig, self._signal) for sig in (signal.SIGINT, signal.SIGTERM)}
            ran = 0
            try:
                while not self.stopping:
                    job = self.queue.claim_next()
                    if job is None:
                        break
                    self._run_job(job)
                    ran += 1
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
        return ran

    def _run_job(self, job: Job) -> None:
        try:
            self._wait_for(job.pid)
            command = train_command(job)
        except SdloraError as exc:
            self.queue.update(job.id, state="failed", ended=round(time.time(), 3), message=str(exc))
            self._say(f"job {job.id} ({job.name}): failed: {exc}")
            return
        if self.stopping:  # a stop asked while it was being claimed: leave it for the next runner
            self.queue.update(job.id, state="queued", started=None)
            return
        self._say(f"job {job.id} ({job.name}): {' '.join(command[3:])}")
        env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
        Path(job.log).parent.mkdir(parents=True, exist_ok=True)
        with open(job.log, "ab") as log:
            # Output goes straight to the log file, not through a pipe: a job whose runner was killed must
            # not die on its next write to a pipe nobody reads (it has a checkpoint to save).
            offset = log.tell()
            self.proc = subprocess.Popen(command, cwd=job.cwd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                                         preexec_fn=_die_with_parent(os.getpid()))
        self.queue.update(job.id, pid=self.proc.pid)
        echo = threading.Thread(target=self._echo, args=(Path(job.log), offset, self.proc), daemon=True)
        echo.start()
        code = self.proc.wait()
        echo.join()
        self.proc = None
        state, message = outcome(job, code)
        self.queue.update(job.id, state=state, ended=round(time.time(), 3), returncode=code, message=message,
                          pid=None)
        self._say(f"job {job.id} ({job.name}): {state}" + (f": {message}" if message else ""))

    def _echo(self, log: Path, offset: int, proc: subprocess.Popen) -> None:
        """Copy what the job writes to its log onto stderr, as it comes, until the job has ended."""
        if not self.echo:
            return
        with open(log, "rb") as fh:
            fh.seek(offset)
            while True:
                finished = proc.poll() is not None
                chunk = fh.read(65536)
                if chunk:
                    sys.stderr.buffer.write(chunk)
                    sys.stderr.buffer.flush()
                elif finished:
                    return
                else:
                    time.sleep(0.1)

    def _wait_for(self, pid: int | None, timeout: float = 300.0) -> None:
        """An interrupted job's old training process may still be saving: let it finish first."""
        if not pid or not _alive(pid):
            return
        self._say(f"waiting for process {pid} (the interrupted run) to finish saving")
        deadline = time.time() + timeout
        while _alive(pid):
            if time.time() > deadline:
                raise SdloraError(f"process {pid} of the interrupted run still runs after {timeout:.0f} s; stop it "
                                  f"first")
            time.sleep(0.2)

    def _say(self, text: str) -> None:
        if self.echo:
            print(f"sdlora queue: {text}", file=sys.stderr, flush=True)


def outcome(job: Job, code: int) -> tuple[str, str]:
    """(state, message) of a finished `sdlora train`: its exit code and the last event it wrote."""
    last = None
    for event in read_events(Path(job.run_dir) / "events.jsonl"):
        if event.get("event") in ("done", "stopped", "error"):
            last = event
    if code == 0 and last is not None and last["event"] in ("done", "stopped"):
        return last["event"], "" if last["event"] == "done" else f"stopped at step {last.get('step')}"
    how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
    return "failed", f"{how}: {last_line(Path(job.log))}"


def last_line(log: Path) -> str:
    """The last non-empty line of a job's log: for `sdlora train`, the one-line error on failure."""
    try:
        with open(log, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 8192))
            lines = fh.read().decode("utf-8", errors="replace").replace("\r", "\n").splitlines()
    except OSError:
        return ""
    return next((line.strip() for line in reversed(lines) if line.strip()), "")
