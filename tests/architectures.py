"""The published architectures of Stable Diffusion 1.5 and SDXL as diffusers configs, for random-weight models.

Speed and memory do not depend on weight values, so benchmarks and structure tests build these with random
weights instead of downloading checkpoints. The numbers are the public model configs (SD 1.5: 860M-parameter
UNet, CLIP ViT-L/14 text encoder; SDXL base: 2.6B UNet, CLIP ViT-L + OpenCLIP ViT-bigG). Only tests and bench/
use them (bench/ puts tests/ on sys.path), so they live here rather than in the package.
"""

from __future__ import annotations

import torch

SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8,
)
SD_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
)
CLIP_L_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                   num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                   projection_dim=768)
SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), cross_attention_dim=2048, attention_head_dim=(5, 10, 20),
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,  # 6 size/crop ids x 256 + the 1280-d pooled text embedding
)
# SDXL's VAE has SD's architecture with its own latent scale; it overflows in fp16, hence force_upcast.
SDXL_VAE = dict(SD_VAE, sample_size=1024, scaling_factor=0.13025, force_upcast=True)
# Encoder 1 is CLIP ViT-L/14 (as SD 1.5); encoder 2 is OpenCLIP ViT-bigG/14, whose projected pooled output
# conditions the UNet. The UNet sees their penultimate hidden states side by side: 768 + 1280 = 2048.
SDXL_TEXT_1 = CLIP_L_TEXT
SDXL_TEXT_2 = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                   num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu", projection_dim=1280)
SDXL_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                      prediction_type="epsilon", clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                      timestep_spacing="leading")

# A tiny SDXL of the same structure for tests and CPU checks (after diffusers' own SDXL test configs): two
# resolution levels, both encoders 32-d (so cross-attention is 64-d), 8-d size/crop embeddings (6 x 8 + 32 = 80).
TINY_SDXL_UNET = dict(
    sample_size=32, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(32, 64),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2), cross_attention_dim=64, attention_head_dim=(2, 4),
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=80, norm_num_groups=8,
)
TINY_SDXL_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, sample_size=64,
                     block_out_channels=(16, 32), norm_num_groups=8,
                     down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                     scaling_factor=0.13025)
TINY_SDXL_TEXT = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=3, num_attention_heads=4,
                      max_position_embeddings=77, hidden_act="gelu", projection_dim=32)


def random_sd15_pipeline(seed: int = 0):
    """An SD 1.5-shaped pipeline with random weights and the tiny model's tokenizer (ids fit CLIP-L's vocab)."""
    import tempfile
    from pathlib import Path

    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from sdlora.models.ldm_configs import SD_SCHEDULER
    from sdlora.models.tiny import write_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        write_tokenizer(Path(tmp))
        tokenizer = CLIPTokenizer.from_pretrained(tmp)
    torch.manual_seed(seed)
    return StableDiffusionPipeline(
        vae=AutoencoderKL(**SD_VAE), text_encoder=CLIPTextModel(CLIPTextConfig(**CLIP_L_TEXT)),
        tokenizer=tokenizer, unet=UNet2DConditionModel(**SD15_UNET), scheduler=DDIMScheduler(**SD_SCHEDULER),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def random_sdxl_pipeline(seed: int = 0, tiny: bool = False):
    """An SDXL-base-shaped StableDiffusionXLPipeline with random weights (`tiny`: the small test structure).

    Both tokenizers are the tiny model's CLIP BPE tokenizer: its ids fit CLIP's 49408-entry vocabulary, and no
    vocabulary file has to be fetched.
    """
    import tempfile
    from pathlib import Path

    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from sdlora.models.tiny import write_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        write_tokenizer(Path(tmp))
        tokenizer = CLIPTokenizer.from_pretrained(tmp)
    if tiny:
        ids = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                   eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        unet_cfg, vae_cfg, text_1, text_2 = TINY_SDXL_UNET, TINY_SDXL_VAE, {**TINY_SDXL_TEXT, **ids}, \
            {**TINY_SDXL_TEXT, **ids}
    else:
        unet_cfg, vae_cfg, text_1, text_2 = SDXL_UNET, SDXL_VAE, SDXL_TEXT_1, SDXL_TEXT_2
    torch.manual_seed(seed)
    return StableDiffusionXLPipeline(
        vae=AutoencoderKL(**vae_cfg), text_encoder=CLIPTextModel(CLIPTextConfig(**text_1)),
        text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**text_2)), tokenizer=tokenizer,
        tokenizer_2=tokenizer, unet=UNet2DConditionModel(**unet_cfg), scheduler=DDIMScheduler(**SDXL_SCHEDULER))
