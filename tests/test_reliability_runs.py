"""Nothing lost: one writer per run folder, every kill point leaves a run that --resume finishes, a refused resume
changes nothing, a full disk says so (issue #15, cases 1-5 and the kill points of 12).

The kill points are hit as a user hits them: SIGKILL from outside at a moment seen in events.jsonl, or the
trainer's own test hook (SDLORA_TEST_KILL_AT, sdlora.train.killpoints) where the moment is too short to catch.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from sdlora.cli import main
from sdlora.config import config_from_dict
from sdlora.events import read_events
from sdlora.train.checkpoint import list_checkpoints
from sdlora.train.rundir import new_run, open_run, record_changes


def preset(tmp_path: Path, data_dir: Path, name: str, steps: int, out: Path | None = None, **save) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "name": name, "model": "tiny", "data": {"dir": str(data_dir), "resolution": 64},
        "network": {"rank": 4}, "train": {"steps": steps, "batch_size": 2, "lr": 1e-3, "seed": 5},
        "save": {"output_dir": str(out or tmp_path / "outputs"), **save}}), encoding="utf-8")
    return path


def sdlora(*args, cwd: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sdlora.cli", *map(str, args)], cwd=cwd,
                            env=dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", **(env or {})),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("sdlora train: error")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def events_of(run: Path) -> list[dict]:
    return list(read_events(run / "events.jsonl"))


def wait_for_step(run: Path, proc: subprocess.Popen, step: int = 1, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if any(e["event"] == "step" and e["step"] >= step for e in events_of(run)):
            return
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.05)
    raise AssertionError(f"no step {step} in {run / 'events.jsonl'}")


# ------------------------------------------------------------------------------- case 1 (and 3): one writer
@pytest.mark.slow
def test_a_run_folder_has_one_writer_and_a_killed_one_is_taken_over(shapes_dir, tmp_path):
    run = tmp_path / "outputs" / "one"
    first = sdlora("train", "--preset", preset(tmp_path, shapes_dir, "one", steps=100_000), cwd=tmp_path)
    wait_for_step(run, first)
    config = (run / "config.yaml").read_bytes()
    # A second `sdlora train` of the same name, and a --resume of the running run: refused, naming the owner.
    for args in (["--preset", tmp_path / "one.yaml"], ["--resume", run]):
        code, err = finish(sdlora("train", *args, cwd=tmp_path))
        assert code == 2 and f"run folder {run} is in use by process {first.pid} (training)" in error_line(err)
    assert first.poll() is None and (run / "config.yaml").read_bytes() == config
    steps = [e["step"] for e in events_of(run) if e["event"] == "step"]
    assert steps == list(range(1, len(steps) + 1))  # one writer: no step logged twice, none deleted

    first.send_signal(signal.SIGKILL)  # kill -9: its lock stays behind, naming a dead process
    first.wait(timeout=60)
    assert (run / ".lock").is_file() and not list_checkpoints(run / "checkpoints")
    # Case 3: killed before its first checkpoint; --resume starts again from step 0 with the run's config.yaml.
    code, err = finish(sdlora("train", "--resume", run, "--set", "train.steps=3", cwd=tmp_path))
    assert code == 0, err
    events = events_of(run)
    warning = [e for e in events if e["event"] == "warning" and "no complete checkpoint" in e["message"]]
    start = [e for e in events if e["event"] == "start"][-1]
    assert warning and start["step"] == 0 and start["changes"] == {"train.steps": [100_000, 3]}
    assert events[-1]["event"] == "done" and events[-1]["step"] == 3 and (run / "one.safetensors").is_file()
    assert not (run / ".lock").exists()  # released at the end
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["steps"] == 3  # what it trained with


def test_the_app_refuses_to_start_or_resume_a_run_folder_in_use(tmp_path):
    from sdlora.errors import SdloraError
    from sdlora.lockfile import hold
    from sdlora.train.rundir import LOCK_NAME, check_not_in_use

    run = tmp_path / "outputs" / "busy"
    check_not_in_use(run)  # free: nothing said
    with hold(run / LOCK_NAME, "training"):
        with pytest.raises(SdloraError, match=f"in use by process {os.getpid()} \\(training\\)"):
            check_not_in_use(run)


# ------------------------------------------------------------------------------- case 2 (and 12): final adapter
@pytest.mark.slow
def test_a_kill_during_the_final_adapter_write_is_finished_by_resume(shapes_dir, tmp_path):
    run = tmp_path / "outputs" / "fin"
    code, err = finish(sdlora("train", "--preset", preset(tmp_path, shapes_dir, "fin", steps=3), cwd=tmp_path,
                              env={"SDLORA_TEST_KILL_AT": "final-adapter"}))
    assert code == -signal.SIGKILL, err
    saved = run / "checkpoints" / "step-000003" / "fin.safetensors"
    assert saved.is_file() and not (run / "fin.safetensors").exists()
    code, err = finish(sdlora("train", "--resume", run, cwd=tmp_path))
    assert code == 0, err
    assert (run / "fin.safetensors").read_bytes() == saved.read_bytes()  # the adapter of step 3, with its metadata
    from safetensors import safe_open

    with safe_open(run / "fin.safetensors", "pt") as fh:
        assert fh.metadata()["ss_steps"] == "3"
    events = events_of(run)
    assert events[-1]["event"] == "done" and events[-1]["step"] == 3
    # Case 12: a refused --resume of a finished run adds nothing to its events (the Train tab shows it done).
    before = (run / "events.jsonl").read_bytes()
    code, err = finish(sdlora("train", "--resume", run, cwd=tmp_path))
    assert code == 2 and "already trained 3 of 3 steps" in error_line(err)
    assert (run / "events.jsonl").read_bytes() == before


# ------------------------------------------------------------------------------- case 12: pruning, temp files
@pytest.mark.slow
def test_a_kill_during_pruning_and_stale_temp_files_are_cleaned_up_by_resume(shapes_dir, tmp_path):
    run = tmp_path / "outputs" / "pr"
    code, err = finish(sdlora("train", "--preset", preset(tmp_path, shapes_dir, "pr", steps=3, every=1,
                                                           keep_checkpoints=1), cwd=tmp_path,
                              env={"SDLORA_TEST_KILL_AT": "prune"}))
    assert code == -signal.SIGKILL, err
    old = run / "checkpoints" / "step-000001"
    # Killed while deleting step 1: its marker went first, so only step 2 counts as complete.
    assert (old / "lora_state.safetensors").is_file() and not (old / "trainer_state.json").exists()
    assert [c.step for c in list_checkpoints(run / "checkpoints")] == [2]
    # What killed atomic writes leave: a temp file beside the adapter, a checkpoint folder being built.
    (run / ".pr.safetensors.k2j4x.tmp").write_bytes(b"\0" * 100)
    (run / "checkpoints" / ".step-000009.tmp").mkdir()
    code, err = finish(sdlora("train", "--resume", run, cwd=tmp_path))
    assert code == 0, err
    assert [e for e in events_of(run) if e["event"] == "start"][-1]["step"] == 2
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000003"]
    assert not list(run.rglob("*.tmp")) and (run / "pr.safetensors").is_file()


def test_an_incomplete_checkpoint_never_counts(tmp_path):
    folder = tmp_path / "checkpoints" / "step-000004"
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(json.dumps({"step": 4, "bad_steps": 0}))
    assert list_checkpoints(tmp_path / "checkpoints") == []  # a marker without the weights


# ------------------------------------------------------------------------------- case 4: resume with changes
def test_resume_refuses_settings_that_shaped_the_run_before_writing_anything(shapes_dir, tmp_path, capsys):
    config = config_from_dict({"name": "rs", "model": "tiny", "data": {"dir": str(shapes_dir), "resolution": 64},
                               "network": {"rank": 4}, "train": {"steps": 30},
                               "save": {"output_dir": str(tmp_path / "outputs")}})
    run = new_run(config).root
    recorded = (run / "config.yaml").read_bytes()
    other = tmp_path / "other"
    other.mkdir()
    for override in ("network.rank=8", "network.targets=[to_q]", f"data.dir={other}", "train.seed=7",
                     "train.batch_size=4", "model=/x", "train.lr=1e-3"):
        code = main(["train", "--resume", str(run), "--set", override])
        err = capsys.readouterr().err
        key = override.split("=")[0]
        assert code == 2 and f"error: {key}: cannot change on --resume" in error_line(err), (override, err)
    code = main(["train", "--resume", str(run), "--preset", str(tmp_path / "x.yaml")])
    assert code == 2 and "with --resume: a resumed run keeps its own config.yaml" in capsys.readouterr().err
    code = main(["train", "--resume", str(run), "--set", "train.lr=.nan"])
    assert code == 2 and "train.lr: nan is out of range" in capsys.readouterr().err
    assert (run / "config.yaml").read_bytes() == recorded and not (run / "events.jsonl").exists()
    # What may change is taken, and recorded in config.yaml once the run is this process's.
    config, paths, changes = open_run(run, ["train.steps=60", "sample.every=10", "save.every=20"])
    assert changes == {"train.steps": [30, 60], "sample.every": [0, 10], "save.every": [0, 20]}
    assert (run / "config.yaml").read_bytes() == recorded
    record_changes(paths, config, changes)
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["steps"] == 60


# ------------------------------------------------------------------------------- case 5: a full disk
def _can_mount_tmpfs(folder: Path) -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-r", "-m", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {folder}"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.slow
def test_a_full_disk_says_so_naming_the_folder_and_the_size(shapes_dir, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    if not _can_mount_tmpfs(small):
        pytest.skip("needs `unshare -r -m` to mount a small tmpfs (user namespaces)")
    spec = preset(tmp_path, shapes_dir, "full", steps=3, out=small / "outputs")
    # A 400 KiB file system of its own: the run folder fits, its first checkpoint (~0.9 MiB) does not.
    script = (f"mount -t tmpfs -o size=400k tmpfs {small} && {sys.executable} -m sdlora.cli train --preset {spec}; "
              f"rc=$?; cp -r {small}/outputs {tmp_path}/after; exit $rc")
    proc = subprocess.run(["unshare", "-r", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert proc.returncode == 1, proc.stderr
    line = next(line for line in proc.stderr.splitlines() if line.startswith("sdlora train: failed"))
    checkpoints = small / "outputs" / "full" / "checkpoints"
    assert f"disk full: saving checkpoint step 3 to {checkpoints} needs about" in line, proc.stderr
    assert "MiB free there; free some space and resume with: sdlora train --resume" in line
    after = tmp_path / "after" / "full"
    assert not list(after.rglob("*.tmp"))  # the half-written checkpoint does not keep the space
    assert events_of(after)[-1]["event"] == "error" and "disk full" in events_of(after)[-1]["message"]
