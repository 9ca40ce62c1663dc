"""The training run as a separate process: `python -m sdlora.cli train ...`, one at a time.

A separate process, so that a crash or an out-of-memory kill of the run leaves the app alive and the error
readable. The run's stdout and stderr go to a log file the Train tab tails; Stop sends SIGTERM, on which
`sdlora train` finishes the step and saves a checkpoint and the adapter.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from sdlora.errors import SdloraError


class TrainingProcess:
    """The app's one training run (if any) and what it printed."""

    def __init__(self, project: Path, base_command: list[str] | None = None):
        self.project = Path(project)
        self.base_command = base_command or [sys.executable, "-m", "sdlora.cli", "train"]
        self.proc: subprocess.Popen | None = None
        self.run_dir: Path | None = None
        self.command: list[str] = []
        self.log_path: Path | None = None
        self._lock = threading.Lock()
        atexit.register(self.stop)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def start(self, args: list[str], run_dir: Path) -> None:
        """Start `sdlora train ARGS`; `run_dir` is the run folder it writes (outputs/NAME)."""
        with self._lock:
            if self.running:
                raise SdloraError(f"a run is already going ({self.run_dir}); stop it first")
            fd, log_name = tempfile.mkstemp(prefix="sdlora-ui-train-", suffix=".log")
            log = os.fdopen(fd, "wb")
            env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
            self.command = [*self.base_command, *args]
            try:
                self.proc = subprocess.Popen(self.command, cwd=self.project, stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, env=env, start_new_session=True)
            finally:
                log.close()
            self.log_path, self.run_dir = Path(log_name), Path(run_dir)

    def stop(self) -> bool:
        """SIGTERM the run (it saves and exits); False if none was running."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return False
        proc.send_signal(signal.SIGTERM)
        return True

    def wait(self, timeout: float | None = None) -> int | None:
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return ""
        with open(self.log_path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            text = fh.read().decode("utf-8", errors="replace")
        # tqdm redraws with carriage returns: keep what the last redraw shows.
        shown = [line.rsplit("\r", 1)[-1] for line in text.splitlines()]
        return "\n".join(shown[-lines:])

    def last_line(self) -> str:
        """The last non-empty line the run printed: for `sdlora train`, the one-line error on failure."""
        for line in reversed(self.log_tail(50).splitlines()):
            if line.strip():
                return line.strip()
        return ""
