"""`sdlora train --preset FILE [--set KEY=VALUE]... [--resume RUN_DIR] [--dry-run]`."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import sys
from pathlib import Path

from sdlora.config import Config, load_config
from sdlora.errors import SdloraError


def register(sub) -> None:
    p = sub.add_parser("train", help="train a LoRA from a preset")
    p.add_argument("--preset", type=Path, help="preset YAML (see presets/); this or --resume is required")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a preset key, e.g. --set train.steps=200 (repeatable)")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue the run in RUN_DIR (outputs/NAME) from "
                   "its last checkpoint, with its own settings (and any --set); this or --preset is required")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and plan, then exit")
    p.add_argument("--gpus", type=int, default=1, metavar="N",
                   help="data-parallel training on N GPUs of this machine, one process each (batch_size is per "
                        "GPU); for several machines use `accelerate launch -m sdlora train ...`")
    p.set_defaults(handler=run)


def resolve_data_dir(config: Config, preset: Path | None) -> Config:
    """A relative data.dir is looked up from the current folder, then from the preset's folder and its parent."""
    for section in ("dir", "reg_dir"):
        value = getattr(config.data, section)
        if not value or Path(value).is_absolute():
            continue
        candidates = [Path.cwd() / value]
        if preset is not None:
            candidates += [preset.parent / value, preset.parent.parent / value]
        found = next((c for c in candidates if c.is_dir()), None)
        if found is None:
            tried = ", ".join(str(c) for c in dict.fromkeys(candidates))
            raise SdloraError(f"data.{section}: folder '{value}' not found (looked in {tried}); fix the path in "
                              f"the preset or pass --set data.{section}=PATH")
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, **{section: str(found.resolve())}))
    return resolve_subset_dirs(config, preset)


def resolve_subset_dirs(config: Config, preset: Path | None) -> Config:
    """Each data.subsets dir, looked up as data.dir is."""
    subsets = []
    for i, subset in enumerate(config.data.subsets):
        probe = dataclasses.replace(config, data=dataclasses.replace(config.data, dir=subset.dir, reg_dir="",
                                                                     subsets=[]))
        try:
            found = resolve_data_dir(probe, preset).data.dir
        except SdloraError as exc:
            raise SdloraError(str(exc).replace("data.dir", f"data.subsets[{i}].dir")) from None
        subsets.append(dataclasses.replace(subset, dir=found))
    return dataclasses.replace(config, data=dataclasses.replace(config.data, subsets=subsets)) if subsets else config


def run(args) -> int:
    from sdlora.train.rundir import open_run, run_lock

    from sdlora.train import distributed

    if args.resume is None and args.preset is None:
        raise SdloraError("give --preset FILE (see presets/) or --resume outputs/NAME")
    if args.resume is not None and args.preset is not None:
        raise SdloraError(f"--preset {args.preset} with --resume: a resumed run keeps its own config.yaml; drop "
                          f"--preset (what may change, such as train.steps, takes --set KEY=VALUE)")
    if args.gpus < 1:
        raise SdloraError(f"--gpus {args.gpus}: give a number of GPUs of 1 or more")
    changes: dict = {}
    if args.resume is not None:
        config, paths, changes = open_run(args.resume, args.overrides)
    else:
        config = resolve_data_dir(load_config(args.preset, args.overrides), args.preset)
        paths = None
    if args.dry_run:
        return dry_run(config)
    if args.gpus > 1 and not distributed.is_distributed():
        if config.train.device != "cpu":  # train.device=cpu: N processes on the CPU (gloo), as the tests do
            check_gpus(args.gpus)
        return distributed.launch(args.gpus, without_gpus_flag(sys.argv[1:]))
    # One writer per run folder: rank 0 holds its lock from before the first write to the last.
    root = paths.root if paths is not None else Path(config.save.output_dir) / config.name
    with run_lock(root) if distributed.rank() == 0 else contextlib.nullcontext():
        return train_locked(args, config, paths, changes)


def train_locked(args, config: Config, paths, changes: dict) -> int:
    """The run itself, once the run folder is this process's (rank 0) or its rank 0's."""
    from sdlora.events import ConsoleReporter, EventBus, JsonlWriter
    from sdlora.train import distributed
    from sdlora.train.resume import finish_from_checkpoint, plan_resume
    from sdlora.train.rundir import RunPaths, new_run, record_changes, remove_stale_temps
    from sdlora.train.trainer import StopFlag, Trainer

    plan = None
    if paths is not None:  # --resume: refused here, before any event or file is written, if nothing is left to do
        plan = plan_resume(config, paths)
        if distributed.rank() == 0:
            remove_stale_temps(paths.root)
            record_changes(paths, config, changes)
    if distributed.is_distributed():
        from accelerate import PartialState

        # Rank 0 makes (or checks) the run folder; the others use it once it is there.
        state = PartialState(cpu=config.train.device == "cpu")
        with state.main_process_first():
            if paths is None:
                paths = new_run(config) if state.is_main_process else RunPaths(
                    Path(config.save.output_dir) / config.name, config.name)
    elif paths is None:
        paths = new_run(config)

    main = distributed.rank() == 0
    from sdlora.train.threads import apply_cpu_threads

    threads_line = apply_cpu_threads(config.train.cpu_threads)
    if main:  # on stdout: stderr carries only the one-line error when something fails
        print(threads_line, flush=True)
    log = JsonlWriter(paths.events) if main else None
    events = EventBus([log, ConsoleReporter()] if main else [])
    if plan is not None and plan.finished:  # killed while writing its final adapter: the last checkpoint has it
        path = finish_from_checkpoint(plan, paths) if main else paths.adapter
        events.emit("done", step=plan.checkpoint.step, total_steps=config.train.steps, path=path,
                    message="the final adapter was missing; written from the last checkpoint")
        events.close()
        if main:
            print(f"adapter: {path}", file=sys.stderr)
        return 0
    if plan is not None and plan.note:
        events.emit("warning", message=plan.note)
    stop = StopFlag()
    install_stop_handlers(stop)
    trainer = Trainer(config, paths, events, stop)
    try:
        trainer.setup()
        result = trainer.run(resume=plan is not None and plan.checkpoint is not None, changes=changes)
    except Exception as exc:
        # Into events.jsonl only: the CLI prints the one line on stderr itself (cli.py), so the terminal shows
        # the error once.
        if log is not None:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            EventBus([log]).emit("error", message=detail if isinstance(exc, SdloraError)
                                 else f"{type(exc).__name__}: {detail}")
        raise
    finally:
        events.close()
    if result.status == "error":
        return 1
    if main and result.adapter_path:
        print(f"adapter: {result.adapter_path}", file=sys.stderr)
    return 0


def check_gpus(count: int) -> None:
    import torch

    have = torch.cuda.device_count()
    if have < count:
        raise SdloraError(f"--gpus {count}: this machine has {have} CUDA GPU(s); lower --gpus")


def without_gpus_flag(argv: list[str]) -> list[str]:
    """The command line the workers run: the same, less `--gpus N` (they are the N)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--gpus":
            skip = True
        elif not arg.startswith("--gpus="):
            out.append(arg)
    return out


def install_stop_handlers(stop) -> None:
    """First SIGINT/SIGTERM: finish the step, save, exit. A second SIGINT aborts at once."""
    def handler(signum, frame):
        name = signal.Signals(signum).name
        if stop.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.request(f"{name} received")
        print(f"\n{name}: stopping after this step and saving (Ctrl-C again aborts without saving)",
              file=sys.stderr, flush=True)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def dry_run(config: Config) -> int:
    """Print the resolved config, the data, the network size and the plan; touch nothing."""
    import torch

    from sdlora.data.dataset import build_dataset
    from sdlora.data.summary import summarize
    from sdlora.train.trainer import collect_warnings
    from sdlora.events import ConsoleReporter, EventBus
    from sdlora.network import TEXT_ENCODER_TARGETS, count_parameters
    from sdlora.train.model_setup import setup_model
    from sdlora.train.trainer import pick_device

    print("# resolved config")
    print(config.to_yaml())
    with collect_warnings(EventBus([ConsoleReporter(stream=sys.stdout, bar=False)])):
        dataset = build_dataset(config.data)
    print("# data")
    for line in summarize(dataset, batch_size=config.train.batch_size).lines():
        print(f"  {line}")
    with collect_warnings(EventBus([ConsoleReporter(stream=sys.stdout, bar=False)])):
        model = setup_model(config)  # what `train` sets up, with the same checks and warnings
    components = model.components
    modules, te_modules = model.unet_modules, model.text_encoder_modules
    trainable, total = count_parameters(components.unet)
    te_trainable, _ = count_parameters(*model.text_encoders.values()) if model.text_encoders else (0, 0)
    train = config.train
    per_step = train.batch_size * train.gradient_accumulation
    batches = len(dataset.epoch_batches(0, train.batch_size, train.seed))  # bucket tails counted
    steps_per_epoch = max(1, batches // train.gradient_accumulation)
    device = pick_device(train.device)
    print("# network")
    print(f"  LoRA rank {config.network.rank}, alpha {config.network.effective_alpha} on {len(modules)} modules "
          f"({', '.join(config.network.targets)})")
    print(f"  trainable parameters: {trainable:,} ({100 * trainable / total:.2f}% of the UNet's {total:,})")
    if te_modules:
        print(f"  text encoder: LoRA on {len(te_modules)} modules ({', '.join(TEXT_ENCODER_TARGETS)}), "
              f"{te_trainable:,} parameters, lr {train.effective_text_encoder_lr}")
    print("# plan")
    print(f"  model: {config.model} ({components.family}, {components.prediction_type} prediction)")
    print(f"  {train.steps} steps x {per_step} samples = {train.steps * per_step} samples, "
          f"~{math.ceil(train.steps / steps_per_epoch)} epoch(s) of {steps_per_epoch} steps")
    print(f"  optimizer {train.optimizer}, lr {train.lr} ({train.scheduler}, warmup {train.warmup_steps}), "
          f"precision {train.mixed_precision}, device {device.type}"
          + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else ""))
    every = config.sample.every
    print(f"  samples: {len(config.sample.prompts)} prompt(s) "
          + (f"every {every} steps and at the end" if every else "at the end"))
    print("  checkpoints: " + (f"every {config.save.every} steps and " if config.save.every else "")
          + f"at the end -> {Path(config.save.output_dir) / config.name}")
    return 0
