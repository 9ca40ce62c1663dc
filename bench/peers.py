"""Training speed of the peers, kohya's train_network.py and diffusers' train_text_to_image_lora.py, in one call.

    python3 bench/peers.py --json bench/results/peers.json                 # GPU: b1 and b8, both peers
    python3 bench/peers.py --device cpu --batch 1 2 --steps 2 --warmup 1 --resolution 64   # a CPU check

The peers are not part of the project and are never committed: their sources and the wheels they need travel in
an ignored kit folder (default `.peers/` in the repository root):

    .peers/sd-scripts/          kohya-ss/sd-scripts: train_network.py, library/, networks/ (COMMIT names the commit)
    .peers/diffusers/           examples/text_to_image/train_text_to_image_lora.py of huggingface/diffusers
    .peers/whl-common/          what both import that the GPU image lacks (toml, voluptuous, imagesize, datasets...)
    .peers/whl-kohya/           the versions sd-scripts' requirements.txt pins (transformers 4.54.1, diffusers
                                0.32.1, ...): first on kohya's path only, since its code does not import under
                                transformers 5

A copy of this file may sit in the kit as `.peers/peers.py` (same behaviour: it finds bench/ and the kit from
the repository root). Where the machine's pyarrow is too old for the kit's `datasets`, the diffusers example is
fed through a small stand-in (DATASETS_SHIM below) and the JSON says so.

Each peer runs as its own process, as its users run it (SD 1.5 with random weights, LoRA rank 16 on the UNet,
bf16 mixed precision, AdamW, lr 1e-4 constant, no sampling or saving mid-run), for warmup + steps optimizer
steps. Both log a scalar to tensorboard after every step, after a `.item()` that waits for the GPU, so the event
files' wall times are per-step timestamps: samples/s = batch * steps / (t[warmup + steps] - t[warmup]).
Each run has its own timeout and the whole round a budget; a failing run records the end of its log in the JSON
and the next one starts. Prints one JSON object, then a table.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEERS = ("kohya", "diffusers")
VERSIONS = ("torch", "transformers", "diffusers", "accelerate", "huggingface_hub", "safetensors", "peft",
            "tokenizers", "datasets", "pyarrow", "toml", "voluptuous", "imagesize")


def install(wheels: Path, target: Path) -> Path:
    """pip-install the wheels of `wheels` into `target` (once; kept between calls in the same work folder)."""
    files = sorted(glob.glob(str(wheels / "*.whl")))
    if not files:
        raise SystemExit(f"{wheels}: no wheels; build the kit first (see this file's docstring)")
    if not (target / ".done").is_file():
        shutil.rmtree(target, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--disable-pip-version-check", "--target", str(target), *files], check=True)
        (target / ".done").write_text("ok")
    return target


def peer_env(paths: list[Path], args) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(p) for p in paths] + [p for p in [env.get("PYTHONPATH")] if p])
    env.update(PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               HF_HOME=str(args.work_dir / "hf"), TOKENIZERS_PARALLELISM="false", WANDB_MODE="disabled",
               HF_HUB_DISABLE_TELEMETRY="1", DISABLE_TELEMETRY="1")
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def versions(env: dict) -> dict:
    """The distributions the peer's interpreter finds first on its path (read from metadata, nothing imported)."""
    code = ("import importlib.metadata as m, json\nout = {}\nfor n in %r:\n    try: out[n] = m.version(n)\n"
            "    except m.PackageNotFoundError: out[n] = None\nprint(json.dumps(out))" % (VERSIONS,))
    try:
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
        return json.loads(done.stdout.strip().splitlines()[-1])
    except Exception as exc:  # noqa: BLE001 - the versions are a note, never a reason to stop the round
        return {"error": repr(exc)}


DATASETS_SHIM = '''"""A stand-in for `datasets`, used only where the real one does not import (bench/peers.py writes it).

It serves what train_text_to_image_lora.py asks of it: load_dataset("imagefolder", data_files={"train": DIR/**})
over a metadata.jsonl of file_name/text, shuffle, select, with_transform (applied to a batch of one, as
`datasets` does) and the logging verbosity calls.
"""
import json
import os
import random

from PIL import Image


class _Logging:
    def __getattr__(self, name):
        return lambda *args, **kwargs: None


class utils:
    logging = _Logging()


class Dataset:
    column_names = ["image", "text"]

    def __init__(self, rows, transform=None):
        self.rows, self.transform = rows, transform

    def __len__(self):
        return len(self.rows)

    def shuffle(self, seed=None):
        rows = list(self.rows)
        random.Random(seed).shuffle(rows)
        return Dataset(rows, self.transform)

    def select(self, indices):
        return Dataset([self.rows[i] for i in indices], self.transform)

    def with_transform(self, transform):
        return Dataset(self.rows, transform)

    def __getitem__(self, index):
        path, text = self.rows[index]
        image = Image.open(path)
        image.load()
        batch = {"image": [image], "text": [text]}
        if self.transform is not None:
            batch = self.transform(batch)
        return {key: value[0] for key, value in batch.items()}


def load_dataset(name, data_files=None, **kwargs):
    if name != "imagefolder" or not data_files:
        raise NotImplementedError("the datasets stand-in reads only an imagefolder with a metadata.jsonl")
    folder = os.path.dirname(data_files["train"])
    rows = []
    with open(os.path.join(folder, "metadata.jsonl"), encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                entry = json.loads(line)
                rows.append((os.path.join(folder, entry["file_name"]), entry["text"]))
    return {"train": Dataset(rows)}
'''


def datasets_site(env: dict, data: Path, args) -> tuple[Path | None, str | None]:
    """(a folder holding the `datasets` stand-in, why) where the real `datasets` cannot load the example's
    imagefolder `data` (checked once; it also fills the cache the run then reads), else (None, None)."""
    if args.datasets_shim:
        why = "--datasets-shim"
    elif args.datasets_checked is not None:
        why = args.datasets_checked or None
    else:
        code = ("import datasets, sys\nd = datasets.load_dataset('imagefolder', data_files={'train': sys.argv[1]},"
                " cache_dir=sys.argv[2])\nprint(d['train'].column_names)")
        try:
            done = subprocess.run([sys.executable, "-c", code, str(data / "**"), str(args.work_dir / "hf")], env=env,
                                  capture_output=True, text=True, timeout=180)
            why = None if done.returncode == 0 else (done.stderr.strip().splitlines() or ["failed"])[-1]
        except subprocess.TimeoutExpired:
            why = "loading the imagefolder timed out"
        args.datasets_checked = why or ""
    if why is None:
        return None, None
    folder = args.work_dir / "datasets-shim"
    (folder / "datasets").mkdir(parents=True, exist_ok=True)
    (folder / "datasets" / "__init__.py").write_text(DATASETS_SHIM, encoding="utf-8")
    return folder, why


def kohya_data(data_dir: Path, work: Path, batch: int, total_steps: int) -> Path:
    """sd-scripts' DreamBooth layout, PARENT/<repeats>_<name>/, the repeats chosen so one epoch holds every step."""
    images = sorted(p for p in data_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))
    repeats = max(1, math.ceil(batch * total_steps / max(1, len(images))))
    parent = work / f"kohya-data-{repeats}"
    sub = parent / f"{repeats}_photo"
    if not sub.exists():
        parent.mkdir(parents=True, exist_ok=True)
        sub.symlink_to(data_dir.resolve(), target_is_directory=True)
    return parent


def diffusers_data(data_dir: Path, work: Path, need: int) -> Path:
    """The `imagefolder` layout the diffusers example reads: the images beside a metadata.jsonl of captions,
    each image linked as often as it takes to hold `need` samples, so one epoch holds every step (the example
    starts new data-loader workers at each epoch; kohya gets the same through its repeats)."""
    images = sorted(p for p in data_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))
    repeats = max(1, math.ceil(need / max(1, len(images))))
    folder = work / f"diffusers-data-{repeats}"
    if (folder / "metadata.jsonl").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for copy in range(repeats):
        for image in images:
            dest = folder / f"{image.stem}-{copy}{image.suffix}"
            if not dest.exists():
                try:
                    os.link(image, dest)
                except OSError:
                    shutil.copy2(image, dest)
            caption = image.with_suffix(".txt")
            text = caption.read_text(encoding="utf-8").strip() if caption.is_file() else "a photo"
            lines.append(json.dumps({"file_name": dest.name, "text": text}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def tokenizer_cache(model_dir: Path, work: Path) -> Path:
    """sd-scripts loads SD 1.x's tokenizer by hub id (openai/clip-vit-large-patch14) unless --tokenizer_cache_dir
    holds it: the model folder's own tokenizer is put there, so nothing is fetched."""
    cache = work / "tokenizer-cache"
    dest = cache / "openai_clip-vit-large-patch14"
    if not dest.exists():
        shutil.copytree(model_dir / "tokenizer", dest)
    return cache


def kohya_command(kit: Path, model_dir: Path, data: Path, out: Path, batch: int, args) -> list[str]:
    precision = "bf16" if args.device == "cuda" else "no"
    return [sys.executable, str(kit / "sd-scripts" / "train_network.py"),
            "--pretrained_model_name_or_path", str(model_dir), "--tokenizer_cache_dir", str(tokenizer_cache(
                model_dir, args.work_dir)),
            "--train_data_dir", str(data), "--caption_extension", ".txt",
            "--resolution", f"{args.resolution},{args.resolution}", "--train_batch_size", str(batch),
            "--max_train_steps", str(args.warmup + args.steps),
            "--network_module", "networks.lora", "--network_dim", str(args.rank), "--network_alpha", str(args.rank),
            "--network_train_unet_only", "--optimizer_type", "AdamW", "--learning_rate", str(args.lr),
            "--lr_scheduler", "constant", "--mixed_precision", precision, "--sdpa",
            "--cache_latents", "--vae_batch_size", "8",
            "--max_data_loader_n_workers", str(args.workers),
            *(["--persistent_data_loader_workers"] if args.workers else []), "--output_dir", str(out / "output"), "--output_name", "lora", "--save_model_as", "safetensors",
            "--logging_dir", str(out / "logs"), "--log_with", "tensorboard", "--seed", "0"]


def diffusers_command(kit: Path, model_dir: Path, data: Path, out: Path, batch: int, args) -> list[str]:
    precision = "bf16" if args.device == "cuda" else "no"
    return [sys.executable, str(kit / "diffusers" / "train_text_to_image_lora.py"),
            "--pretrained_model_name_or_path", str(model_dir), "--train_data_dir", str(data),
            "--image_column", "image", "--caption_column", "text", "--cache_dir", str(args.work_dir / "hf"),
            "--resolution", str(args.resolution), "--center_crop", "--train_batch_size", str(batch),
            "--max_train_steps", str(args.warmup + args.steps), "--rank", str(args.rank),
            "--learning_rate", str(args.lr), "--lr_scheduler", "constant", "--lr_warmup_steps", "0",
            "--mixed_precision", precision, "--dataloader_num_workers", str(args.workers),
            "--checkpointing_steps", "1000000", "--output_dir", str(out / "output"),
            "--logging_dir", str(out / "logs"), "--report_to", "tensorboard", "--seed", "0"]


def step_times(log_dir: Path) -> dict[int, float]:
    """{global step: wall time of its first logged scalar} from the tensorboard event files under `log_dir`."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    times: dict[int, float] = {}
    for file in sorted(glob.glob(str(log_dir / "**" / "events.out.tfevents.*"), recursive=True)):
        for event in EventFileLoader(file).Load():
            if event.HasField("summary") and len(event.summary.value) and event.step > 0:
                times[event.step] = min(times.get(event.step, math.inf), event.wall_time)
    return times


def tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").replace("\r", "\n")
    except OSError:
        return ""
    return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])


def die_with_parent() -> None:
    """In the peer's process, before it starts: the kernel kills it if this runner is killed (a caller's
    timeout), so no orphaned training keeps the GPU busy for the stages after it."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def run_one(peer: str, batch: int, kit: Path, model_dir: Path, data_dir: Path, sites: dict, args,
            timeout: float) -> dict:
    out = args.work_dir / f"{peer}-b{batch}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    total = args.warmup + args.steps
    if peer == "kohya":
        env = peer_env([sites["kohya"], sites["common"]], args)
        command = kohya_command(kit, model_dir, kohya_data(data_dir, args.work_dir, batch, total), out, batch, args)
        cwd = kit / "sd-scripts"
    else:
        env = peer_env([sites["common"]], args)
        data = diffusers_data(data_dir, args.work_dir, batch * total)
        shim, why = datasets_site(env, data, args)
        if shim is not None:
            env = peer_env([shim, sites["common"]], args)
        command = diffusers_command(kit, model_dir, data, out, batch, args)
        cwd = kit / "diffusers"
    row = {"peer": peer, "batch": batch, "warmup": args.warmup, "steps": args.steps, "versions": versions(env),
           "command": " ".join(command)}
    if peer == "diffusers":
        row["datasets"] = f"stand-in ({why})" if shim is not None else "real"
    log = out / "log.txt"
    start = time.time()
    with open(log, "w", encoding="utf-8") as sink:
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=die_with_parent)
        try:
            row["returncode"] = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            row["returncode"] = None
            row["error"] = f"timed out after {timeout:.0f} s"
    row["wall_s"] = round(time.time() - start, 1)
    times = step_times(out / "logs")
    row["steps_logged"] = len(times)
    if times:
        row["first_step_s"] = round(times[min(times)] - start, 1)
    if args.warmup in times and total in times and total > args.warmup:
        elapsed = times[total] - times[args.warmup]
        row["step_s"] = round(elapsed / args.steps, 4)
        row["samples_per_s"] = round(batch * args.steps / elapsed, 2)
    else:
        row.setdefault("error", f"steps {args.warmup} and {total} not both in the tensorboard log "
                                f"({len(times)} steps logged)")
    if row.get("returncode") not in (0,) or "samples_per_s" not in row:
        row["log_tail"] = tail(log)
    return row


def ensure_inputs(args) -> tuple[Path, Path]:
    sys.path.insert(0, str(ROOT / "bench"))
    sys.path.insert(0, str(ROOT))
    from train_speed import build_model, make_images

    model_dir = args.model_dir or args.work_dir / "model"
    if not (model_dir / "model_index.json").is_file():
        started = time.time()
        build_model("sd15", model_dir)
        print(f"built the random SD 1.5 folder in {time.time() - started:.0f} s", file=sys.stderr, flush=True)
    data_dir = args.data_dir or args.work_dir / "data"
    if not data_dir.is_dir() or not any(data_dir.glob("*.txt")):
        make_images(data_dir, max(args.images, max(args.batch) * (args.warmup + args.steps)), args.resolution)
    return model_dir, data_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", nargs="+", default=list(PEERS), choices=PEERS)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--steps", type=int, default=30, help="timed steps, after the warm-up")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--workers", type=int, default=4, help="data-loader workers of each peer")
    parser.add_argument("--images", type=int, default=64, help="images made when --data-dir has none")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: fp32, for a check")
    parser.add_argument("--kit", type=Path, default=ROOT / ".peers")
    parser.add_argument("--work-dir", type=Path, help="default: a new temporary folder")
    parser.add_argument("--model-dir", type=Path, help="reuse this random-weight SD 1.5 folder (built if missing)")
    parser.add_argument("--data-dir", type=Path, help="reuse this folder of images + .txt captions (made if empty)")
    parser.add_argument("--site-common", type=Path, help="an installed whl-common (default: installed now)")
    parser.add_argument("--site-kohya", type=Path, help="an installed whl-kohya (default: installed now)")
    parser.add_argument("--datasets-shim", action="store_true",
                        help="feed the diffusers example through the datasets stand-in even where datasets imports")
    parser.add_argument("--timeout", type=float, default=150, help="seconds one run may take")
    parser.add_argument("--budget", type=float, default=380, help="seconds the whole round may take")
    parser.add_argument("--json", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    started = time.time()
    args.datasets_checked = None  # set by the first diffusers run: "" (datasets works) or why it does not
    args.work_dir = (args.work_dir or Path(tempfile.mkdtemp(prefix="peers-"))).resolve()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    kit = args.kit.resolve()
    for need in ("sd-scripts/train_network.py", "diffusers/train_text_to_image_lora.py"):
        if not (kit / need).is_file():
            raise SystemExit(f"{kit / need}: missing; give the kit folder with --kit (see this file's docstring)")
    sites = {"common": args.site_common or install(kit / "whl-common", args.work_dir / "site-common"),
             "kohya": args.site_kohya or install(kit / "whl-kohya", args.work_dir / "site-kohya")}
    model_dir, data_dir = ensure_inputs(args)
    rows: list[dict] = []
    result = {
        "machine": platform.node(), "python": platform.python_version(), "device": args.device,
        "gpu": gpu_name(args.device), "resolution": args.resolution, "rank": args.rank,
        "kit": {name: read(kit / name / "COMMIT") for name in ("sd-scripts", "diffusers")},
        "method": "tensorboard wall time of each step's first scalar; samples/s over the steps after warm-up",
        "runs": rows, "complete": False}
    for batch in args.batch:
        for peer in args.peers:
            left = args.budget - (time.time() - started)
            if left < 30:
                rows.append({"peer": peer, "batch": batch, "error": f"skipped: {left:.0f} s of the budget left"})
                continue
            row = run_one(peer, batch, kit, model_dir, data_dir, sites, args, min(args.timeout, left))
            rows.append(row)
            print(json.dumps({k: row.get(k) for k in ("peer", "batch", "samples_per_s", "wall_s", "error")}),
                  file=sys.stderr, flush=True)
            write_json(args.json, result | {"total_s": round(time.time() - started, 1)})  # kept if killed later
    result |= {"complete": True, "total_s": round(time.time() - started, 1)}
    write_json(args.json, result)
    print(json.dumps(result, indent=2))
    print(f"\n{'peer':<10} {'batch':>5} {'samples/s':>10} {'s/step':>8} {'first step s':>12} {'wall s':>7}  error")
    for row in rows:
        print(f"{row['peer']:<10} {row['batch']:>5} {fmt(row.get('samples_per_s')):>10} {fmt(row.get('step_s')):>8}"
              f" {fmt(row.get('first_step_s')):>12} {fmt(row.get('wall_s')):>7}  {row.get('error', '')}")


def write_json(path: Path | None, result: dict) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    part.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    part.replace(path)


def fmt(value) -> str:
    return "-" if value is None else str(value)


def read(path: Path) -> str | None:
    return path.read_text(encoding="utf-8").strip() if path.is_file() else None


def gpu_name(device: str) -> str | None:
    if device != "cuda":
        return None
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20)
        return done.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


if __name__ == "__main__":
    main()
