"""The training loop, top to bottom: set up, then one optimizer step at a time, with events out.

Every random draw of step s (data order and augmentation, noise, timesteps, LoRA dropout) is derived from
(seed, s), so a run stopped at step s and resumed from its checkpoint is bitwise identical on the CPU to one
that never stopped.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from sdlora.config import Config
from sdlora.diskspace import reporting_disk_full
from sdlora.data import SampleKey, TrainDataset, build_dataset, collate
from sdlora.data.summary import subset_note
from sdlora.errors import SdloraError
from sdlora.events import EventBus
from sdlora.network import count_parameters, dylora_ranks, extract_adapter, load_into, lora_parameters
from sdlora.train.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from sdlora.train.compiled import (compile_step_model, mark_step_begin, needs_gradient_buffer, use_channels_last,
                                   use_compile, use_cuda_graphs, use_whole_step_graph)
from sdlora.train.distributed import GradientSync, any_process, is_distributed, mean_across_processes
from sdlora.train.encode import BatchEncoder, set_vae_memory, with_time_ids
from sdlora.train.fp8 import check_fp8_supported, convert_frozen_linears
from sdlora.train.killpoints import kill_point
from sdlora.train.memory import memory_watch
from sdlora.lora.metadata import adapter_metadata
from sdlora.train.model_setup import setup_model
from sdlora.train.objective import make_objective
from sdlora.train.optim import evaluation_weights, make_lr_scheduler, make_optimizer
from sdlora.train.requests import take_requests
from sdlora.train.rundir import RunPaths
from sdlora.train.sampling import sample_images
from sdlora.train.step_graph import CudaGraphRecorder, StepGraphs, step_graph_blocker, tensor_lr
from sdlora.train import recipe

DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class StopFlag:
    """Set by a signal handler or the UI; the loop stops cleanly after the current step."""

    requested: bool = False
    reason: str = ""

    def request(self, reason: str) -> None:
        self.requested, self.reason = True, reason


@dataclass
class TrainResult:
    status: str  # "done" | "stopped" | "error"
    step: int
    adapter_path: Path | None
    losses: list[float] = field(default_factory=list)


@dataclass
class LoopState:
    """What changes as the loop runs, in one place; everything else on the Trainer is set up once (__init__ and
    setup). A new one per `run()`; the optimizer, schedule, EMA and best validation loss keep their own state,
    which checkpoints save."""

    started_at: float = 0.0  # unix time this session began (the adapter's ss_training_started_at)
    start_step: int = 0  # the step this session resumed from (0: a fresh run)
    step: int = 0  # the last step begun
    bad_steps: int = 0  # non-finite losses in a row
    losses: list[float] = field(default_factory=list)  # this session's finite step losses
    window_start: float = 0.0  # perf_counter() at the last report: samples/s over the window since


def step_seed(seed: int, step: int, salt: int = 0) -> int:
    return (seed * 1_000_003 + step * 7_919 + salt) % (2**63 - 1)


def pick_device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise SdloraError("train.device: cuda was asked for but no CUDA GPU is visible; use auto or cpu")
        return torch.device("cuda")
    return torch.device("cpu")


class MicroBatchPlan:
    """The micro-batches of a run from a given index on, across epochs: lists of SampleKey for the DataLoader."""

    def __init__(self, dataset: TrainDataset, batch_size: int, seed: int, start: int,
                 num_processes: int = 1, process_index: int = 0):
        self.dataset, self.batch_size, self.seed, self.start = dataset, batch_size, seed, start
        self.num_processes, self.process_index = num_processes, process_index
        global_batch = batch_size * num_processes
        self.per_epoch = len(dataset.epoch_batches(0, global_batch, seed))
        if self.per_epoch == 0:
            raise SdloraError(f"train.batch_size: {batch_size} x {num_processes} process(es) is larger than the "
                              f"{len(dataset)} samples of an epoch; lower it or raise data.repeats")

    def __iter__(self) -> Iterator[list[SampleKey]]:
        index = self.start
        while True:
            epoch, within = divmod(index, self.per_epoch)
            batches = self.dataset.epoch_batches(epoch, self.batch_size * self.num_processes, self.seed)
            for batch in batches[within:]:
                # Each process takes its own slice of the global batch (data parallelism).
                yield batch[self.process_index::self.num_processes]
            index = (epoch + 1) * self.per_epoch


def collect_warnings(events: EventBus):
    """Route `warnings.warn` from the library (e.g. a missing caption) into `warning` events."""
    @contextlib.contextmanager
    def scope():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
        for w in caught:
            if issubclass(w.category, (DeprecationWarning, FutureWarning)):
                continue
            events.emit("warning", message=str(w.message))
    return scope()


def adapter_bytes(adapter) -> int:
    """Bytes of the adapter's tensors at fp32 (what a save writes, before format overhead)."""
    return sum(4 * t.numel() for layer in adapter.layers.values() for t in vars(layer).values()
               if isinstance(t, torch.Tensor))


class Trainer:
    def __init__(self, config: Config, paths: RunPaths, events: EventBus, stop: StopFlag | None = None):
        self.config, self.paths, self.events = config, paths, events
        self.stop = stop or StopFlag()
        self.resume_hint = f" and resume with: sdlora train --resume {paths.root}"
        self.train_cfg = config.train
        self.device = pick_device(config.train.device)
        self.dtype = DTYPES[config.train.mixed_precision]
        if self.device.type == "cpu" and self.dtype == torch.float16:
            raise SdloraError("train.mixed_precision: fp16 needs a GPU; use bf16 or no on the CPU")
        if config.train.base_precision == "fp8":
            check_fp8_supported(self.device, config.train.mixed_precision)
        self.state = LoopState()

    # ------------------------------------------------------------------------------------------ set-up
    def setup(self) -> None:
        from accelerate import Accelerator

        from accelerate.state import AcceleratorState

        cfg = self.config
        # accelerate keeps one global state; a second Trainer in this process (a script, the tests) may want
        # another precision. The process-level (distributed) part is kept.
        AcceleratorState._reset_state(reset_partial_state=False)
        self.accelerator = Accelerator(mixed_precision=cfg.train.mixed_precision,
                                       cpu=self.device.type == "cpu")
        self.device = self.accelerator.device
        with collect_warnings(self.events):
            self.dataset = build_dataset(cfg.data)
            self.dataset, self.validation_set = recipe.split_validation(self.dataset, cfg)
        # Frozen parts live in the training precision: no fp32 copies of the base weights. The same set-up as
        # --dry-run's (model_setup.py): loading, the config's checks against the model, the LoRA.
        with collect_warnings(self.events):
            model = setup_model(cfg, dtype=self.dtype)
        self.components, self.target_modules, self.text_encoders = (model.components, model.target_modules,
                                                                    model.text_encoders)
        c = self.components
        if cfg.train.zero_terminal_snr:
            recipe.apply_zero_terminal_snr(c)
        for module in (c.vae, c.text_encoder, c.text_encoder_2):
            if module is not None:  # text_encoder_2: SDXL only
                module.to(self.device)
        if self.dtype == torch.float16 and getattr(c.vae.config, "force_upcast", False):
            # SDXL's VAE overflows in fp16 (its config says force_upcast): it encodes in fp32, as diffusers does.
            c.vae.to(torch.float32)
        largest = max(cfg.data.bucket_max, cfg.data.resolution) if cfg.data.buckets else cfg.data.resolution
        set_vae_memory(c.vae, cfg.data.vae_tiling, largest)
        if cfg.train.gradient_checkpointing:
            c.unet.enable_gradient_checkpointing()
        c.unet.to(self.device).train()
        self.dylora = dylora_ranks(c.unet, cfg.network)  # network.type dylora: a random rank per step
        if cfg.train.base_precision == "fp8":  # the LoRA is in (setup_model): peft's frozen base layers go float8
            convert_frozen_linears(c.unet)
        self.memory_watch = memory_watch(self.device, cfg.train)
        # network.text_encoder: each text encoder with a LoRA trains in train mode (LoRA dropout as in the UNet).
        for module in self.text_encoders.values():
            module.to(self.device).train()
        # One list of all trainable parameters, UNet first: what clipping and GradientSync's flat buffer cover.
        groups = recipe.unet_param_groups(c.unet, cfg)  # one group, or one per stage with network.block_lr
        if self.text_encoders:
            groups.append({"params": [p for m in self.text_encoders.values() for p in lora_parameters(m)],
                           "lr": cfg.train.effective_text_encoder_lr})
        self.params = [p for group in groups for p in group["params"]]
        self.optimizer = make_optimizer(groups, cfg.train, self.device)
        self.lr_scheduler = make_lr_scheduler(self.optimizer, cfg.train)
        # CUDA graphs: the compiled UNet's own (cudagraph trees, `cuda_graphs`), or the whole step recorded by
        # the trainer (`whole_step`, step_graph.py), which takes over when the run allows it.
        self.cuda_graphs = use_cuda_graphs(cfg.train, self.device)
        self.whole_step = self.cuda_graphs and use_whole_step_graph(cfg)
        blocker = step_graph_blocker(cfg, is_distributed()) if self.whole_step else None
        if blocker:
            self.whole_step = False
            if cfg.train.cuda_graphs == "step":  # asked for: say why not (auto falls back quietly)
                self.events.emit("warning", message=f"train.cuda_graphs: step is not possible for this run "
                                                    f"({blocker}); the UNet's own CUDA graphs are used (on)")
        if self.whole_step:
            self.cuda_graphs = False  # the UNet compiles without graphs of its own: the step's graph holds it
            tensor_lr(self.optimizer, self.device)  # after the schedule is made: its base lrs stay numbers
            for group in self.optimizer.param_groups:
                group["capturable"] = self.device.type == "cuda"  # the recorded update keeps its step count
        self.ema = recipe.make_ema(self.params, cfg.train)
        if use_channels_last(cfg.train, self.device):
            c.unet.to(memory_format=torch.channels_last)
        # Only the optimizer goes through accelerate (fp16 loss scaling); the UNet is not wrapped in DDP: its
        # LoRA gradients are averaged with one all-reduce per step (distributed.py), which CUDA graphs allow.
        self.unet = c.unet
        self.optimizer = self.accelerator.prepare(self.optimizer)
        # The training step runs a compiled view of the UNet (same parameters); sampling and saving use the
        # plain module, so other shapes (CFG batches at sampling) never trigger recompilation of the step.
        if use_compile(cfg.train, self.device):
            self.step_unet = compile_step_model(self.unet, self.cuda_graphs, scope=cfg.train.compile,
                                                compile_workers=cfg.train.compile_workers)
        else:
            self.step_unet = self.unet
        self.grad_sync = (GradientSync(self.params) if needs_gradient_buffer(self.cuda_graphs, cfg.train)
                          else None)
        self.is_main = self.accelerator.is_main_process
        self.rank = self.accelerator.process_index
        self.encoder = BatchEncoder(c, self.device, self.dtype)
        # A training text encoder changes every step: its output is computed with gradients, never cached.
        self.encoder.trains_text = bool(self.text_encoders)
        with collect_warnings(self.events), self.accelerator.main_process_first():
            # Checks caption lengths; with data.cache on, encodes what the cache lacks, so batches then carry
            # latents and text embeddings and the VAE/text encoder never run in the loop. (Rank 0 fills a disk
            # cache first; the other ranks then find it full.)
            self.cache_stats = self.dataset.attach_encoder(self.encoder)
        self.objective = make_objective(cfg, c, self.encoder)
        self.validator = recipe.make_validator(self.validation_set, cfg, self.encoder, c, self.device)
        recipe.add_logger(self.events, cfg, self.paths.root, self.is_main)
        self.trainable, _ = count_parameters(c.unet, *self.text_encoders.values())
        self.inner_optimizer = getattr(self.optimizer, "optimizer", self.optimizer)
        # A fused AdamW skips its update when `found_inf` is set: a non-finite step is dropped on the device,
        # with no host sync. (fp16's GradScaler does the same by itself; other optimizers need a host check.)
        self.skip_on_device = self.accelerator.scaler is None and getattr(self.inner_optimizer,
                                                                          "_step_supports_amp_scaling", False)

    def graphs_note(self) -> str:
        """How the step will run, for the start message (what `cuda_graphs: auto` chose)."""
        if self.whole_step:
            return "; each step replayed as one CUDA graph (train.cuda_graphs: step)"
        if self.cuda_graphs:
            return "; the UNet replayed as CUDA graphs (train.cuda_graphs: on)"
        return ""

    def graph_recorder(self, generator: torch.Generator) -> CudaGraphRecorder:
        """What records and replays the whole step (train.cuda_graphs: step)."""
        return CudaGraphRecorder(self.device, [generator])

    def metadata(self, steps_done: int) -> dict[str, str]:
        return adapter_metadata(self.config, family=self.components.family,
                                prediction_type=self.components.prediction_type,
                                num_images=len(self.dataset), steps_done=steps_done,
                                started_at=self.state.started_at)

    # ------------------------------------------------------------------------------------------ saving
    def save_adapter(self, path: Path, steps_done: int) -> Path:
        from sdlora.lora.io import save_adapter

        if not self.is_main:  # rank 0 owns the run folder; every rank holds the same LoRA weights
            return path

        with evaluation_weights(self.optimizer, self.params):  # a schedule-free optimizer's x, not its y
            adapter = extract_adapter(self.accelerator.unwrap_model(self.unet), self.metadata(steps_done),
                                      self.text_encoders)
        with reporting_disk_full(path.parent, 2 * adapter_bytes(adapter), f"the adapter {path.name}",
                                 self.resume_hint):
            save_adapter(adapter, path, fmt=self.config.save.format, dtype=self.config.save.dtype)
            if self.ema is not None:  # NAME-ema.safetensors beside NAME.safetensors
                with self.ema.weights_applied():
                    adapter = extract_adapter(self.accelerator.unwrap_model(self.unet), self.metadata(steps_done),
                                              self.text_encoders)
                save_adapter(adapter, recipe.ema_path(path), fmt=self.config.save.format,
                             dtype=self.config.save.dtype)
        return path

    def save_checkpoint(self, step: int, bad_steps: int) -> Path | None:
        if not self.is_main:
            return None
        adapter = extract_adapter(self.accelerator.unwrap_model(self.unet), text_encoders=self.text_encoders)
        name = f"{self.config.name}.safetensors"
        # lora_state + the adapter file + AdamW's two moments: about four copies of the LoRA weights.
        with reporting_disk_full(self.paths.checkpoints, 4 * adapter_bytes(adapter), f"checkpoint step {step}",
                                 self.resume_hint):
            path = save_checkpoint(self.paths.checkpoints, step, adapter, self.optimizer, self.lr_scheduler,
                                   bad_steps, extra_files={name: lambda p: self.save_adapter(p, step),
                                                           **recipe.checkpoint_files(self.ema, self.validator, step)},
                                   keep=self.config.save.keep_checkpoints,
                                   keep_also=recipe.best_checkpoint(self.paths.checkpoints))
        best = recipe.mark_best(self.paths.checkpoints, path, self.validator, step)
        self.events.emit("checkpoint", step=step, total_steps=self.train_cfg.steps, path=path, **best)
        return path

    def sample(self, step: int) -> None:
        if not self.config.sample.prompts or not self.is_main:
            return
        folder = self.paths.samples / f"step-{step:06d}"
        with self.evaluation():  # schedule-free x, and the EMA when train.ema is on
            images = sample_images(self.components, self.accelerator.unwrap_model(self.unet), self.config.sample,
                                   self.config.data.resolution, folder, self.device, self.dtype,
                                   guidance_rescale=recipe.guidance_rescale(self.config))
        self.events.emit("sample", step=step, path=folder, images=[str(p) for p in images])

    def evaluation(self):
        """The weights samples and the validation loss are taken from (training weights restored after)."""
        return recipe.evaluation(self.optimizer, self.params, self.ema)

    def validate(self, step: int) -> None:
        if self.validator is None:
            return
        unet = self.accelerator.unwrap_model(self.unet)
        with self.evaluation(), recipe.eval_mode(unet, *self.text_encoders.values()):
            loss = self.validator(unet, self.accelerator.autocast)
        best = self.validator.record(step, loss)
        self.events.emit("validation", step=step, total_steps=self.train_cfg.steps, loss=round(loss, 6), best=best)

    def report(self, pending: list[tuple[int, torch.Tensor]], samples_per_step: int) -> str:
        """Read back the losses of the steps since the last report (one host sync) and emit their events."""
        values = torch.stack([loss for _, loss in pending]).float().cpu().tolist()  # already averaged
        now = time.perf_counter()
        state = self.state
        rate = round(samples_per_step * len(pending) / max(now - state.window_start, 1e-9), 3)
        state.window_start = now
        memory_message = self.memory_watch.check(pending[-1][0]) if self.memory_watch is not None else None
        if memory_message:
            self.events.emit("warning", step=pending[-1][0], message=memory_message)
        lr = self.lr_scheduler.get_last_lr()[0]
        if isinstance(lr, torch.Tensor):  # train.cuda_graphs: step keeps it on the device, in float32
            lr = float(f"{lr.item():.7g}")
        for (step, _), value in zip(pending, values):
            if not math.isfinite(value):
                state.bad_steps += 1
                self.events.emit("warning", step=step, message=f"non-finite loss ({value}) at step {step}; step "
                                 f"skipped ({state.bad_steps} in a row)")
                if state.bad_steps >= self.train_cfg.max_bad_steps:
                    return "error"
                continue
            state.bad_steps = 0
            state.losses.append(value)
            self.events.emit("step", step=step, total_steps=self.train_cfg.steps, loss=round(value, 6), lr=lr,
                             samples_per_s=rate)
        return "ok"

    # ------------------------------------------------------------------------------------------ one step
    def micro_batch_loss(self, batch: dict, generator: torch.Generator, accum: int) -> torch.Tensor:
        """Forward and backward of one micro-batch; its loss, detached, already divided by `accum`."""
        mark_step_begin(self.cuda_graphs)
        # A training text encoder runs under the same autocast as the UNet; a frozen one as before.
        with self.accelerator.autocast() if self.text_encoders else contextlib.nullcontext():
            latents, cond = self.encoder(batch, generator)
        with self.accelerator.autocast():
            per_sample = self.objective(self.step_unet, latents, cond, generator,
                                        **({"mask": batch["mask"]} if "mask" in batch else {}))
        loss = (per_sample * batch["loss_weight"].to(self.device, non_blocking=True)).mean() / accum
        self.accelerator.backward(loss)
        return loss.detach()

    def apply_gradients(self, step_loss: torch.Tensor) -> None:
        """Clip and update, unless the step's loss is not finite (then the step is skipped)."""
        if self.skip_on_device:
            self.inner_optimizer.found_inf = (~torch.isfinite(step_loss)).float()
            finite = True
        else:
            finite = self.accelerator.scaler is not None or math.isfinite(step_loss.item())
        if finite:
            if self.train_cfg.max_grad_norm:
                self.accelerator.clip_grad_norm_(self.params, self.train_cfg.max_grad_norm)
            self.optimizer.step()
            if self.ema is not None:
                self.ema.update()

    def optimizer_step(self, batches: Iterator[dict], generator: torch.Generator) -> torch.Tensor:
        """One optimizer step over `gradient_accumulation` micro-batches; the step's mean loss."""
        accum = self.train_cfg.gradient_accumulation
        # With CUDA graphs the gradient buffers are the trainer's own and are zeroed in place (compiled.py).
        self.optimizer.zero_grad(set_to_none=self.grad_sync is None)
        step_loss = torch.zeros((), device=self.device)
        for _ in range(accum):
            step_loss += self.micro_batch_loss(next(batches), generator, accum)
        if self.grad_sync is not None:
            self.grad_sync.all_reduce()
        # Every process must agree on skipping a non-finite step: the averaged gradients are shared.
        step_loss = mean_across_processes(step_loss)
        self.apply_gradients(step_loss)
        return step_loss

    def recorded_step(self, step_graphs: StepGraphs, batch: dict, generator: torch.Generator,
                      step: int) -> torch.Tensor:
        """One optimizer step (one micro-batch, one process) through the whole-step CUDA graph of its shape."""
        def body(inputs: dict) -> torch.Tensor:
            self.optimizer.zero_grad(set_to_none=True)
            step_loss = self.micro_batch_loss(inputs, generator, 1)
            self.apply_gradients(step_loss)
            return step_loss

        loss, how = step_graphs.run(with_time_ids(batch) if self.encoder.is_sdxl else batch, body)
        if how == "failed":  # this step ran eagerly; the next ones go as `cuda_graphs: on` would have
            self.events.emit("warning", step=step, message=f"train.cuda_graphs: the step could not be recorded as "
                             f"one CUDA graph ({step_graphs.failed}); the run goes on with the UNet's own CUDA "
                             f"graphs (set train.cuda_graphs on to skip the attempt)")
            self.whole_step = False
            if self.step_unet is not self.unet:  # compiled: again, with cudagraph trees
                self.cuda_graphs = True
                self.step_unet = compile_step_model(self.unet, True, scope=self.config.train.compile)
        return loss

    # ------------------------------------------------------------------------------------------ the loop
    def run(self, resume: bool = False, changes: dict | None = None) -> TrainResult:
        """Train to train.steps; `resume` continues from the newest complete checkpoint (from step 0 when there
        is none); `changes` ({key: [old, new]}) are the settings changed on resume, recorded in the start event."""
        cfg, train = self.config, self.config.train
        state = self.state = LoopState(started_at=time.time())
        start_step, bad_steps = 0, 0
        checkpoints = list_checkpoints(self.paths.checkpoints) if resume else []
        if checkpoints:
            latest = checkpoints[-1]
            load_into(self.accelerator.unwrap_model(self.unet),
                      load_checkpoint(latest, self.optimizer, self.lr_scheduler), self.text_encoders)
            if self.whole_step:
                tensor_lr(self.optimizer, self.device)  # the loaded groups carry the lr of the run that saved
            start_step, bad_steps = latest.step, latest.bad_steps
            recipe.resume(latest.path, self.ema, self.validator, self.events)
            if start_step >= train.steps:
                raise SdloraError(f"{self.paths.root}: already trained {start_step} of {train.steps} steps; "
                                  f"continue with --set train.steps=N (N > {start_step})")
        accum = train.gradient_accumulation
        with collect_warnings(self.events):
            plan = MicroBatchPlan(self.dataset, train.batch_size, train.seed, start=start_step * accum,
                                  num_processes=self.accelerator.num_processes,
                                  process_index=self.accelerator.process_index)
        # Pinned batches copy to the GPU asynchronously: a pageable copy would make the host wait for the GPU
        # to drain every step, so the next step could not be queued while this one runs.
        loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=plan, collate_fn=collate,
                                             num_workers=cfg.data.num_workers,
                                             pin_memory=self.device.type == "cuda",
                                             persistent_workers=cfg.data.num_workers > 0)
        batches = iter(loader)
        self.events.emit("start", step=start_step, total_steps=train.steps, path=self.paths.root,
                         message=f"{len(self.dataset.records)} images{subset_note(self.dataset)}, "
                                 f"{self.trainable:,} trainable parameters "
                                 f"in {len(self.target_modules)} modules, on {self.device.type}"
                                 + (f" x {self.accelerator.num_processes} processes"
                                    if self.accelerator.num_processes > 1 else "")
                                 + (f"; {self.cache_stats.line()}" if self.cache_stats else "")
                                 + self.graphs_note(),
                         resumed=resume, changes=changes or None)
        if start_step == 0 and cfg.sample.every:
            self.sample(0)  # the "before" picture
        if start_step == 0 and train.validate_every:
            self.validate(0)
        generator = torch.Generator(self.device)
        samples_per_step = train.batch_size * accum * self.accelerator.num_processes
        report_every = train.report_every or (1 if self.device.type == "cpu" else 10)
        step_graphs = (StepGraphs(self.device, self.params, self.graph_recorder(generator)) if self.whole_step
                       else None)
        state.start_step, state.step, state.bad_steps = start_step, start_step, bad_steps
        pending: list[tuple[int, torch.Tensor]] = []
        state.window_start = time.perf_counter()
        step = start_step
        while step < train.steps:
            step += 1
            state.step = step
            torch.manual_seed(step_seed(train.seed, step, salt=1))  # LoRA dropout and anything global
            # Rank 0 draws what a single-process run draws; other ranks draw their own noise for their slice.
            generator.manual_seed(step_seed(train.seed, step, salt=0 if self.rank == 0 else 1000 + self.rank))
            if self.dylora:
                self.dylora.begin_step()  # this step trains the first b rows of every LoRA layer
            if self.whole_step:
                step_loss = self.recorded_step(step_graphs, next(batches), generator, step)
            else:
                step_loss = self.optimizer_step(batches, generator)
            self.lr_scheduler.step()
            if self.dylora:
                self.dylora.end_step()
            pending.append((step, step_loss))
            # Under data parallelism a stop request is agreed on at the next report window (any_process), so
            # every process stops after the same step.
            must_report = (step % report_every == 0 or step == train.steps
                           or (self.stop.requested and not is_distributed())
                           or (cfg.sample.every and step % cfg.sample.every == 0)
                           or (cfg.save.every and step % cfg.save.every == 0)
                           or (train.validate_every and step % train.validate_every == 0))
            if not must_report:
                continue
            if self.report(pending, samples_per_step) == "error":
                message = (f"{state.bad_steps} non-finite losses in a row; stopped. The last good checkpoint is "
                           f"kept; lower train.lr or use mixed_precision bf16/no")
                self.events.emit("error", step=step, message=message)
                return TrainResult("error", step - state.bad_steps, None, state.losses)
            pending = []
            if any_process(self.stop.requested, self.device):
                self.save_checkpoint(step, state.bad_steps)
                path = self.save_adapter(self.paths.adapter, step)
                self.events.emit("stopped", step=step, total_steps=train.steps, path=path,
                                 message=f"{self.stop.reason}; resume with: sdlora train --resume {self.paths.root}")
                return TrainResult("stopped", step, path, state.losses)
            # "sample now" / "save now" from the app (sdlora/train/requests.py): served after this step.
            asked = take_requests(self.paths.root) if self.is_main and step < train.steps else set()
            if "sample" in asked or (cfg.sample.every and step % cfg.sample.every == 0 and step < train.steps):
                self.sample(step)
            if "save" in asked and not (cfg.save.every and step % cfg.save.every == 0):
                self.save_checkpoint(step, state.bad_steps)
            if train.validate_every and step % train.validate_every == 0 and step < train.steps:
                self.validate(step)
            # No checkpoint in the middle of a streak of skipped steps: the last good one stays the newest.
            if cfg.save.every and step % cfg.save.every == 0 and step < train.steps and not state.bad_steps:
                self.save_checkpoint(step, state.bad_steps)
        bad_steps, losses = state.bad_steps, state.losses
        if not losses and step > start_step:  # every step of this session skipped: nothing was learned
            message = (f"all {step - start_step} steps had a non-finite loss and were skipped; no adapter written. "
                       f"Lower train.lr or check network.alpha")
            self.events.emit("error", step=step, message=message)
            return TrainResult("error", start_step, None, losses)
        self.sample(step)
        self.validate(step)
        self.save_checkpoint(step, bad_steps)
        kill_point("final-adapter")
        path = self.save_adapter(self.paths.adapter, step)
        self.events.emit("done", step=step, total_steps=train.steps, path=path,
                         loss=round(losses[-1], 6) if losses else None)
        return TrainResult("done", step, path, losses)
