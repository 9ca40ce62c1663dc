"""sdlora.adapters.batched: a batch whose samples carry different adapters gives each sample what diffusers'
set_adapters gives it alone, with the base weights shared and each file cached once."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from test_adapters_blend import TEXT, UNET
from test_adapters_fixtures import make_adapter, relative_difference, tiny_pipeline, unet_output

from sdlora.adapters import AdapterBlender, LoraLayer, load_adapter, save_adapter
from sdlora.adapters.batched import MultiAdapter, not_batchable
from sdlora.errors import SdloraError


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Three adapters: attention + feed-forward + conv + text encoder; other ranks and alphas; attention only."""
    folder = tmp_path_factory.mktemp("batched")
    pipe = tiny_pipeline()
    style = make_adapter(pipe, UNET, TEXT, rank=4, alpha=2.0, seed=1)
    subject = make_adapter(pipe, ("to_k", "to_v", "ff.net.0.proj", "conv2"), rank=2, alpha=4.0, seed=2, vary=True)
    third = make_adapter(pipe, ("to_q", "to_out.0"), rank=8, alpha=8.0, seed=3)
    return [save_adapter(style, folder / "style.safetensors", fmt="kohya"),
            save_adapter(subject, folder / "subject.safetensors", fmt="diffusers"),
            save_adapter(third, folder / "third.safetensors", fmt="kohya")]


def batched_unet_output(pipe, n: int, cfg: bool = False) -> torch.Tensor:
    """unet_output's computation for a batch of n identical inputs (2n with classifier-free guidance's halves)."""
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 16, 16, generator=gen).repeat(n, 1, 1, 1)
    ids = pipe.tokenizer(["a red circle"] * n, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         return_tensors="pt").input_ids
    with torch.no_grad():
        text = pipe.text_encoder(ids)[0]
        if cfg:
            latents, text = torch.cat([latents, latents]), torch.cat([text, text])
        return pipe.unet(latents, torch.tensor([500]), encoder_hidden_states=text).sample


MIXES = [[("style", 0.7)], [("subject", -1.3), ("style", 0.5)], [], [("third", 1.5)], [("subject", 2.0)]]


def outputs_alone_and_batched(names: dict, mixes: list) -> tuple[list, object, torch.Tensor, torch.Tensor]:
    """Each mix's UNet output through AdapterBlender alone; the pipeline serving all mixes as one batch, and that
    batch's outputs without and with classifier-free guidance's doubling."""
    blender = AdapterBlender(tiny_pipeline())
    alone = []
    for mix in mixes:
        blender.set_weights({names[n]: w for n, w in mix})
        alone.append(unet_output(blender.pipe))
    pipe = tiny_pipeline()
    multi = MultiAdapter(pipe)
    keys = {n: multi.load(p).key for n, p in names.items()}
    with multi.mixes([[(keys[n], w) for n, w in mix] for mix in mixes]):
        return alone, pipe, batched_unet_output(pipe, len(mixes)), batched_unet_output(pipe, len(mixes), cfg=True)


def test_each_sample_of_a_batch_gets_what_set_adapters_gives_it_alone(files):
    names = dict(zip(("style", "subject", "third"), files))
    alone, pipe, batched, doubled = outputs_alone_and_batched(names, MIXES)
    for i, expected in enumerate(alone):
        assert relative_difference(batched[i:i + 1], expected) < 1e-5, MIXES[i]
        # both halves of a guidance batch carry sample i's adapters
        assert relative_difference(doubled[i:i + 1], expected) < 1e-5
        assert relative_difference(doubled[len(MIXES) + i:len(MIXES) + i + 1], expected) < 1e-5
    assert min(relative_difference(alone[i], alone[2]) for i in (0, 1, 3, 4)) > 0.01  # each adapter shows
    # outside a mix the pipeline is exactly the base model
    assert torch.equal(unet_output(pipe), alone[2])


def test_a_batched_pipeline_call_gives_the_images_of_one_generation_per_adapter(files):
    prompts = ["a red circle", "a blue square", "a green circle"]
    weights = [{files[0]: 1.0}, {}, {files[1]: 0.8, files[2]: -0.5}]
    blender = AdapterBlender(tiny_pipeline())
    alone = []
    for w in weights:
        blender.set_weights(w)
        alone.append(np.asarray(blender.generate(prompts[len(alone)], steps=3, seed=4, guidance=5.0), np.int16))
    pipe = tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    multi = MultiAdapter(pipe)
    rows = [[(multi.load(p).key, wt) for p, wt in w.items()] for w in weights]
    with multi.mixes(rows), torch.no_grad():
        images = pipe(prompts, num_inference_steps=3, guidance_scale=5.0,
                      generator=[torch.Generator("cpu").manual_seed(4) for _ in prompts]).images
    for image, expected in zip(images, alone):
        assert np.abs(np.asarray(image, np.int16) - expected).max() <= 2  # float rounding of batched matmuls
    assert np.abs(alone[0] - alone[1]).mean() > 1 and np.abs(alone[2] - alone[1]).mean() > 1


def test_a_file_is_cached_once_by_content_and_the_least_recently_used_goes_first(files, tmp_path):
    copy = tmp_path / "copy.safetensors"
    shutil.copy(files[0], copy)
    multi = MultiAdapter(tiny_pipeline(), capacity=2)
    first, again = multi.load(files[0]), multi.load(copy)
    assert first.key == again.key and multi.loads == 1
    multi.load(files[1])
    multi.load(files[0])  # used again: files[1] is now the oldest
    multi.load(files[2])
    assert set(multi.adapters) == {first.key, multi.load(files[2]).key} and multi.loads == 3
    multi.close()
    assert not multi.pipe.unet._forward_hooks and not any(m._forward_hooks for m in multi.pipe.unet.modules())


def test_adapters_for_another_model_or_type_are_refused_with_the_file_named(files, tmp_path):
    pipe = tiny_pipeline()
    adapter = make_adapter(pipe, ("to_k",), rank=2, seed=5)
    name = next(n for n in adapter.layers if n.endswith("attn2.to_k"))
    adapter.layers[name] = LoraLayer(torch.zeros(2, 768), torch.zeros(128, 2), 1.0)  # SD 1.5 text width
    wide = save_adapter(adapter, tmp_path / "wide.safetensors")
    multi = MultiAdapter(pipe)
    with pytest.raises(SdloraError, match=r"wide.safetensors: layer .*attn2.to_k has down \(2, 768\).*another base "
                                          r"model \(sd1, from layer shapes\)"):
        multi.load(wide)
    adapter = make_adapter(pipe, ("to_k",), rank=2, seed=5, metadata={"ss_base_model_version": "sdxl_base_v1-0"})
    with pytest.raises(SdloraError, match="xl.safetensors: this LoRA is for sdxl"):
        multi.load(save_adapter(adapter, tmp_path / "xl.safetensors"))
    dora = make_adapter(pipe, ("to_k",), rank=2, seed=5, metadata={"sdlora_network_type": "dora"})
    assert not_batchable(dora) == "network type 'dora'"
    assert not_batchable(make_adapter(pipe, ("to_k",), rank=2, seed=5)) is None
    with pytest.raises(SdloraError, match="network type 'dora' cannot be batched"):
        multi.add("x", dora)
    assert multi.loads == 0 and not any(m._forward_hooks for m in pipe.unet.modules())


def test_loha_and_lokr_batch_with_loras_and_each_sample_gets_what_it_gets_alone(files, tmp_path):
    """LoHa/LoKr (attention, 3x3 and 1x1 convolutions) batch as their dense update, beside LoRA pairs."""
    from test_network_types import file_of, trained_pipe

    base = tiny_pipeline()
    names = {"style": files[0], "subject": files[1]}
    for kind in ("loha", "lokr"):
        names[kind] = file_of(trained_pipe(base, kind), tmp_path, kind)
    mixes = [[("loha", 1.0)], [("lokr", 0.6), ("style", 0.5)], [], [("lokr", -1.2)], [("loha", 0.4), ("lokr", 0.8)],
             [("subject", 1.0)]]
    assert all(not_batchable(load_adapter(names[kind])) is None for kind in ("loha", "lokr"))
    alone, _, batched, doubled = outputs_alone_and_batched(names, mixes)
    for i, expected in enumerate(alone):
        assert relative_difference(batched[i:i + 1], expected) < 1e-5, mixes[i]
        assert relative_difference(doubled[i:i + 1], expected) < 1e-5, mixes[i]
        assert relative_difference(doubled[len(mixes) + i:len(mixes) + i + 1], expected) < 1e-5, mixes[i]
    # each adapter shows (100x the tolerance above; these random LoHa/LoKr move the output by ~1%), the mixes differ
    assert min(relative_difference(alone[i], alone[2]) for i in (0, 1, 3, 4)) > 1e-3
    assert relative_difference(alone[0], alone[4]) > 1e-3
