"""`sdlora queue`: jobs run one after another, the queue file survives its runner, interrupted jobs resume exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sdlora.cli import main
from sdlora.config import config_from_dict
from sdlora.events import read_events
from sdlora.lockfile import hold
from sdlora.queue import Queue


def cli(args: list[str], cwd: Path, **kw) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "sdlora.cli", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return out


def preset(tmp_path: Path, data_dir: Path, steps: int) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(f"""
name: job
model: tiny
data: {{dir: {data_dir}, resolution: 64, flip: true}}
network: {{rank: 4, dropout: 0.1}}
train: {{steps: {steps}, batch_size: 2, lr: 1e-3, scheduler: cosine, warmup_steps: 2, seed: 5}}
save: {{every: 1000}}
""", encoding="utf-8")
    return path


def listing(tmp_path: Path) -> list[dict]:
    return json.loads(finish(cli(["queue", "list", "--json"], tmp_path), 120))


def config(tmp_path: Path, name: str):
    return config_from_dict({"name": name, "model": "tiny", "data": {"dir": str(tmp_path)},
                             "save": {"output_dir": str(tmp_path / "outputs")}})


@pytest.mark.slow
def test_two_queued_jobs_both_finish_with_adapters(shapes_dir, tmp_path):
    job = preset(tmp_path, shapes_dir, 3)
    finish(cli(["queue", "add", "--preset", str(job), "--set", "name=first"], tmp_path))
    finish(cli(["queue", "add", "--preset", str(job), "--set", "name=second", "--set", "network.rank=2"], tmp_path))
    assert [j["state"] for j in listing(tmp_path)] == ["queued", "queued"]
    finish(cli(["queue", "run"], tmp_path))
    jobs = listing(tmp_path)
    assert [(j["id"], j["name"], j["state"], j["step"], j["total_steps"]) for j in jobs] == [
        (1, "first", "done", 3, 3), (2, "second", "done", 3, 3)]
    first, second = (load_file(Path(j["run_dir"]) / f"{j['name']}.safetensors") for j in jobs)
    assert first.keys() == second.keys() and first  # each its own adapter, as queued: rank 4 and rank 2
    key = next(k for k in first if k.endswith("lora_down.weight"))
    assert first[key].shape[0] == 4 and second[key].shape[0] == 2
    assert jobs[0]["ended"] <= jobs[1]["started"]  # one after another


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the job follows its runner through PR_SET_PDEATHSIG")
def test_kill_9_of_the_runner_leaves_the_job_interrupted_and_resume_gives_the_same_adapter(shapes_dir, tmp_path):
    job = preset(tmp_path, shapes_dir, 14)
    finish(cli(["queue", "add", "--preset", str(job), "--set", "name=part"], tmp_path))
    runner = cli(["queue", "run"], tmp_path)
    events = tmp_path / "outputs" / "part" / "events.jsonl"
    deadline = time.time() + 600
    while not any(e.get("step", 0) >= 3 and e["event"] == "step" for e in read_events(events)):
        assert time.time() < deadline and runner.poll() is None
        time.sleep(0.05)
    runner.send_signal(signal.SIGKILL)
    runner.communicate(timeout=60)
    [interrupted] = listing(tmp_path)
    assert interrupted["state"] == "interrupted" and "queue resume 1" in interrupted["message"]
    # The training process went with its runner, after saving the step it was on (never from step 0 again).
    pid = interrupted["pid"]
    while Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower():
        assert time.time() < deadline
        time.sleep(0.1)
    stopped = [e for e in read_events(events) if e["event"] == "stopped"]
    assert len(stopped) == 1 and 3 <= stopped[0]["step"] < 14
    finish(cli(["queue", "add", "--preset", str(job), "--set", "name=full"], tmp_path))

    finish(cli(["queue", "resume", "1"], tmp_path))  # then the queue: the uninterrupted run "full"
    jobs = listing(tmp_path)
    assert [(j["name"], j["state"], j["step"]) for j in jobs] == [("part", "done", 14), ("full", "done", 14)]
    steps = [e["step"] for e in read_events(events) if e["event"] == "step"]
    assert steps == sorted(steps) and len(set(steps)) == 14  # continued from its checkpoint, no step twice
    a = load_file(tmp_path / "outputs" / "full" / "full.safetensors")
    b = load_file(tmp_path / "outputs" / "part" / "part.safetensors")
    assert a.keys() == b.keys() and a
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_ctrl_c_in_queue_run_stops_the_job_after_its_step_saves_and_leaves_the_rest_queued(shapes_dir, tmp_path):
    job = preset(tmp_path, shapes_dir, 500)
    finish(cli(["queue", "add", "--preset", str(job), "--set", "name=long"], tmp_path))
    finish(cli(["queue", "add", "--preset", str(job), "--set", "name=next"], tmp_path))
    runner = cli(["queue", "run"], tmp_path)
    events = tmp_path / "outputs" / "long" / "events.jsonl"
    deadline = time.time() + 600
    while not any(e["event"] == "step" for e in read_events(events)):
        assert time.time() < deadline and runner.poll() is None
        time.sleep(0.05)
    runner.send_signal(signal.SIGINT)
    finish(runner, 300)
    jobs = listing(tmp_path)
    assert [(j["name"], j["state"]) for j in jobs] == [("long", "stopped"), ("next", "queued")]
    stopped = [e for e in read_events(events) if e["event"] == "stopped"]
    assert len(stopped) == 1 and stopped[0]["step"] < 500 and jobs[0]["step"] == stopped[0]["step"]
    assert (tmp_path / "outputs" / "long" / "long.safetensors").is_file()  # saved at the step it stopped on
    assert any((tmp_path / "outputs" / "long" / "checkpoints").glob("step-*"))


def test_list_json_fields_and_order_edits(tmp_path, capsys):
    queue = Queue(tmp_path / "outputs")
    ids = [queue.add(config(tmp_path, n), preset="test", cwd=tmp_path).id for n in ("a", "b", "c")]
    queue.move(ids[2], -2)
    queue.remove(ids[1])
    assert main(["queue", "list", "--json", "--dir", str(tmp_path / "outputs")]) == 0
    jobs = json.loads(capsys.readouterr().out)
    assert [(j["id"], j["name"], j["state"]) for j in jobs] == [(3, "c", "queued"), (1, "a", "queued")]
    assert all({"id", "name", "state", "run_dir", "step", "total_steps", "started", "ended"} <= j.keys() for j in jobs)
    assert jobs[1]["run_dir"] == str((tmp_path / "outputs" / "a").resolve())
    # The same name twice would write one run folder twice: refused.
    assert main(["queue", "--dir", str(tmp_path / "outputs"), "cancel", "9"]) == 2
    with pytest.raises(Exception, match="already trains"):
        queue.add(config(tmp_path, "a"), preset="test", cwd=tmp_path)


def test_a_running_job_without_a_live_runner_is_interrupted_and_never_rerun_on_its_own(tmp_path):
    queue = Queue(tmp_path / "outputs")
    job = queue.add(config(tmp_path, "a"), preset="test", cwd=tmp_path)
    queue.update(job.id, state="running", started=1.0)  # as a runner killed with -9 leaves it
    assert queue.job(job.id).state == "interrupted"
    assert queue.claim_next() is None  # a new runner does not start it again
    requeued = queue.requeue(job.id)
    assert requeued.state == "queued" and requeued.resume
    with pytest.raises(Exception, match="queued already"):
        queue.requeue(job.id)


def test_a_second_runner_is_refused(tmp_path, capsys):
    queue = Queue(tmp_path / "outputs")
    with hold(queue.runner_lock, "sdlora queue run"):
        assert main(["queue", "--dir", str(tmp_path / "outputs"), "run"]) == 2
    err = capsys.readouterr().err
    assert f"in use by process {os.getpid()}" in err and "queue.json" in err
