"""Bad input is a one-line exit-2 error naming the key or file, never exit 1, a traceback or silence; output from
files cannot drive the terminal (issue #15, cases 6, 8, 10, 11 and the small ones of 12)."""

from __future__ import annotations

import logging
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sdlora.adapters import save_adapter
from sdlora.cli import main
from sdlora.config import config_from_dict, describe_options
from sdlora.errors import SdloraError
from sdlora.text import printable
from test_cli_adapters import small_adapter

FLOAT_KEYS = [key for key, _, default in describe_options() if isinstance(default, float)]


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code: int, err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, err)


@pytest.fixture
def preset(tmp_path, shapes_dir) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(f"name: p\nmodel: tiny\ndata: {{dir: {shapes_dir}, resolution: 64}}\n"
                    f"train: {{steps: 2, batch_size: 2}}\nsave: {{output_dir: {tmp_path / 'outputs'}}}\n")
    return path


# ------------------------------------------------------------------------------------------- case 6: NaN, inf
@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_nan_and_inf_are_out_of_range_for_every_float_key(value):
    assert "train.lr" in FLOAT_KEYS and "network.alpha" not in FLOAT_KEYS  # alpha defaults to None: added below
    for key in FLOAT_KEYS + ["network.alpha", "train.min_snr_gamma", "train.text_encoder_lr"]:
        raw = float(value.replace(".", ""))
        for part in reversed(key.split(".")):
            raw = {part: raw}
        with pytest.raises(SdloraError, match=f"^{key}: .* is out of range"):
            config_from_dict(raw)


def test_nan_on_the_command_line_is_exit_2_naming_the_key(preset, capsys):
    for key in ("train.lr", "network.alpha"):
        code, _, err = cli(capsys, "train", "--preset", preset, "--set", f"{key}=.nan")
        one_line_error(code, err, f"{key}: nan is out of range")
    assert not (preset.parent / "outputs").exists()


def test_a_run_whose_every_step_is_skipped_ends_with_an_error(shapes_dir, tmp_path):
    from sdlora.events import EventBus
    from sdlora.train.rundir import new_run
    from sdlora.train.trainer import Trainer

    config = config_from_dict({"name": "s", "model": "tiny", "data": {"dir": str(shapes_dir), "resolution": 64},
                               "train": {"steps": 3, "batch_size": 2, "max_bad_steps": 5},
                               "save": {"output_dir": str(tmp_path)}})
    events = []
    trainer = Trainer(config, new_run(config), EventBus([events.append]))
    trainer.setup()
    real = trainer.objective
    trainer.objective = lambda *args: real(*args) * float("nan")
    result = trainer.run()
    assert result.status == "error" and result.adapter_path is None
    assert [e["event"] for e in events][-1] == "error" and "all 3 steps" in events[-1]["message"]
    assert not (tmp_path / "s" / "s.safetensors").exists()


# ------------------------------------------------------------------------------------------- case 8: escapes
def test_printable_escapes_every_control_character():
    assert printable("a\x1b[2Jb\rc\nd\te\x7f\x9b\u202e") == "a\\x1b[2Jb\\rc\\nd\\te\\x7f\\x9b\\u202e"
    assert printable("plain ümlaut 日本") == "plain ümlaut 日本"


def test_inspect_prints_metadata_escaped(tmp_path, capsys):
    adapter = small_adapter()
    adapter.metadata["ss_output_name"] = "x\x1b[2J\x1b[H\rforged\nsdlora: all good"
    path = save_adapter(adapter, tmp_path / "evil.safetensors")
    code, out, err = cli(capsys, "inspect", path)
    assert code == 0, err
    assert "\x1b" not in out and "\r" not in out
    assert "x\\x1b[2J\\x1b[H\\rforged\\nsdlora: all good" in out
    assert not any(line.startswith("sdlora: all good") for line in out.splitlines())


def test_dataset_check_prints_caption_bytes_escaped(shapes_dir, capsys):
    (shapes_dir / "img000.txt").write_text("evil\x1b]0;owned\x07tag, \x1b[31mred\r\n", encoding="utf-8")
    code, out, err = cli(capsys, "dataset", "check", shapes_dir, "--resolution", "64")
    assert code == 0, err
    tags = next(line for line in out.splitlines() if "top tags" in line)
    assert "\x1b" not in out and "\x07" not in out and "\\x1b]0;owned\\x07tag" in tags


# ------------------------------------------------------------------------------------------- case 10: exit 2
def test_bad_preset_values_are_exit_2(preset, tmp_path, capsys):
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("name: caf\xe9\n".encode("latin-1"))
    code, _, err = cli(capsys, "train", "--preset", latin1)
    one_line_error(code, err, "latin1.yaml: not UTF-8")
    code, _, err = cli(capsys, "train", "--preset", preset, "--set", "name=" + "n" * 300)
    one_line_error(code, err, "name: must be at most 100 characters")
    code, _, err = cli(capsys, "train", "--preset", preset, "--set", "data.caption_extension=/x")
    one_line_error(code, err, "data.caption_extension: '/x' is not a file extension")


def test_an_output_folder_that_cannot_be_written_is_exit_2(preset, tmp_path, capsys):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    for folder in ("/proc", a_file):
        code, _, err = cli(capsys, "train", "--preset", preset, "--set", f"save.output_dir={folder}")
        one_line_error(code, err, f"{folder}/p: cannot write the run folder", "save.output_dir")


def test_generate_refuses_bad_arguments_before_loading_the_model(tmp_path, capsys):
    lora = save_adapter(small_adapter(), tmp_path / "a.safetensors")
    base = ["generate", "--model", "tiny", "--lora", lora, "--prompt", "x"]
    cases = [
        (["--out", tmp_path], "is a folder"),
        (["--out", tmp_path / "x.txt"], "give an image file ending in .png"),
        (["--out", tmp_path / "x.png", "--seed", str(2**70)], "--seed 1180591620717411303424"),
        (["--out", tmp_path / "x.png", "--guidance", "nan"], "--guidance nan: give a guidance scale in [0, 50]"),
        (["--out", tmp_path / "x.png", "--guidance=-1e9"], "--guidance -1000000000.0"),
        (["--out", tmp_path / "x.png", "--vae", "/etc/passwd"], "vae: applies to single-file checkpoints"),
    ]
    for extra, message in cases:
        code, _, err = cli(capsys, *base, *extra)
        one_line_error(code, err, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors"]


def test_convert_and_resize_onto_a_folder_are_exit_2(tmp_path, capsys):
    lora = save_adapter(small_adapter(), tmp_path / "a.safetensors")
    (tmp_path / "out").mkdir()
    code, _, err = cli(capsys, "convert", lora, tmp_path / "out", "--to", "diffusers")
    one_line_error(code, err, "out: is a folder")
    code, out, err = cli(capsys, "resize", lora, "--rank", "2", "--out", tmp_path / "out")
    one_line_error(code, err, "out: is a folder")
    assert not any((tmp_path / "out").iterdir())


def _app(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ui.app", *argv], capture_output=True, text=True, timeout=120)


def test_the_app_refuses_a_bad_or_busy_port_with_exit_2():
    from ui.app import port_problem

    assert "give a port from 1 to 65535" in port_problem("127.0.0.1", 99999)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert "cannot listen on 127.0.0.1:%d" % port in port_problem("127.0.0.1", port)
        proc = _app("--port", str(port))
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == (
        f"sdlora-ui: error: --port {port}: cannot listen on 127.0.0.1:{port} (Address already in use); pick "
        f"another with --port N"), proc.stderr
    assert "Traceback" not in proc.stderr
    proc = _app("--port", "99999")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "--port 99999" in proc.stderr


# ------------------------------------------------------------------------------------------- case 11: ignored
def test_a_vae_for_the_built_in_model_is_refused_in_train_and_preview(preset, capsys):
    from ui.preview_engine import GenParams, PreviewEngine

    for vae in ("/etc/passwd", "/x/model.ckpt"):
        code, _, err = cli(capsys, "train", "--preset", preset, "--set", f"vae={vae}", "--dry-run")
        one_line_error(code, err, "vae: applies to single-file checkpoints; the built-in model 'tiny'")
        with pytest.raises(SdloraError, match="the built-in model 'tiny' has its own VAE"):
            PreviewEngine().generate("tiny", [], GenParams(prompt="x", steps=1), vae)


# ------------------------------------------------------------------------------------------- case 12: small ones
def test_adapters_are_written_with_the_usual_file_mode(tmp_path):
    umask = os.umask(0o022)
    try:
        path = save_adapter(small_adapter(), tmp_path / "a.safetensors")
    finally:
        os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_no_bitsandbytes_notice_on_stderr_and_its_logger_is_left_as_it_was():
    # diffusers imports bitsandbytes with its model classes (its quantizers), which loading any model does.
    code = ("import logging, sys, sdlora.models; from diffusers import AutoencoderKL; "
            "print(logging.getLogger('bitsandbytes.backends.cpu.ops').level, 'bitsandbytes' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "kernels" not in proc.stderr, proc.stderr
    installed = proc.stdout.split()[1] == "True"
    assert proc.stdout.split()[0] == str(logging.NOTSET) or not installed


def test_torn_last_event_line_is_skipped_and_the_next_writer_starts_a_fresh_line(tmp_path):
    from sdlora.events import EventBus, JsonlWriter, read_events

    path = tmp_path / "events.jsonl"
    path.write_text('{"event": "start", "time": 1.0}\n{"event": "step", "ti', encoding="utf-8")
    assert [e["event"] for e in read_events(path)] == ["start"]
    bus = EventBus([JsonlWriter(path)])
    bus.emit("warning", message="resumed")
    bus.close()
    assert [e["event"] for e in read_events(path)] == ["start", "warning"]
    assert path.read_text().splitlines()[1] == '{"event": "step", "ti'


def test_checkpoint_files_are_fsynced_before_the_rename(tmp_path, monkeypatch):
    """Power loss: the folder is renamed into place only once every file in it (and the folder) is on the disk."""
    import sdlora.train.checkpoint as ckpt
    from sdlora.lora.state import Adapter

    log: list[tuple[str, Path]] = []
    real_fsync, real_rename = ckpt._fsync, Path.rename
    monkeypatch.setattr(ckpt, "_fsync", lambda path: (log.append(("fsync", Path(path))), real_fsync(path)))
    monkeypatch.setattr(Path, "rename",
                        lambda self, target: (log.append(("rename", self)), real_rename(self, target))[1])
    params = [torch.nn.Parameter(torch.zeros(2))]
    optimizer = torch.optim.AdamW(params)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    final = ckpt.save_checkpoint(tmp_path / "checkpoints", 5, Adapter(small_adapter().layers), optimizer, scheduler, 0)
    at = log.index(("rename", tmp_path / "checkpoints" / ".step-000005.tmp"))
    synced = {path.name for kind, path in log[:at] if kind == "fsync"}
    assert {p.name for p in final.iterdir()} | {".step-000005.tmp"} <= synced
    assert log[at + 1] == ("fsync", tmp_path / "checkpoints")  # the rename itself is made durable
