"""Probe: can `compile: blocks` skip dynamo's tracing on a warm start with torch's AOT precompile?

A warm `blocks` start spends most of its first UNet call in dynamo tracing the block variants again (round eight,
docs/PERFORMANCE.md), though their compiled code comes from the cache. `torch._dynamo.aot_compile` saves a traced,
compiled function with its guards and loads it without tracing. This probe compiles each distinct block variant of
a model with a LoRA that way and saves it (`save`), then in a new process loads them, runs forward + backward and
compares with eager (`load`); `trace` is today's path (torch.compile per block) for the time beside it:

    python bench/aot_precompile_probe.py save  DIR [MODEL] [RESOLUTION] [BATCH]
    python bench/aot_precompile_probe.py load  DIR [MODEL] [RESOLUTION] [BATCH]
    python bench/aot_precompile_probe.py trace DIR [MODEL] [RESOLUTION] [BATCH]   # twice: the second is warm

PROBE_SHARE=I/N makes `save` compile only every N-th variant from the I-th (N processes side by side, as compile
workers do); share 0 writes the block map and eager's reference.

Prints one JSON line. Saves and loads through sdlora/train/saved_blocks.py (torch's private API, 2.11-2.13);
round nine's figures were taken with the probe's own copy of that code, before it left out dynamo's global-state
guard and compared the inlined sources.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

def detached(value):
    return value.detach().requires_grad_(value.requires_grad) if isinstance(value, torch.Tensor) else value


def variant_key(block, inputs) -> str:
    """Structure with plain attributes (an int 1 and a float 1.0 are different guards), parameter shapes, inputs."""
    def describe(v):
        return (tuple(v.shape), str(v.dtype), v.requires_grad) if isinstance(v, torch.Tensor) else repr(v)

    args, kwargs = inputs
    attrs = [(n, k, type(v).__name__, v) for n, m in block.named_modules() for k, v in sorted(vars(m).items())
             if isinstance(v, (int, float, bool, str, type(None)))]
    return repr((type(block).__name__, attrs, [(n, tuple(p.shape)) for n, p in block.named_parameters()],
                 [describe(v) for v in args], sorted((k, describe(v)) for k, v in kwargs.items())))


def main() -> None:
    from sdlora.config import config_from_dict
    from sdlora.train import saved_blocks
    from sdlora.train.compiled import is_repeated_block, persist_compile_cache
    from sdlora.train.model_setup import setup_model

    mode, out = sys.argv[1], Path(sys.argv[2])
    model_ref = sys.argv[3] if len(sys.argv) > 3 else "tiny"
    resolution = int(sys.argv[4]) if len(sys.argv) > 4 else 64
    batch = int(sys.argv[5]) if len(sys.argv) > 5 else 2
    out.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # PROBE_AUTOCAST=1: bf16 autocast on the CPU too, as on the GPU.
    autocast = torch.autocast(device, dtype=torch.bfloat16,
                              enabled=device == "cuda" or os.environ.get("PROBE_AUTOCAST") == "1")
    cfg = config_from_dict({"model": model_ref, "data": {"dir": str(out), "resolution": resolution},
                            "network": {"rank": 4, "alpha": 4}})
    torch.manual_seed(0)
    unet = setup_model(cfg, dtype=torch.bfloat16 if device == "cuda" else torch.float32).components.unet
    unet.to(device).train()
    for name, param in unet.named_parameters():
        if "lora_B" in name:  # a LoRA that does something, so its gradients are compared too
            torch.nn.init.normal_(param, std=0.02)
    blocks = [m for m in unet.modules() if is_repeated_block(m)]
    g = torch.Generator().manual_seed(1)
    latent = resolution // 8
    x = torch.randn(batch, unet.config.in_channels, latent, latent, generator=g).to(device, unet.dtype)
    t = torch.randint(0, 1000, (batch,), generator=g).to(device)
    text = torch.randn(batch, 77, unet.config.cross_attention_dim, generator=g).to(device, unet.dtype)
    persist_compile_cache()

    def step():
        """One forward + backward: (output, LoRA gradients, seconds)."""
        for param in unet.parameters():
            param.grad = None
        start = time.perf_counter()
        with autocast:
            y = unet(x, t, text).sample
        y.float().square().mean().backward()
        grads = {n: p.grad.float().clone() for n, p in unet.named_parameters() if p.grad is not None}
        return y.float().detach(), grads, time.perf_counter() - start

    def differences(y, grads) -> dict:
        """Against eager's output and LoRA gradients saved by `save` (share 0), where there are any."""
        if not (out / "eager.pt").exists():
            return {}
        reference = torch.load(out / "eager.pt")
        grad_diff = max((grads[n] - g).abs().max().item() / (g.abs().max().item() + 1e-12)
                        for n, g in reference["grads"].items())
        return {"output_diff": (y - reference["y"]).abs().max().item(), "grad_rel_diff": grad_diff,
                "grads": len(grads), "eager_grads": len(reference["grads"])}

    if mode == "trace":
        import torch._dynamo.config as dynamo_config

        dynamo_config.recompile_limit = 64
        for block in blocks:
            block.forward = torch.compile(block.forward, dynamic=False)
        y, grads, first = step()
        print(json.dumps({"mode": mode, "first_call_s": round(first, 2), **differences(y, grads)}), flush=True)
        return
    if mode == "save":
        inputs = {}
        hooks = [b.register_forward_pre_hook(lambda m, a, k: inputs.setdefault(id(m), (a, k)), with_kwargs=True)
                 for b in blocks]
        with autocast:
            unet(x, t, text)  # with grad: the inputs' requires_grad is part of each variant
        for hook in hooks:
            hook.remove()
        inputs = {k: (tuple(detached(v) for v in a), {n: detached(v) for n, v in kw.items()})
                  for k, (a, kw) in inputs.items()}
        variants: dict[str, list[int]] = {}
        for i, block in enumerate(blocks):
            variants.setdefault(variant_key(block, inputs[id(block)]), []).append(i)
        share, shares = (int(v) for v in os.environ.get("PROBE_SHARE", "0/1").split("/"))
        start = time.perf_counter()
        for indices in list(variants.values())[share::shares]:
            block = blocks[indices[0]]
            args, kwargs = inputs[id(block)]
            with autocast:
                saved_blocks.compile_and_save(block, args, kwargs, {"mode": None, "backend": "inductor"},
                                              out / f"variant-{indices[0]}.bin")
        saved_s = time.perf_counter() - start
        if share == 0:
            (out / "blocks.json").write_text(json.dumps({str(i): v[0] for v in variants.values() for i in v}))
            y, grads, _ = step()
            torch.save({"y": y, "grads": grads}, out / "eager.pt")
        print(json.dumps({"mode": mode, "blocks": len(blocks), "variants": len(variants),
                          "save_s": round(saved_s, 1)}), flush=True)
        return
    start = time.perf_counter()
    variant_of = json.loads((out / "blocks.json").read_text())
    loaded = {}
    for i, block in enumerate(blocks):
        v = variant_of[str(i)]
        if v not in loaded:
            with autocast:  # the calls' autocast: see saved_blocks.load
                loaded[v] = saved_blocks.load(out / f"variant-{v}.bin", block)
        block.forward = (lambda fn, b, i: lambda *a, **k: checked(fn, i, b, *a, **k))(loaded[v], block, i)
    load_s = time.perf_counter() - start
    refused: dict[int, str] = {}

    def checked(fn, index, *args, **kwargs):
        """Call a loaded variant (its own guard check is off); where its guards refuse the call, note why."""
        if not fn.guard_check(*args, **kwargs):
            f_locals = fn.prepare_f_locals(*args, **kwargs)
            refused[index] = str(fn._artifacts.guard_manager.check_verbose(f_locals))[:1500]
        return fn(*args, **kwargs)

    y, grads, first = step()
    print(json.dumps({"mode": mode, "variants": len(loaded), "load_s": round(load_s, 2),
                      "first_call_s": round(first, 2), **differences(y, grads),
                      "refused": len(refused), "refused_reasons": sorted(set(refused.values()))[:4]}))


if __name__ == "__main__":
    main()
