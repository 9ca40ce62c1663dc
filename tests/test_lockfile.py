"""The lock that makes one process the owner of a run folder or the queue."""

import os
import subprocess
import sys

import pytest

from sdlora.errors import SdloraError
from sdlora.lockfile import hold, lock_owner


def test_second_taker_is_refused_naming_the_pid(tmp_path):
    lock = tmp_path / ".lock"
    with hold(lock, "training"):
        assert lock_owner(lock)["pid"] == os.getpid()
        with pytest.raises(SdloraError, match=f"in use by process {os.getpid()} \\(training\\)"):
            with hold(lock, "training"):
                pass
    assert not lock.exists() and lock_owner(lock) is None


def test_lock_of_a_killed_process_is_taken_over(tmp_path):
    lock = tmp_path / ".lock"
    code = f"from sdlora.lockfile import hold; import os\nwith hold({str(lock)!r}, 'x'): os._exit(0)"
    subprocess.run([sys.executable, "-c", code], check=True)  # exits without releasing, as kill -9 would
    assert lock.exists() and lock_owner(lock) is None
    with hold(lock, "resume"):
        assert lock_owner(lock)["purpose"] == "resume"
