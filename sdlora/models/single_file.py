"""A single-file checkpoint (original LDM/SGM key layout) -> a diffusers-format folder in the user cache.

The rest of sdlora loads diffusers folders; a `.safetensors` model is converted once into
`cache_dir()/models/file-<name>-<key>/`, where the key hashes the file's content and the options that change the
result (`model_family`, `vae`, a YAML beside the file), and is reused after that. The folder is written to a temp
folder and renamed into place, so an interrupted conversion leaves nothing half-made. Key conversion is diffusers'
own (`diffusers.loaders.single_file_utils`); the configs are read from the tensor shapes (`ldm_configs`), and
the tokenizers and scheduler configs come from the package, so nothing is fetched.

Choices (documented in README, "Bring your own model"):
- EMA: a file that holds both `model.diffusion_model.*` and `model_ema.*` is converted with the former, the
  weights that A1111 and ComfyUI run when they load the same file, so the LoRA is trained against the weights
  it will be applied to ("ema-only" releases already store their EMA weights as model.diffusion_model.*).
- VAE: a file without `first_stage_model.*` needs `vae:` (a VAE .safetensors or a diffusers VAE folder);
  `vae:` also replaces a VAE baked into the file.
- v-prediction (SD 2.x): `model_family` (sd2 / sd2-v) wins; else a YAML beside the file (A1111's convention,
  `parameterization: "v"`); else a `v_pred` marker key or `modelspec.prediction_type` metadata; else A1111's
  probe: at t=999 on a constant input a v model's output sits far below its input, an epsilon model's does not.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import yaml

from sdlora.atomic import atomic_dir
from sdlora.errors import SdloraError
from sdlora.models import ldm_configs as cfgs
from sdlora.hashing import file_sha256
from sdlora.models.checkpoint_file import PICKLE_SUFFIXES, read_checkpoint
from sdlora.models.family import check_override, parse_family
from sdlora.userdata import cache_dir
from sdlora.models.storage import hub_key

CONVERTER_VERSION = "1"
VAE_PREFIX = "first_stage_model."
VAE_PARTS = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")


def single_file_folder(path: Path, *, family: str = "auto", allow_pickle: bool = False,
                       vae: str | None = None) -> Path:
    """The diffusers folder of the single-file model at `path`, converted into the cache first if needed."""
    if path.suffix.lower() in PICKLE_SUFFIXES and not allow_pickle:
        read_checkpoint(path, allow_pickle=False)  # raises the refusal, before hashing a large file
    forced_family, forced_prediction = parse_family(family)
    vae_path = Path(vae).expanduser() if vae else None
    if vae_path is not None and not vae_path.exists():
        raise SdloraError(f"vae '{vae}': no such file or folder")
    side_yaml = path.with_suffix(".yaml")
    key_parts = {
        "file": file_sha256(path, cache_dir() / "hashes"), "family": family or "auto", "v": CONVERTER_VERSION,
        "vae": _source_hash(vae_path) if vae_path else None,
        "yaml": hashlib.sha256(side_yaml.read_bytes()).hexdigest() if side_yaml.is_file() else None,
    }
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()[:16]
    dest = cache_dir() / "models" / f"file-{path.stem[:40]}-{key}"
    if (dest / "model_index.json").is_file():
        return dest
    state, meta = read_checkpoint(path, allow_pickle=allow_pickle)
    with atomic_dir(dest) as tmp:
        info = convert_checkpoint(state, meta, tmp, ref=str(path), forced_family=forced_family,
                                  forced_prediction=forced_prediction, vae=vae_path,
                                  side_yaml=_read_yaml(side_yaml) if side_yaml.is_file() else {})
        (tmp / "source.json").write_text(json.dumps({"source": str(path.resolve()), **key_parts, **info},
                                                    indent=2), encoding="utf-8")
    return dest


def _source_hash(path: Path) -> str:
    if path.is_file():
        return file_sha256(path, cache_dir() / "hashes")
    files = sorted(p for p in path.rglob("*") if p.is_file())
    return hashlib.sha256("|".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
                                   for p in files).encode()).hexdigest()


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SdloraError(f"{path}: the model's config YAML is not readable ({exc})") from None
    params = (data.get("model") or {}).get("params") or {}
    return params if isinstance(params, dict) else {}


# ------------------------------------------------------------------------------------------------ conversion


def convert_checkpoint(state: dict[str, torch.Tensor], meta: dict[str, str], out: Path, *, ref: str,
                       forced_family: str | None = None, forced_prediction: str | None = None,
                       vae: Path | None = None, side_yaml: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the diffusers folder of an original-layout state dict into `out`; returns what was decided."""
    side_yaml = side_yaml or {}
    try:
        detected = cfgs.family_from_keys(state)
    except SdloraError as exc:
        raise SdloraError(f"model '{ref}': {exc}") from None
    family = check_override(ref, detected, forced_family)
    state, weights = _choose_unet_weights(state)
    sdxl = family == "sdxl"

    # Text encoders first: SDXL's UNet config needs the pooled width of encoder 2.
    if family == "sd2":
        _write_open_clip(state, cfgs.OPEN_CLIP_PREFIXES["sd2"], out / "text_encoder", ref, drop_last=True)
        write_tokenizer(out / "tokenizer", "open_clip")
    else:
        _write_clip(state, cfgs.CLIP_PREFIXES[family], out / "text_encoder", ref)
        write_tokenizer(out / "tokenizer", "clip")
    pooled = None
    if sdxl:
        pooled = _write_open_clip(state, cfgs.OPEN_CLIP_PREFIXES["sdxl"], out / "text_encoder_2", ref,
                                  drop_last=False)
        write_tokenizer(out / "tokenizer_2", "open_clip")

    prediction, why = _prediction_type(state, meta, family, forced_prediction, side_yaml)
    unet_cfg = cfgs.unet_config(state, family, v_prediction=prediction == "v_prediction",
                                yaml_unet=(side_yaml.get("unet_config") or {}).get("params"), pooled_dim=pooled)
    if unet_cfg["in_channels"] != 4:
        raise SdloraError(f"model '{ref}': a UNet with {unet_cfg['in_channels']} input channels (an inpainting or "
                          f"other special model); LoRA training needs a text-to-image base model")
    unet = _write_unet(state, unet_cfg, out / "unet", ref)
    if why == "probe":
        prediction = "v_prediction" if looks_like_v_prediction(unet) else "epsilon"
        if prediction == "v_prediction":  # the probe chose v: the 768-v config's sample size and fp16 upcast
            unet_cfg.update(sample_size=96, upcast_attention=True)
            _save_config(type(unet), unet_cfg, out / "unet")
        warnings.warn(f"model '{ref}': an SD 2.x file with no prediction-type marker; the weights look like "
                      f"{prediction} (A1111's probe). If that is wrong set model_family: "
                      f"{'sd2' if prediction == 'v_prediction' else 'sd2-v'}")
    del unet

    vae_source = _write_vae(state, out / "vae", ref, family, vae,
                            scale=side_yaml.get("scale_factor"), sample_size=unet_cfg["sample_size"] * 8)
    _write_scheduler(out / "scheduler", family, prediction)
    _write_model_index(out, sdxl)
    return {"family": family, "prediction_type": prediction, "prediction_from": why, "unet_weights": weights,
            "vae_from": vae_source}


def _choose_unet_weights(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """The UNet weights to convert: the main ones (what A1111/ComfyUI run); model_ema.* is left out."""
    ema = [k for k in state if k.startswith("model_ema.")]
    if not ema:
        return state, "main"
    return {k: v for k, v in state.items() if not k.startswith("model_ema.")}, f"main ({len(ema)} EMA tensors unused)"


def _prediction_type(state, meta, family, forced, side_yaml) -> tuple[str, str]:
    if forced is not None:
        return forced, "model_family"
    if "parameterization" in side_yaml:
        return ("v_prediction" if side_yaml["parameterization"] == "v" else "epsilon"), "yaml"
    if "v_pred" in state or str(meta.get("modelspec.prediction_type", "")).startswith("v") or \
            meta.get("ss_v_parameterization", "").lower() == "true":
        return "v_prediction", "marker"
    if family == "sd2":
        return "epsilon", "probe"
    return "epsilon", "family"


@torch.no_grad()
def looks_like_v_prediction(unet) -> bool:
    """A1111's SD 2.x test: at t=999 a v model maps a constant 0.5 latent to an output whose mean is far below
    the input (v ~ -x0 there), an epsilon model to one near it (epsilon ~ x_t there)."""
    unet = unet.float()
    x = torch.full((1, unet.config.in_channels, 8, 8), 0.5)
    context = torch.full((1, 2, unet.config.cross_attention_dim), 0.5)
    out = unet(x, torch.tensor([999]), encoder_hidden_states=context).sample
    return (out - x).mean().item() < -1


# ------------------------------------------------------------------------------------------------ components


def _meta_model(build):
    from accelerate import init_empty_weights

    with init_empty_weights():
        return build()


def _check_keys(model: torch.nn.Module, sd: dict[str, torch.Tensor], what: str, ref: str) -> None:
    """A key-map slip must be an error, not a layer left at random init."""
    want = {hub_key(k) if what.startswith("CLIP") else k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(want) - set(sd))
    extra = sorted(set(sd) - set(want))
    wrong = sorted(k for k in set(want) & set(sd) if tuple(sd[k].shape) != want[k])
    if missing or extra or wrong:
        first = (missing or extra or wrong)[0]
        raise SdloraError(f"model '{ref}': the {what} weights do not fit the layout read from the file "
                          f"({len(missing)} missing, {len(extra)} unexpected, {len(wrong)} of another shape, e.g. "
                          f"{first}); set model_family if the family was guessed wrong, else the file is unusual")


def _save_weights(sd: dict[str, torch.Tensor], file: Path) -> None:
    from safetensors.torch import save_file

    file.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(file), metadata={"format": "pt"})


def _save_config(cls, config: dict[str, Any], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    _meta_model(lambda: cls.from_config(config)).save_config(folder)


def _write_unet(state, config, folder: Path, ref: str):
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    sd = convert_ldm_unet_checkpoint(state, config)
    model = _meta_model(lambda: UNet2DConditionModel.from_config(config))
    _check_keys(model, sd, "UNet", ref)
    _save_config(UNet2DConditionModel, config, folder)
    _save_weights(sd, folder / "diffusion_pytorch_model.safetensors")
    model.load_state_dict(sd, assign=True)
    return model


def _write_clip(state, prefix: str, folder: Path, ref: str) -> None:
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel

    if prefix + "text_model.embeddings.token_embedding.weight" not in state:
        raise SdloraError(f"model '{ref}': no text encoder weights ({prefix}*) in the file; use a full checkpoint")
    config = CLIPTextConfig(**cfgs.clip_config(state, prefix))
    _check_vocab(config, ref)
    sd = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and not k.endswith("position_ids")}
    sd = convert_ldm_clip_checkpoint({prefix + k: v for k, v in sd.items()}, remove_prefix=prefix)
    _write_text_model(CLIPTextModel, config, sd, folder, ref)


def _write_open_clip(state, prefix: str, folder: Path, ref: str, *, drop_last: bool) -> int:
    """Convert an OpenCLIP encoder; returns its projection width (SDXL's pooled embedding)."""
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    if prefix + "token_embedding.weight" not in state:
        raise SdloraError(f"model '{ref}': no OpenCLIP text encoder weights ({prefix}*) in the file; use a full "
                          f"checkpoint")
    raw = cfgs.open_clip_config(state, prefix, drop_last=drop_last)
    config = CLIPTextConfig(**raw)
    _check_vocab(config, ref)
    sub = {k: v for k, v in state.items() if k.startswith(prefix)}
    if drop_last:  # SD 2.x conditions on the penultimate layer: the last block and the projection go unused
        last = f"{prefix}transformer.resblocks.{raw['num_hidden_layers']}."
        sub = {k: v for k, v in sub.items() if not k.startswith(last) and k != prefix + "text_projection"}
    stub = SimpleNamespace(config=SimpleNamespace(hidden_size=raw["hidden_size"]))
    sd = convert_open_clip_checkpoint(stub, sub, prefix=prefix)
    cls = CLIPTextModel if drop_last else CLIPTextModelWithProjection
    _write_text_model(cls, config, sd, folder, ref)
    return raw["projection_dim"]


def _check_vocab(config, ref: str) -> None:
    if config.vocab_size != 49408:
        raise SdloraError(f"model '{ref}': the text encoder has {config.vocab_size} token embeddings, not CLIP's "
                          f"49,408; its tokenizer is not the CLIP one sdlora ships")


def _write_text_model(cls, config, sd, folder: Path, ref: str) -> None:
    config.architectures = [cls.__name__]
    model = _meta_model(lambda: cls(config))
    _check_keys(model, sd, cls.__name__, ref)
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(folder)
    _save_weights(sd, folder / "model.safetensors")


def write_tokenizer(folder: Path, pad: str) -> None:
    from sdlora.models.clip_vocab import write_clip_tokenizer

    write_clip_tokenizer(folder, pad=pad)


def _write_vae(state, folder: Path, ref: str, family: str, vae: Path | None, *, scale, sample_size) -> str:
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    if vae is not None and vae.is_dir():
        src = vae / "vae" if (vae / "vae" / "config.json").is_file() else vae
        if not (src / "config.json").is_file():
            raise SdloraError(f"vae '{vae}': a folder must be a diffusers VAE (config.json + weights) or a "
                              f"diffusers model folder with vae/")
        shutil.copytree(src, folder)
        return str(vae)
    if vae is not None:
        source, _ = read_checkpoint_vae(vae)
        prefix = VAE_PREFIX if any(k.startswith(VAE_PREFIX) for k in source) else ""
        origin = str(vae)
    else:
        source, prefix, origin = state, VAE_PREFIX, "file"
        if not any(k.startswith(VAE_PREFIX) for k in state):
            raise SdloraError(f"model '{ref}': the file has no VAE (first_stage_model.*); give one with "
                              f"vae: /path/to/vae.safetensors (or a diffusers VAE folder)")
    source = {k: v for k, v in source.items() if k.startswith(prefix) and k[len(prefix):].startswith(VAE_PARTS)}
    config = cfgs.vae_config(source, prefix, family, scale, sample_size)
    sd = convert_ldm_vae_checkpoint({VAE_PREFIX + k[len(prefix):]: v for k, v in source.items()}, config)
    _check_keys(_meta_model(lambda: AutoencoderKL.from_config(config)), sd, "VAE", ref)
    _save_config(AutoencoderKL, config, folder)
    _save_weights(sd, folder / "diffusion_pytorch_model.safetensors")
    return origin


def read_checkpoint_vae(path: Path):
    from sdlora.tensorfile import read_safetensors

    if path.suffix.lower() != ".safetensors":
        raise SdloraError(f"vae '{path}': give a .safetensors VAE file or a diffusers VAE folder")
    state, meta = read_safetensors(path, label=f"vae '{path}'")
    if not any(k.startswith(("encoder.down.", VAE_PREFIX)) for k in state):
        raise SdloraError(f"vae '{path}': no VAE weights in the original layout (encoder.down.*); give an SD VAE "
                          f".safetensors or a diffusers VAE folder")
    return state, meta


def _write_scheduler(folder: Path, family: str, prediction: str) -> None:
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    from sdlora.models.ldm_configs import SD_SCHEDULER

    if family == "sdxl":  # SDXL base's own scheduler config
        scheduler = EulerDiscreteScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                           beta_schedule="scaled_linear", steps_offset=1,
                                           timestep_spacing="leading", prediction_type=prediction)
    else:
        scheduler = DDIMScheduler(**{**SD_SCHEDULER, "prediction_type": prediction})
    scheduler.save_config(folder)


def _write_model_index(out: Path, sdxl: bool) -> None:
    import diffusers

    index: dict[str, Any] = {
        "_class_name": "StableDiffusionXLPipeline" if sdxl else "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "scheduler": ["diffusers", "EulerDiscreteScheduler" if sdxl else "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
    }
    if sdxl:
        index.update(text_encoder_2=["transformers", "CLIPTextModelWithProjection"],
                     tokenizer_2=["transformers", "CLIPTokenizer"], force_zeros_for_empty_prompt=True,
                     image_encoder=[None, None], feature_extractor=[None, None])
    else:
        index.update(safety_checker=[None, None], feature_extractor=[None, None], requires_safety_checker=False)
    (out / "model_index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
