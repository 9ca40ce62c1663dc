"""LCM-LoRA distillation: the target is the paper's, the teacher is the same UNet with the LoRA off (and on again
after), no second UNet is held, and a short distillation makes 4-step sampling follow the 50-step teacher."""

from __future__ import annotations

import copy
import gc
import math
import time
from types import SimpleNamespace

import pytest
import torch

from sdlora.config import config_from_dict
from sdlora.models import load_components
from sdlora.network import add_lora, lora_parameters
from sdlora.train.encode import BatchEncoder
from sdlora.train.lcm import LcmDraw, LcmObjective, boundary_scalings, pseudo_huber

CPU = torch.device("cpu")


def lcm_config(data_dir="", rank=4, **lcm):
    return config_from_dict({"model": "tiny", "mode": "lcm", "data": {"dir": str(data_dir), "resolution": 64},
                             "network": {"rank": rank, "alpha": rank}, "lcm": lcm})


def adapted_components(rank=4, perturb=True):
    """The tiny model with a LoRA whose B is non-zero, so student (LoRA on) and teacher (LoRA off) differ."""
    components = load_components("tiny")
    add_lora(components.unet, lcm_config(rank=rank).network, seed=0)
    if perturb:
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, p in components.unet.named_parameters():
                if "lora_B" in name:
                    p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return components


def adapters_enabled(unet) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in unet.modules() if isinstance(m, BaseTunerLayer)]
    return bool(layers) and not any(m.disable_adapters for m in layers)


@pytest.fixture(scope="module")
def adapted():
    components = adapted_components()
    return components, BatchEncoder(components, CPU, torch.float32)


def fixed_inputs(unet):
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(3, 4, 16, 16, generator=g)
    text = torch.randn(3, 77, unet.config.cross_attention_dim, generator=g)
    draw = LcmDraw(noise=torch.randn(3, 4, 16, 16, generator=g), t_start=torch.tensor([19, 519, 999]),
                   t_prev=torch.tensor([0, 499, 979]), guidance=torch.tensor([3.0, 7.5, 15.0]))
    return latents, text, draw


# ------------------------------------------------------------------------------------------ the formulas


def test_boundary_scalings_meet_the_boundary_condition():
    c_skip, c_out = boundary_scalings(torch.tensor([0, 1, 999]), timestep_scaling=10.0)
    assert c_skip[0] == 1.0 and c_out[0] == 0.0  # f(z, 0) = z
    assert c_skip[1] == pytest.approx(0.25 / (100 + 0.25)) and c_out[1] == pytest.approx(10 / math.sqrt(100.25))
    assert c_skip[2] < 1e-6 and c_out[2] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_target_and_loss_match_a_hand_computation(adapted, prediction_type):
    """Teacher CFG, one DDIM step to t_n, the student's c_skip/c_out target and the pseudo-Huber loss, by hand
    in float64 with CFG applied to x̂_0 and ε̂ separately (as the recipe writes it)."""
    from diffusers import DDPMScheduler

    components, encoder = adapted
    unet = components.unet.eval()
    scheduler = DDPMScheduler.from_config(components.noise_scheduler.config, prediction_type=prediction_type)
    config = lcm_config(huber_c=0.01)
    objective = LcmObjective(config, SimpleNamespace(noise_scheduler=scheduler), encoder)
    latents, text, draw = fixed_inputs(unet)

    cfg = scheduler.config  # SD's scaled-linear schedule, in float64
    betas = torch.linspace(cfg.beta_start**0.5, cfg.beta_end**0.5, cfg.num_train_timesteps, dtype=torch.float64) ** 2
    abar = torch.cumprod(1 - betas, 0)

    def ab(t):
        return abar[t].sqrt().view(-1, 1, 1, 1), (1 - abar[t]).sqrt().view(-1, 1, 1, 1)

    def run(z, t, emb):
        with torch.no_grad():
            return unet(z.float(), t, emb).sample.double()

    def x0_eps(out, z, t):
        a, s = ab(t)
        if prediction_type == "epsilon":
            return (z - s * out) / a, out
        return a * z - s * out, a * out + s * z

    def f(z, t):  # the student's consistency function
        c = 10.0 * t.double().view(-1, 1, 1, 1)
        return 0.25 / (c**2 + 0.25) * z + c / (c**2 + 0.25).sqrt() * x0_eps(run(z, t, text), z, t)[0]

    a, s = ab(draw.t_start)
    z = a * latents.double() + s * draw.noise.double()
    uncond = encoder.text_embeddings([""]).expand_as(text)
    unet.disable_adapters()
    x0_c, eps_c = x0_eps(run(z, draw.t_start, text), z, draw.t_start)
    x0_u, eps_u = x0_eps(run(z, draw.t_start, uncond), z, draw.t_start)
    unet.enable_adapters()
    w = draw.guidance.double().view(-1, 1, 1, 1)
    x0_hat, eps_hat = x0_u + w * (x0_c - x0_u), eps_u + w * (eps_c - eps_u)
    a_prev, s_prev = ab(draw.t_prev)
    z_prev = a_prev * x0_hat + s_prev * eps_hat
    target = f(z_prev, draw.t_prev)
    loss = ((f(z, draw.t_start) - target) ** 2 + 0.01**2).sqrt().sub(0.01).mean(dim=(1, 2, 3))

    got_z, got_target = objective.target(unet, latents, text, draw)
    objective.draw = lambda latents, generator: draw  # fix the draws of a whole step
    got_loss = objective(unet, latents, text, torch.Generator())
    scale = target.abs().max().item()
    torch.testing.assert_close(got_z.double(), z, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_target.double(), target, rtol=1e-4, atol=1e-5 * scale)
    torch.testing.assert_close(got_target[0].double(), z_prev[0], rtol=1e-4, atol=1e-5 * scale)  # t_n = 0: f = id
    torch.testing.assert_close(got_loss.double(), loss, rtol=1e-3, atol=1e-6)
    assert got_loss.shape == (3,)


def test_pseudo_huber_is_quadratic_near_zero_and_linear_far_away():
    zero = torch.zeros(1, 2, 2, 2)
    assert pseudo_huber(zero + 1e-4, zero, c=1.0).item() == pytest.approx(0.5e-8, rel=1e-3)
    assert pseudo_huber(zero + 100.0, zero, c=0.001).item() == pytest.approx(100.0 - 0.001, rel=1e-6)


# ------------------------------------------------------------------------------------------ the LoRA switch


def test_the_adapter_is_on_again_after_every_teacher_call_even_when_it_raises(adapted):
    components, encoder = adapted
    unet = components.unet.train()
    objective = LcmObjective(lcm_config(), components, encoder)
    latents, text, _ = fixed_inputs(unet)
    seen, fail = [], {"teacher": False}

    def hook(module, args):
        seen.append(adapters_enabled(module))
        if fail["teacher"] and not seen[-1]:
            raise RuntimeError("teacher failed")

    handle = unet.register_forward_pre_hook(hook)
    try:
        # Through a wrapper, as accelerate/DDP hand it over: the teacher must switch the inner model's LoRA.
        loss = objective(torch.nn.DataParallel(unet), latents, text, torch.Generator().manual_seed(0))
        assert seen == [False, True, True]  # teacher (LoRA off), target and student (LoRA on)
        assert adapters_enabled(unet) and all(p.requires_grad for p in lora_parameters(unet))
        loss.mean().backward()
        assert all(p.grad is not None for p in lora_parameters(unet))
        fail["teacher"] = True
        with pytest.raises(RuntimeError, match="teacher failed"):
            objective(unet, latents, text, torch.Generator().manual_seed(0))
        assert adapters_enabled(unet) and all(p.requires_grad for p in lora_parameters(unet))
    finally:
        handle.remove()
        unet.zero_grad(set_to_none=True)


def _unets_and_parameter_bytes():
    from diffusers import UNet2DConditionModel

    gc.collect()
    objects = gc.get_objects()
    # type() rather than isinstance(): some torch objects warn when asked isinstance.
    unets = sum(type(o) is UNet2DConditionModel for o in objects)
    storages = {}
    for o in objects:
        if type(o) is torch.nn.Parameter:
            storage = o.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return unets, sum(storages.values())


def test_no_second_unet_is_held_in_memory():
    components = adapted_components()
    encoder = BatchEncoder(components, CPU, torch.float32)
    before = _unets_and_parameter_bytes()
    objective = LcmObjective(lcm_config(), components, encoder)
    latents, text, _ = fixed_inputs(components.unet)
    objective(components.unet, latents, text, torch.Generator().manual_seed(0)).mean().backward()
    assert _unets_and_parameter_bytes() == before
    # The count does see a copy, so the equality above means something.
    twin = copy.deepcopy(components.unet)
    unets, size = _unets_and_parameter_bytes()
    assert unets == before[0] + 1 and size > before[1]
    del twin


# ------------------------------------------------------------------------------------------ it distills


def _latents(components, unet, scheduler, steps, guidance, prompts, lora):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=components.vae, text_encoder=components.text_encoder,
                                   tokenizer=components.tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    (unet.enable_adapters if lora else unet.disable_adapters)()
    try:
        with torch.no_grad():
            return torch.cat([pipe(p, height=64, width=64, num_inference_steps=steps, guidance_scale=guidance,
                                   generator=torch.Generator().manual_seed(i), output_type="latent").images
                              for i, p in enumerate(prompts)]).double()
    finally:
        unet.enable_adapters()


def test_short_distillation_makes_4_step_lcm_sampling_follow_the_50_step_teacher(shapes_dir):
    from diffusers import DDIMScheduler, LCMScheduler

    from sdlora.data import SampleKey, build_dataset, collate

    config = lcm_config(shapes_dir, rank=16, w_min=3.0, w_max=9.0)
    components = adapted_components(rank=16, perturb=False)
    encoder = BatchEncoder(components, CPU, torch.float32)
    objective = LcmObjective(config, components, encoder)
    dataset = build_dataset(config.data)
    unet = components.unet.train()
    optimizer = torch.optim.AdamW(lora_parameters(unet), lr=1e-3)
    batch = collate([dataset[SampleKey(i, False, 0)] for i in range(4)])
    g = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(STEPS):
        latents, text = encoder(batch, g)
        loss = objective(unet, latents, text, g).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    unet.eval()
    prompts = ["a red circle on a white background", "a blue square on a white background"]
    ddim = DDIMScheduler.from_config(components.noise_scheduler.config)
    lcm = LCMScheduler.from_config(components.noise_scheduler.config)
    teacher = _latents(components, unet, ddim, 50, TEACHER_GUIDANCE, prompts, lora=False)
    lcm_4 = _latents(components, unet, lcm, 4, 1.0, prompts, lora=True)
    ddim_4 = _latents(components, unet, ddim, 4, TEACHER_GUIDANCE, prompts, lora=False)
    lcm_mse, ddim_mse = ((lcm_4 - teacher) ** 2).mean().item(), ((ddim_4 - teacher) ** 2).mean().item()
    print(f"{STEPS} steps in {time.perf_counter() - start:.1f}s: latent MSE to the teacher, "
          f"LCM-LoRA 4 steps {lcm_mse:.4f}, DDIM 4 steps {ddim_mse:.4f}")
    assert lcm_mse < ddim_mse - MARGIN * ddim_mse, (lcm_mse, ddim_mse)


STEPS = 30
TEACHER_GUIDANCE = 6.0
# Measured with the pretrained tiny model (2-core CPU, torch 2.13): latent MSE to the teacher LCM-LoRA 4 steps
# 0.198, DDIM 4 steps 0.596, i.e. 67% lower; the assertion asks for 25% lower.
MARGIN = 0.25


# ------------------------------------------------------------------------------------------ it is used as meant


def test_an_lcm_run_marks_its_adapter_and_generate_samples_it_in_4_lcm_steps_by_itself(shapes_dir, tmp_path):
    """The adapter file of a `mode: lcm` run says how to sample it; `sdlora generate` follows that with no
    --scheduler, --steps or --guidance (the same image as when they are given by hand), also blended with a
    standard adapter."""
    import numpy as np
    from PIL import Image
    from safetensors import safe_open

    from sdlora.adapters import AdapterBlender
    from sdlora.cli import main
    from sdlora.events import EventBus
    from sdlora.models import load_pipeline
    from sdlora.train.rundir import new_run
    from sdlora.train.trainer import Trainer

    runs = {}
    for mode in ("lcm", "standard"):
        config = config_from_dict({"name": mode, "model": "tiny", "mode": mode,
                                   "data": {"dir": str(shapes_dir), "resolution": 64},
                                   "network": {"rank": 4}, "train": {"steps": 2, "batch_size": 2, "lr": 1e-2},
                                   "lcm": {"num_ddim_timesteps": 25}, "save": {"output_dir": str(tmp_path)}})
        trainer = Trainer(config, new_run(config), EventBus())
        trainer.setup()
        runs[mode] = trainer.run().adapter_path
    with safe_open(str(runs["lcm"]), "pt") as fh:
        meta = fh.metadata()
    assert meta["sdlora_mode"] == "lcm" and meta["sdlora_lcm_scheduler"] == "lcm"
    assert meta["sdlora_lcm_steps"] == "4" and 1.0 <= float(meta["sdlora_lcm_guidance"]) <= 2.0
    assert meta["sdlora_lcm_original_steps"] == "25" and meta["sdlora_lcm_timestep_scaling"] == "10.0"

    out = tmp_path / "auto.png"
    assert main(["generate", "--model", "tiny", "--lora", str(runs["lcm"]), "--lora", f"{runs['standard']}:0.8",
                 "--prompt", "a red circle", "--seed", "5", "--out", str(out)]) == 0
    blender = AdapterBlender(load_pipeline("tiny"))
    blender.set_weights({runs["lcm"]: 1.0, runs["standard"]: 0.8})
    by_hand = blender.generate("a red circle", seed=5, scheduler="lcm", steps=4, guidance=1.5)
    scheduler = blender.pipe.scheduler
    assert type(scheduler).__name__ == "LCMScheduler" and scheduler.config.original_inference_steps == 25
    assert [int(t) for t in scheduler.timesteps] == [999, 759, 519, 279]  # 4 of the 25-step solver schedule
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(by_hand))
