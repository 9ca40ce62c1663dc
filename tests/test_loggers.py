"""train.log_with: TensorBoard event files under logs/ that TensorBoard itself reads; a W&B offline run under
logs/wandb/ that wandb itself reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdlora.config import replace_keys
from test_recipe import recipe_config, train_run


def test_tensorboard_logs_are_readable_by_tensorboard(shapes_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = recipe_config(shapes_dir, tmp_path / "out", steps=3, log_with="tensorboard", validate_every=3,
                           data={"validation_split": 0.25})
    config = replace_keys(config, {"sample.prompts": ["a red circle"], "sample.steps": 2})
    _, result, events = train_run(config)
    logs = tmp_path / "out" / "r" / "logs"
    accumulator = EventAccumulator(str(logs), size_guidance={"images": 0})
    accumulator.Reload()
    tags = accumulator.Tags()
    losses = [(s.step, s.value) for s in accumulator.Scalars("loss")]
    expected = [(e["step"], e["loss"]) for e in events if e["event"] == "step"]
    assert [s for s, _ in losses] == [1, 2, 3]
    assert all(abs(a[1] - b[1]) < 1e-6 for a, b in zip(losses, expected))
    assert [s.step for s in accumulator.Scalars("lr")] == [1, 2, 3]
    validation = [(e["step"], e["loss"]) for e in events if e["event"] == "validation"]
    assert [(s.step, round(s.value, 6)) for s in accumulator.Scalars("validation_loss")] == \
        [(s, round(v, 6)) for s, v in validation]
    assert "sample/00" in tags["images"]


def _children() -> set[int]:
    """Live child processes of this one (Linux /proc), to see what a wandb run leaves behind."""
    import os

    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and fields[0] != "Z":
            out.add(int(stat.parent.name))
    return out


def _wandb_offline(monkeypatch, tmp_path) -> None:
    """No WANDB_* settings from the machine; wandb's per-user folders (settings, caches) in the test's folder."""
    pytest.importorskip("wandb", reason="wandb is not installed (pip install 'sdlora[wandb]')")
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DIR", "WANDB_RUN_ID", "WANDB_RESUME"):
        monkeypatch.delenv(var, raising=False)
    for var, sub in (("WANDB_CONFIG_DIR", "config"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_DATA_DIR", "data")):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home" / sub))


def _inspect(run_file: Path, *args: str) -> str:
    """wandb's own reader of a .wandb run file (`wandb leet inspect`)."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", str(run_file), *args],
                          capture_output=True, text=True, timeout=120, check=True, stdin=subprocess.DEVNULL).stdout


def test_wandb_offline_run_in_the_run_folder_holds_the_numbers(shapes_dir, tmp_path, monkeypatch):
    """The real wandb package, no network and no account: the run folder gets an offline W&B run whose history,
    read back by wandb's own reader (`wandb leet inspect`), holds each step's loss and lr, the validation loss and the
    samples, and the wandb service process is gone once training ends."""
    import json
    import time

    import numpy as np
    from PIL import Image

    _wandb_offline(monkeypatch, tmp_path)
    before = _children()
    config = recipe_config(shapes_dir, tmp_path / "out", steps=3, log_with="wandb", validate_every=2,
                           data={"validation_split": 0.25})
    config = replace_keys(config, {"sample.prompts": ["a red circle"], "sample.steps": 2})
    _, result, events = train_run(config)
    assert result.status == "done"
    runs = list((tmp_path / "out" / "r" / "logs" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1, runs
    records = _inspect(runs[0], "--json")
    history: dict[int, dict] = {}
    for line in records.splitlines():
        record = json.loads(line) if line.startswith("{") else {}
        if record.get("type") == "history":
            history[record["history"]["step"]["num"]] = record["history"]["item"]
    steps = [e for e in events if e["event"] == "step"]
    validation = {e["step"]: e["loss"] for e in events if e["event"] == "validation"}
    assert [e["step"] for e in steps] == [1, 2, 3] and sorted(validation) == [0, 2, 3]  # 0: before training
    assert sorted(history) == [0, 1, 2, 3]
    for e in steps:
        assert history[e["step"]]["loss"] == pytest.approx(e["loss"], rel=1e-9)
        assert history[e["step"]]["lr"] == pytest.approx(e["lr"], rel=1e-9)
    assert {s: history[s].get("validation_loss") for s in validation} == pytest.approx(validation, rel=1e-9)
    # The samples as images: the same pixels as the sample files of the run.
    (sample,) = [e for e in events if e["event"] == "sample"]
    logged = history[sample["step"]]
    assert logged["samples.count"] == len(sample["images"]) == 1
    with Image.open(runs[0].parent / "files" / logged["samples.filenames"][0]) as a, \
            Image.open(sample["images"][0]) as b:
        assert np.array_equal(np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB")))
    summary = json.loads(_inspect(runs[0], "--summary", "--json"))
    assert summary["state"] == "finished" and summary["exit_code"] == 0 and summary["name"] == "r"
    assert summary["config"]["train"]["log_with"] == "wandb"
    deadline = time.monotonic() + 15
    while _children() - before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _children() - before, "wandb left a process running"


def test_a_run_that_fails_is_a_failed_wandb_run(tmp_path, monkeypatch):
    import json

    from sdlora.config import config_from_dict
    from sdlora.train.loggers import make_logger

    _wandb_offline(monkeypatch, tmp_path)
    config = config_from_dict({"name": "f", "train": {"log_with": "wandb"}})
    logger = make_logger(config, tmp_path)
    logger({"event": "step", "step": 1, "loss": 0.5, "lr": 1e-4})
    logger({"event": "error", "step": 1, "message": "out of memory"})
    logger.close()
    (run_file,) = (tmp_path / "logs" / "wandb").glob("offline-run-*/run-*.wandb")
    summary = json.loads(_inspect(run_file, "--summary", "--json"))
    assert summary["exit_code"] == 1 and summary["summary"]["loss"] == 0.5


def test_wandb_missing_is_a_one_line_error(monkeypatch):
    import sys

    import pytest

    from sdlora.config import Config
    from sdlora.errors import SdloraError
    from sdlora.train.loggers import make_logger

    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    config = replace_keys(Config(), {"train.log_with": "wandb"})
    with pytest.raises(SdloraError, match=r"train.log_with: wandb is not installed; pip install 'sdlora\[wandb\]'"):
        make_logger(config, __import__("pathlib").Path("."))


def test_wandb_online_without_an_account_is_a_one_line_error(tmp_path, monkeypatch):
    """WANDB_MODE=online asks for W&B's servers; without a login that is a one-line error saying how to log offline
    (before any network is tried: there is no API key to send)."""
    pytest.importorskip("wandb", reason="wandb is not installed (pip install 'sdlora[wandb]')")
    from sdlora.config import config_from_dict
    from sdlora.errors import SdloraError
    from sdlora.train.loggers import make_logger

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc login
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("WANDB_MODE", "online")
    config = config_from_dict({"name": "w", "train": {"log_with": "wandb"}})
    before = _children()
    with pytest.raises(SdloraError, match=r"^train.log_with: wandb could not start in mode 'online' \(.*API key.*\); "
                                          r"unset WANDB_MODE to log offline") as err:
        make_logger(config, tmp_path / "run")
    assert "\n" not in str(err.value)
    assert not _children() - before, "wandb left a process running"
