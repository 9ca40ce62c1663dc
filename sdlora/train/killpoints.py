"""A test hook: `SDLORA_TEST_KILL_AT=NAME` kills the process with SIGKILL at the named point of a run.

SIGKILL is what `kill -9`, the out-of-memory killer or a power cut do: nothing after it runs, no handler, no
`finally`. The reliability tests use it to check that each such point leaves a run folder that `--resume`
finishes (docs/RELIABILITY.md). Points: `final-adapter` (the last checkpoint is written, the final adapter not yet),
`prune` (an old checkpoint's marker is deleted, its weights not yet).
"""

from __future__ import annotations

import os
import signal

ENV = "SDLORA_TEST_KILL_AT"


def kill_point(name: str) -> None:
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
