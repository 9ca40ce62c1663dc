"""mode: lcm. LCM-LoRA distillation: a LoRA that lets its base model sample in about 4 steps.

The student f_θ (base + LoRA) learns to map any point of the teacher's guided PF-ODE trajectory to the
trajectory's end; the teacher is the same UNet with the LoRA switched off, so no second copy is held.

References (section numbers of the arXiv versions):
  [LCM]   Luo et al. 2023, Latent Consistency Models, arXiv 2310.04378: sec. 4.2 (consistency function with
          ε-prediction), sec. 4.3 (skipping-step solver, classifier-free-guided "augmented" PF-ODE), Algorithm 1.
  [LoRA]  Luo et al. 2023, LCM-LoRA, arXiv 2311.05556, sec. 2: the same distillation with only LoRA trained.
  [CM]    Song et al. 2023, Consistency Models, arXiv 2303.01469, sec. 3: boundary condition f(x, ε) = x
          enforced by f = c_skip(t)·x + c_out(t)·F with c_skip(ε) = 1, c_out(ε) = 0.
  [iCT]   Song & Dhariwal 2023, Improved Techniques for Training Consistency Models, arXiv 2310.14189,
          sec. 3.3: pseudo-Huber metric d(x, y) = sqrt(|x - y|² + c²) - c.
  [DDIM]  Song et al. 2021, Denoising Diffusion Implicit Models, arXiv 2010.02502, eq. 12 with σ = 0.
  The defaults follow diffusers' examples/consistency_distillation/train_lcm_distill_lora_sd_wds.py.

One step (Algorithm 1 of [LCM], with the LoRA-LCM choices of [LoRA] and the diffusers recipe):
  n ~ U{0, ..., N-1}          t_{n+k} = (n+1)·k - 1,  t_n = max(t_{n+k} - k, 0),  k = T // N   (skipping step)
  z_{t_{n+k}} = α·x_0 + σ·ε    with α = sqrt(ᾱ_t), σ = sqrt(1 - ᾱ_t)                    (forward process)
  w ~ U[w_min, w_max]          ε̂ = ε(z, ∅) + w·(ε(z, c) - ε(z, ∅))    teacher = LoRA off, no gradient
  ẑ_{t_n} = α_n·x̂_0 + σ_n·ε̂                                           (one DDIM step, the ODE solver Ψ)
  target = f_θ⁻(ẑ_{t_n}, t_n)  with θ⁻ = θ: the student itself without gradient (no EMA copy for LoRA)
  loss   = mean over pixels of sqrt((f_θ(z_{t_{n+k}}, t_{n+k}) - target)² + c²) - c
No guidance-scale embedding: SD's UNet has no time_cond_proj, and LCM-LoRA is trained without one. For SDXL the
unconditional branch keeps the sample's size/crop ids and takes the empty caption's pooled embedding too.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from sdlora.errors import SdloraError
from sdlora.train.encode import Conditioning, as_conditioning

SIGMA_DATA = 0.5  # [CM] appendix C; LCMScheduler uses the same constant
PREDICTION_TYPES = ("epsilon", "v_prediction")


@dataclass
class LcmDraw:
    """The random choices of one step, per sample: kept together so a test can fix them."""

    noise: torch.Tensor  # ε, shape of the latents
    t_start: torch.Tensor  # t_{n+k}, long [batch]
    t_prev: torch.Tensor  # t_n, long [batch]
    guidance: torch.Tensor  # w, float [batch]


# ----------------------------------------------------------------------------------------- the formulas


def boundary_scalings(t: torch.Tensor, timestep_scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
    """c_skip(t), c_out(t) on discrete timesteps ([CM] sec. 3; diffusers' LCMScheduler, scaled time s·t).

    c_skip = σ_data² / ((s·t)² + σ_data²),  c_out = s·t / sqrt((s·t)² + σ_data²):  at t = 0, c_skip = 1 and
    c_out = 0, so f(z, 0) = z (the boundary condition); the scaling s makes c_skip ≈ 0 already at t ≈ 1.
    """
    scaled = timestep_scaling * t.double()
    c_skip = SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2)
    c_out = scaled / (scaled**2 + SIGMA_DATA**2).sqrt()
    return c_skip.float(), c_out.float()


def x0_and_eps(model_output: torch.Tensor, z: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor,
               prediction_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(x̂_0, ε̂) from a UNet output at z = α·x_0 + σ·ε.

    ε-prediction: x̂_0 = (z - σ·ε̂) / α ([LCM] sec. 4.2).  v-prediction (v = α·ε - σ·x_0, Salimans & Ho 2022,
    sec. 4): x̂_0 = α·z - σ·v̂,  ε̂ = α·v̂ + σ·z  (using α² + σ² = 1).
    """
    if prediction_type == "epsilon":
        return (z - sigma * model_output) / alpha, model_output
    if prediction_type == "v_prediction":
        return alpha * z - sigma * model_output, alpha * model_output + sigma * z
    raise ValueError(f"prediction_type {prediction_type!r} is not one of {PREDICTION_TYPES}")


def ddim_step(x0: torch.Tensor, eps: torch.Tensor, alpha_prev: torch.Tensor, sigma_prev: torch.Tensor) -> torch.Tensor:
    """Deterministic DDIM from t_{n+k} to t_n ([DDIM] eq. 12, σ = 0): ẑ_{t_n} = α_n·x̂_0 + σ_n·ε̂."""
    return alpha_prev * x0 + sigma_prev * eps


def pseudo_huber(prediction: torch.Tensor, target: torch.Tensor, c: float) -> torch.Tensor:
    """Per-sample pseudo-Huber loss ([iCT] sec. 3.3), taken elementwise as in the recipe and averaged per sample.

    sqrt(d² + c²) - c is computed as d² / (sqrt(d² + c²) + c), the same number without fp32 cancellation when
    |d| << c.
    """
    diff = prediction.float() - target.float()
    root = (diff**2 + c**2).sqrt()
    return (diff**2 / (root + c)).mean(dim=tuple(range(1, diff.ndim)))


def per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[batch] -> [batch, 1, 1, 1], to scale each sample of `like`."""
    return values.reshape(-1, *([1] * (like.ndim - 1)))


# ----------------------------------------------------------------------------------------- the LoRA switch


def unwrap(unet):
    """The plain model inside accelerate/DDP/torch.compile wrappers: it owns disable_adapters(), and its no-grad
    calls (teacher, target) neither touch DDP's gradient bookkeeping nor make the compiled step recompile."""
    from accelerate.utils import extract_model_from_parallel

    unet = getattr(unet, "plain_module", unet)  # compile: blocks (compiled.CompiledBlocks)
    return extract_model_from_parallel(unet, keep_torch_compile=False)


@contextlib.contextmanager
def adapter_disabled(unet):
    """Run the base model (the teacher): the LoRA is off inside, and on again afterwards even if the body raises."""
    model = unwrap(unet)
    if not getattr(model, "_hf_peft_config_loaded", False):
        raise SdloraError("mode lcm: the UNet has no LoRA adapter; LCM distillation trains a LoRA on the base model")
    try:
        model.disable_adapters()
        yield model
    finally:
        model.enable_adapters()


# ----------------------------------------------------------------------------------------- the objective


class LcmObjective:
    """mode: lcm. Called as objective(unet, latents, cond, generator) -> per-sample loss [batch]."""

    def __init__(self, config, components, encoder):
        lcm = config.lcm
        self.lcm = lcm
        scheduler = components.noise_scheduler
        self.prediction_type = scheduler.config.prediction_type
        if self.prediction_type not in PREDICTION_TYPES:
            raise SdloraError(f"mode lcm: the model's scheduler has prediction_type {self.prediction_type!r}; LCM "
                              f"distillation supports {' and '.join(PREDICTION_TYPES)} models")
        num_train = scheduler.config.num_train_timesteps
        if lcm.num_ddim_timesteps > num_train:
            raise SdloraError(f"lcm.num_ddim_timesteps: {lcm.num_ddim_timesteps} exceeds the model's "
                              f"{num_train} training timesteps")
        self.k = num_train // lcm.num_ddim_timesteps  # skipping interval ([LCM] sec. 4.3)
        # The skipping schedule t_{n+k} = k-1, 2k-1, ..., N·k-1 (the recipe's DDIM solver timesteps).
        self.solver_timesteps = torch.arange(1, lcm.num_ddim_timesteps + 1) * self.k - 1
        alphas_cumprod = scheduler.alphas_cumprod.double()
        self.alpha = alphas_cumprod.sqrt().float()  # α_t = sqrt(ᾱ_t)
        self.sigma = (1.0 - alphas_cumprod).sqrt().float()  # σ_t = sqrt(1 - ᾱ_t)
        # ∅ of classifier-free guidance: the empty caption's embedding, computed once.
        self.uncond_features = encoder.text_features([""])
        self.uncond_embeddings = self.uncond_features["text_embeddings"]

    # -------------------------------------------------------------------------------------- draws
    def draw(self, latents: torch.Tensor, generator: torch.Generator) -> LcmDraw:
        device, batch = latents.device, latents.shape[0]
        noise = torch.randn(latents.shape, generator=generator, device=device, dtype=torch.float32)
        n = torch.randint(0, self.lcm.num_ddim_timesteps, (batch,), generator=generator, device=device)
        t_start = self.solver_timesteps.to(device)[n]
        t_prev = torch.clamp(t_start - self.k, min=0)
        u = torch.rand((batch,), generator=generator, device=device)
        guidance = self.lcm.w_min + (self.lcm.w_max - self.lcm.w_min) * u
        return LcmDraw(noise=noise, t_start=t_start, t_prev=t_prev, guidance=guidance)

    def _at(self, table: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return per_sample(table.to(t.device)[t], like)

    # -------------------------------------------------------------------------------------- the pieces
    def consistency_function(self, unet, z: torch.Tensor, t: torch.Tensor, cond: Conditioning | torch.Tensor,
                             input_dtype: torch.dtype) -> torch.Tensor:
        """f_θ(z, t) = c_skip(t)·z + c_out(t)·x̂_0(z, t)  ([LCM] sec. 4.2; [CM] sec. 3), in fp32."""
        cond = as_conditioning(cond)
        output = unet(z.to(input_dtype), t, cond.text_embeddings, **cond.unet_kwargs()).sample.float()
        x0, _ = x0_and_eps(output, z, self._at(self.alpha, t, z), self._at(self.sigma, t, z), self.prediction_type)
        c_skip, c_out = boundary_scalings(t, self.lcm.timestep_scaling)
        return per_sample(c_skip, z) * z + per_sample(c_out, z) * x0

    @torch.no_grad()
    def teacher_solver_step(self, unet, z: torch.Tensor, draw: LcmDraw, cond: Conditioning | torch.Tensor,
                            input_dtype: torch.dtype) -> torch.Tensor:
        """ẑ_{t_n}: one DDIM step of the guided PF-ODE from z_{t_{n+k}} by the base model (LoRA off).

        Guidance in the pipeline's convention, ε̂ = ε(∅) + w·(ε(c) - ε(∅)) = (1 + ω)·ε(c) - ω·ε(∅) with ω = w - 1
        ([LCM] sec. 4.3's ω); lcm.w_min/w_max = 3/15 is [LCM]'s ω ∈ [2, 14]. CFG on the raw output equals CFG on
        x̂_0 and ε̂ separately (both are affine in the output with the same z), so v-models need nothing more.
        """
        cond = as_conditioning(cond)
        like = cond.text_embeddings
        pooled = self.uncond_features.get("pooled_text_embeddings")
        uncond = Conditioning(self.uncond_embeddings, pooled).to(like.device, like.dtype).repeat(z.shape[0])
        uncond.time_ids = cond.time_ids
        both = Conditioning.cat([uncond, cond])
        with adapter_disabled(unet) as base:
            both = base(torch.cat([z, z]).to(input_dtype), torch.cat([draw.t_start, draw.t_start]),
                        both.text_embeddings, **both.unet_kwargs()).sample.float()
        out_uncond, out_cond = both.chunk(2)
        guided = out_uncond + per_sample(draw.guidance.float(), z) * (out_cond - out_uncond)
        x0, eps = x0_and_eps(guided, z, self._at(self.alpha, draw.t_start, z), self._at(self.sigma, draw.t_start, z),
                             self.prediction_type)
        return ddim_step(x0, eps, self._at(self.alpha, draw.t_prev, z), self._at(self.sigma, draw.t_prev, z))

    def target(self, unet, latents: torch.Tensor, cond: Conditioning | torch.Tensor,
               draw: LcmDraw) -> tuple[torch.Tensor, torch.Tensor]:
        """(z_{t_{n+k}}, f_θ⁻(ẑ_{t_n}, t_n)): the noisy input and the consistency target, no gradient."""
        x0 = latents.float()
        z = self._at(self.alpha, draw.t_start, x0) * x0 + self._at(self.sigma, draw.t_start, x0) * draw.noise
        z_prev = self.teacher_solver_step(unet, z, draw, cond, latents.dtype)
        with torch.no_grad():
            # θ⁻ = θ ([LoRA] sec. 2 / the recipe): the student itself, no EMA copy.
            target = self.consistency_function(unwrap(unet), z_prev, draw.t_prev, cond, latents.dtype)
        return z, target

    def __call__(self, unet, latents: torch.Tensor, cond: Conditioning | torch.Tensor,
                 generator: torch.Generator) -> torch.Tensor:
        draw = self.draw(latents, generator)
        z, target = self.target(unet, latents, cond, draw)
        prediction = self.consistency_function(unet, z, draw.t_start, cond, latents.dtype)
        return pseudo_huber(prediction, target, self.lcm.huber_c)
