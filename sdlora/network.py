"""LoRA on the UNet (and optionally the text encoder) through peft: inject, enumerate, and move weights between
the live model and `Adapter`.

peft owns the layer math (its LoRA Linear computes h = W0·x + (alpha/r)·B·A·x with A random and B zero at
init, Hu et al. 2021, eq. 3); we only choose the targets and translate names. `network.type` picks peft's layer:
LoRA (LoCon on convolutions), DoRA (`use_dora`), LoHa and LoKr (peft's LyCORIS ports, the same formulas and
shapes as the LyCORIS library); DyLoRA is a peft LoRA whose rank `DyLoraRanks` truncates per step, the one thing
peft lacks.
"""

from __future__ import annotations

import torch

from sdlora.lora.formats import clip_model_path
from sdlora.lora.kinds import DoraLayer, LohaLayer, LokrLayer
from sdlora.lora.state import Adapter, LoraLayer
from sdlora.config import NetworkConfig
from sdlora.errors import SdloraError

ADAPTER_NAME = "default"
# The text encoder's targets: every Linear of CLIP's attention and MLP, as kohya's sd-scripts train by default
# (networks/lora.py targets CLIPAttention and CLIPMLP), so our files have the layers users expect of a TE LoRA.
TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
# Seed offset of the text encoder's LoRA init, so its A matrices are not drawn from the UNet's stream.
TEXT_ENCODER_SEED = 1


# Parameter-name fragments of the adapter layers peft adds (LoRA/DoRA, LoHa, LoKr).
NETWORK_PARAMETERS = ("lora_", "hada_", "lokr_")


def lora_config(network: NetworkConfig, targets: list[str] | tuple[str, ...] | None = None,
                conv_names: list[str] | None = None):
    """The peft config of `network.type` (LoraConfig for lora/dora/dylora, LoHaConfig, LoKrConfig).

    `conv_names`: the Conv2d targets with a kernel larger than 1x1, which take network.conv_rank/conv_alpha (as
    kohya's LoCon and LyCORIS give 1x1 convolutions the linear rank)."""
    from sdlora.quiet import import_bitsandbytes_quietly

    import_bitsandbytes_quietly()  # peft imports it too
    from peft import LoHaConfig, LoKrConfig, LoraConfig

    patterns = {}
    if conv_names and (network.effective_conv_rank, network.effective_conv_alpha) != (network.rank,
                                                                                   network.effective_alpha):
        patterns = {"rank_pattern": {n: network.effective_conv_rank for n in conv_names},
                    "alpha_pattern": {n: network.effective_conv_alpha for n in conv_names}}
    targets = list(targets or network.targets)
    if network.type == "loha":
        return LoHaConfig(r=network.rank, alpha=network.effective_alpha, target_modules=targets, init_weights=True,
                          **patterns)
    if network.type == "lokr":
        return LoKrConfig(r=network.rank, alpha=network.effective_alpha, target_modules=targets, init_weights=True,
                          decompose_factor=network.lokr_factor, **patterns)
    extra = {"use_dora": True} if network.type == "dora" else {}
    return LoraConfig(r=network.rank, lora_alpha=network.effective_alpha, lora_dropout=network.dropout,
                      target_modules=targets, init_lora_weights=True, **patterns, **extra)


def _inject(model: torch.nn.Module, network: NetworkConfig, targets, seed: int) -> list[str]:
    """Freeze `model`, add LoRA layers to its Linear/Conv2d modules whose names end in one of `targets`."""
    model.requires_grad_(False)
    modules = {n: m for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))
               and any(n == t or n.endswith("." + t) for t in targets)}
    names = list(modules)
    conv_names = [n for n, m in modules.items() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)]
    if names:
        # The init of A draws from the global RNG: seed it so the same seed gives the same adapter.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            config = lora_config(network, targets, conv_names)
            if hasattr(model, "set_adapters"):  # a diffusers model: its own PEFT integration (enable/disable)
                model.add_adapter(config, adapter_name=ADAPTER_NAME)
            else:
                # peft directly, not transformers' add_adapter: transformers gates its PEFT integration on peft
                # versions newer than some PyPI has (5.24 wants peft >= 0.22), and we need only the layers.
                from peft import inject_adapter_in_model

                inject_adapter_in_model(config, model, adapter_name=ADAPTER_NAME)
        if network.type == "lokr":
            _lokr_full_scale(model)
        if network.type in ("loha", "lokr"):
            _without_module_dropout_draw(model)
        # fp32 LoRA whatever the base precision: updates are tiny relative to the values, and fp16/bf16 would
        # round them away.
        for param in lora_parameters(model):
            param.data = param.data.float()
    return names


def add_lora(unet: torch.nn.Module, network: NetworkConfig, seed: int) -> list[str]:
    """Inject LoRA layers into the target modules of `unet`; returns their names. Base weights stay frozen."""
    names = _inject(unet, network, network.targets, seed)
    if not names:
        raise SdloraError(f"network.targets: {network.targets} match no Linear/Conv2d module of the UNet; "
                          f"use suffixes such as to_q, to_k, to_v, to_out.0, proj_in, ff.net.2")
    return names


def add_text_encoder_lora(text_encoder: torch.nn.Module, network: NetworkConfig, seed: int) -> list[str]:
    """Inject LoRA layers into a CLIP text encoder's attention (q/k/v/out_proj) and MLP (fc1/fc2)."""
    names = _inject(text_encoder, network, TEXT_ENCODER_TARGETS, seed + TEXT_ENCODER_SEED)
    if not names:
        raise SdloraError(f"network.text_encoder: the text encoder ({type(text_encoder).__name__}) has no "
                          f"{'/'.join(TEXT_ENCODER_TARGETS)} layers; set network.text_encoder false")
    return names


class _DeltaAlwaysAdded:
    """The forward of a peft LoHa/LoKr layer without its module-dropout draw: base output plus each adapter's
    delta, what peft's own forward computes when the draw keeps the adapter (always, at module_dropout 0)."""

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.disable_adapters or self.merged:
            return super().forward(x, *args, **kwargs)
        previous_dtype = x.dtype
        result = self.base_layer(x, *args, **kwargs)
        for name in self.active_adapters:
            if name in self._available_adapters:
                result = result + self._get_delta_activations(name, x, *args, **kwargs)
        return result.to(previous_dtype)


_DELTA_ALWAYS_ADDED: dict[type, type] = {}


def _without_module_dropout_draw(model: torch.nn.Module) -> None:
    """peft's LoHa and LoKr layers draw `torch.rand(1) > module_dropout` on the CPU in every training forward, even
    at module_dropout 0 (the only value sdlora sets). A branch on a tensor breaks torch.compile's graph at every
    such layer: 38 breaks in SD 1.5's attention LoKr, and the compiled step ran at 0.28x LoRA's on an H200 (round
    five, docs/PERFORMANCE.md). Layers without module dropout get the same forward without the draw, through a
    subclass, so peft's isinstance checks, merging and state dicts are as before."""
    from peft.tuners.loha.layer import LoHaLayer
    from peft.tuners.lokr.layer import LoKrLayer

    for module in model.modules():
        cls = type(module)
        if not isinstance(module, (LoHaLayer, LoKrLayer)) or issubclass(cls, _DeltaAlwaysAdded):
            continue
        if any(module.module_dropout.get(name, 0.0) for name in module.active_adapters):
            continue
        if cls not in _DELTA_ALWAYS_ADDED:
            _DELTA_ALWAYS_ADDED[cls] = type(cls.__name__, (_DeltaAlwaysAdded, cls), {"__module__": __name__})
        module.__class__ = _DELTA_ALWAYS_ADDED[cls]


def _lokr_full_scale(model: torch.nn.Module) -> None:
    """LyCORIS scales a LoKr layer whose two factors are both full matrices by 1, not alpha/r (peft's rule):
    with alpha = r here too, training, the file and every loader agree."""
    for _, module in _lora_modules(model):
        if ADAPTER_NAME in getattr(module, "lokr_w1", {}) and ADAPTER_NAME in getattr(module, "lokr_w2", {}):
            module.alpha[ADAPTER_NAME] = module.r[ADAPTER_NAME]
            module.scaling[ADAPTER_NAME] = 1.0


def lora_parameters(unet: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for n, p in unet.named_parameters() if any(t in n for t in NETWORK_PARAMETERS) and p.requires_grad]


def count_parameters(*models: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts over `models` (the UNet, and any text encoder with a LoRA)."""
    trainable = sum(p.numel() for m in models for p in lora_parameters(m))
    return trainable, sum(p.numel() for m in models for p in m.parameters())


def _lora_modules(unet: torch.nn.Module):
    for name, module in unet.named_modules():
        if any(ADAPTER_NAME in getattr(module, attr, {}) for attr in ("lora_A", "hada_w1_a", "lokr_w1", "lokr_w1_a")):
            yield name, module


LOHA_PARTS = ("w1_a", "w1_b", "w2_a", "w2_b")
LOKR_PARTS = ("w1", "w1_a", "w1_b", "w2", "w2_a", "w2_b")


def _live_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's parameters of one peft layer, by the part names of its `sdlora.adapters` layer kind."""
    if ADAPTER_NAME in getattr(module, "lora_A", {}):
        parts = {"down": module.lora_A[ADAPTER_NAME].weight, "up": module.lora_B[ADAPTER_NAME].weight}
        if module.use_dora.get(ADAPTER_NAME):
            parts["magnitude"] = module.lora_magnitude_vector[ADAPTER_NAME].weight
        return parts
    if ADAPTER_NAME in getattr(module, "hada_w1_a", {}):
        return {part: getattr(module, f"hada_{part}")[ADAPTER_NAME] for part in LOHA_PARTS}
    return {part: getattr(module, f"lokr_{part}")[ADAPTER_NAME] for part in LOKR_PARTS
            if ADAPTER_NAME in getattr(module, f"lokr_{part}", {})}


def _layer_of(module: torch.nn.Module):
    """The live adapter of one peft layer as an `Adapter` layer (detached fp32 copies)."""
    parts = {k: t.detach().float().cpu().clone() for k, t in _live_tensors(module).items()}
    if "down" in parts:
        alpha = float(module.lora_alpha[ADAPTER_NAME])
        if "magnitude" in parts:
            return DoraLayer(down=parts["down"], up=parts["up"], alpha=alpha, magnitude=parts["magnitude"].reshape(-1))
        return LoraLayer(down=parts["down"], up=parts["up"], alpha=alpha)
    alpha = float(module.alpha[ADAPTER_NAME])
    if ADAPTER_NAME in getattr(module, "hada_w1_a", {}):
        return LohaLayer(**parts, alpha=alpha)
    return LokrLayer(**{p: parts.get(p) for p in LOKR_PARTS}, alpha=alpha, rank=int(module.r[ADAPTER_NAME]))


def _component_modules(component: str, model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The LoRA-carrying modules of one component by their `Adapter` path (CLIP paths in one form)."""
    if component == "unet":
        return dict(_lora_modules(model))
    return {clip_model_path(name): module for name, module in _lora_modules(model)}


def _components(unet: torch.nn.Module, text_encoders: dict[str, torch.nn.Module] | None):
    return {"unet": unet, **(text_encoders or {})}


def extract_adapter(unet: torch.nn.Module, metadata: dict[str, str] | None = None,
                    text_encoders: dict[str, torch.nn.Module] | None = None) -> Adapter:
    """The live LoRA weights as an `Adapter` (detached fp32 copies).

    `text_encoders` maps a component name ("text_encoder", SDXL's "text_encoder_2") to a text encoder that
    carries a LoRA (network.text_encoder); its layers join the adapter under that component."""
    layers = {}
    for component, model in _components(unet, text_encoders).items():
        for name, module in _component_modules(component, model).items():
            layers[f"{component}.{name}"] = _layer_of(module)
    return Adapter(layers=layers, metadata=dict(metadata or {}))


def load_into(unet: torch.nn.Module, adapter: Adapter,
              text_encoders: dict[str, torch.nn.Module] | None = None) -> None:
    """Copy `adapter`'s weights into the live LoRA layers (same targets and ranks), e.g. to resume."""
    models = _components(unet, text_encoders)
    stray = {name.split(".", 1)[0] for name in adapter.layers} - set(models)
    if stray:
        raise SdloraError(f"the checkpoint has LoRA layers for {', '.join(sorted(stray))}, which this run does not "
                          f"train; was network.text_encoder changed since the checkpoint?")
    for component, model in models.items():
        live = _component_modules(component, model)
        wanted = adapter.component_layers(component)
        if set(live) != set(wanted):
            raise SdloraError(f"{component}: adapter layers do not match the network ({len(wanted)} vs {len(live)} "
                              f"modules); was network.targets or network.text_encoder changed since the checkpoint?")
        with torch.no_grad():
            for name, layer in wanted.items():
                params, tensors = _live_tensors(live[name]), layer.tensors()
                if set(params) != set(tensors) or any(params[k].numel() != t.numel() for k, t in tensors.items()):
                    have = _layer_of(live[name])
                    raise SdloraError(f"{component}.{name}: the checkpoint holds a {layer.kind} layer of rank "
                                      f"{layer.rank}, the network a {have.kind} layer of rank {have.rank}; was "
                                      f"network.type, network.rank or network.conv_rank changed since the checkpoint?")
                for part, param in params.items():
                    param.copy_(tensors[part].reshape(param.shape))


class DyLoraRanks:
    """DyLoRA (Valipour et al. 2023, arXiv 2210.07558, eq. 5 and its "frozen" update): each training step draws a
    rank b, a multiple of `unit` in [unit, rank] (as kohya's networks/dylora.py draws it), every LoRA layer computes
    h = W0·x + (alpha/b)·B[:, :b]·A[:b]·x, and only the b-th unit of rows (b-unit..b) is updated. So the first R
    rows, at scale alpha/R, are the rank-R LoRA that row R-1 was trained with: a truncated file is a good LoRA.

    The truncation is a mask on the output of A (scaled by rank/b, turning peft's alpha/rank into alpha/b). The
    freeze is exact: gradients of the other rows are masked, and `end_step` (after the optimizer step) puts back
    the values they had, so AdamW's moments and weight decay do not move them either. Between `begin_step()` and
    `end_step()` the drawn rank runs, otherwise (sampling, saving) the full rank.
    """

    def __init__(self, models: list[torch.nn.Module], rank: int, unit: int):
        self.rank, self.unit = rank, unit
        self.b = rank
        self.in_step = False  # between begin_step and end_step
        self.params: list[tuple[torch.nn.Parameter, int]] = []  # (A or B weight, its rank dim)
        self.saved: list[torch.Tensor] = []
        for model in models:
            for _, module in _lora_modules(model):
                module.lora_A[ADAPTER_NAME].register_forward_hook(self._truncate)
                for param, dim in ((module.lora_A[ADAPTER_NAME].weight, 0), (module.lora_B[ADAPTER_NAME].weight, 1)):
                    param.register_hook(self._grad_hook(dim, param.dim()))
                    self.params.append((param, dim))
        # On the LoRA's device and changed in place: a compiled step with CUDA graphs reads them by address, and a
        # CPU tensor in the graph would turn its CUDA graphs off (the compiled DyLoRA step ran at 0.60x LoRA's on
        # an H200 so, round five).
        device = self.params[0][0].device if self.params else None
        self.mask = torch.ones(rank, device=device)  # A's output: rank/b on rows < b, 0 after
        self.trained = torch.ones(rank, device=device)  # gradient: 1 on the rows b-unit..b, 0 elsewhere

    def _view(self, vector: torch.Tensor, dim: int, ndim: int, like: torch.Tensor) -> torch.Tensor:
        shape = [1] * ndim
        shape[dim] = -1
        return vector.to(like.device, like.dtype).view(shape)

    def _truncate(self, module, inputs, output):
        # A flag, not `b < rank`: a compiled step guards on what the hook branches on, and one flag keeps one
        # traced variant for every drawn b (the mask carries b).
        if not self.in_step:
            return None
        # A's output carries the rank in its last dim (Linear) or its channel dim (Conv2d).
        return output * self._view(self.mask, 1 if output.dim() == 4 else output.dim() - 1, output.dim(), output)

    def _grad_hook(self, dim: int, ndim: int):
        def hook(grad):
            return grad * self._view(self.trained, dim, ndim, grad)
        return hook

    def set_rank(self, b: int) -> None:
        self.b = b
        with torch.no_grad():
            self.mask.zero_()[:b] = self.rank / b
            self.trained.zero_()[b - self.unit:b] = 1.0

    def begin_step(self) -> int:
        """Draw this step's b from the global torch RNG (seeded per step, so a resumed run draws the same)."""
        self.set_rank(self.unit * (1 + int(torch.randint(self.rank // self.unit, ()).item())))
        with torch.no_grad():  # one multi-tensor copy, not a kernel launch per tensor
            self.saved = torch._foreach_mul([param.detach() for param, _ in self.params], 1.0)
        self.in_step = True
        return self.b

    def end_step(self) -> None:
        """After the optimizer step: every row but this step's unit gets its value back; full rank again."""
        with torch.no_grad():
            frozen = 1.0 - self.trained  # 1 on the rows to put back
            for (param, dim), before in zip(self.params, self.saved):
                # lerp with weight exactly 1 returns `before` and with 0 `param`, bit for bit: one kernel a tensor.
                param.lerp_(before, self._view(frozen, dim, param.dim(), param))
        self.saved = []
        self.in_step = False
        self.set_rank(self.rank)
        self.trained.fill_(1.0)


def dylora_ranks(unet: torch.nn.Module, network: NetworkConfig) -> DyLoraRanks | None:
    """The rank sampler of a DyLoRA network (None for every other network.type)."""
    return DyLoraRanks([unet], network.rank, network.dylora_unit) if network.type == "dylora" else None

