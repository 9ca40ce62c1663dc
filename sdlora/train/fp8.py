"""FP8 frozen base weights (train.base_precision: fp8): the UNet's frozen Linear layers run their matmuls in float8.

A LoRA run never trains the base weights, so each frozen Linear needs only two products a step: the forward
(x @ W^T) and the input gradient of the backward (g @ W); no weight gradient. Both run here as float8 e4m3
products on the tensor cores (`torch._scaled_mm`: 1.7x the bf16 rate measured on an H200), with row-wise scales:
- the weight is quantized once, when the run starts, in the two layouts the products read: W with one scale per
  output channel (forward) and W^T with one per input channel (backward); the bf16 weight is dropped, so the
  layer's memory stays 2 bytes a parameter;
- activations and output gradients are quantized on the fly with one scale per row (token), which
  torch.compile fuses into the neighbouring kernels.
The LoRA path (peft's lora_A/lora_B beside the base layer) stays as it was, in bf16 under autocast with fp32
weights; convolutions and attention's own products stay bf16. Layers whose sides are not multiples of 16 (what
the float8 kernels need) stay bf16.

Needs a GPU with float8 tensor cores: compute capability 8.9 (Ada) or newer (Hopper: 9.0). Measured on an H200
for SD 1.5 it is 5-7% slower than bf16 (docs/PERFORMANCE.md): Linear layers are ~27% of the step's FLOPs, and
quantizing their inputs and gradients costs more than the faster products save.
"""

from __future__ import annotations

import torch

from sdlora.errors import SdloraError

E4M3_MAX = float(torch.finfo(torch.float8_e4m3fn).max)  # 448
MIN_CAPABILITY = (8, 9)


def check_fp8_supported(device: torch.device, mixed_precision: str) -> None:
    """A one-line SdloraError naming train.base_precision unless this device and precision can run fp8."""
    if mixed_precision != "bf16":
        raise SdloraError(f"train.base_precision: fp8 needs train.mixed_precision: bf16 (the LoRA path and "
                          f"activations), not {mixed_precision}; set it or use base_precision: auto")
    if device.type != "cuda":
        raise SdloraError("train.base_precision: fp8 needs a CUDA GPU with float8 tensor cores (Ada, Hopper or "
                          "newer); training here is on the CPU, use base_precision: auto")
    capability = torch.cuda.get_device_capability(device)
    if tuple(capability) < MIN_CAPABILITY:
        name = torch.cuda.get_device_name(device)
        raise SdloraError(f"train.base_precision: fp8 needs float8 tensor cores (compute capability 8.9+: Ada, "
                          f"Hopper or newer); {name} is {capability[0]}.{capability[1]}, use base_precision: auto")


def quantize_rows(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(e4m3 values, float32 scale per row, shape (rows, 1)) of a 2-D tensor, so that values * scale ~ t."""
    amax = t.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12)
    scale = amax / E4M3_MAX
    return (t.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn), scale


@torch.library.custom_op("sdlora::fp8_matmul", mutates_args=())
def fp8_matmul(x: torch.Tensor, xq: torch.Tensor, x_scale: torch.Tensor, w: torch.Tensor, w_scale: torch.Tensor,
               wt: torch.Tensor, wt_scale: torch.Tensor) -> torch.Tensor:
    """(rows, K) @ W^T from the row-quantized input `xq`/`x_scale` and W (N, K) with its per-row scale, in bf16.

    `x` (the bf16 input) is only there for autograd: its gradient g @ W is the same product with the other
    weight layout, `wt` (K, N). A custom op rather than an autograd.Function, so that torch.compile's
    AOTAutograd cache keeps the compiled graphs between processes (it bypasses graphs with an
    autograd.Function: the fp8 runs then compiled again at every start, ~70 s on an H200)."""
    rows = xq.shape[0]
    xq, x_scale = _row_major(xq), _row_major(x_scale)
    return torch._scaled_mm(xq, w.t(), scale_a=x_scale, scale_b=w_scale.t(), out_dtype=torch.bfloat16)[:rows]


def _row_major(t: torch.Tensor) -> torch.Tensor:
    """`t` (rows, K) as cuBLASLt's float8 product takes its first operand: dense rows. A single row reads as
    either layout, and the product (1 x N) too, which cuBLASLt refuses ("Only multiplication of row-major and
    column-major matrices is supported by cuBLASLt": batch 1's time embedding, eager, on an H200, round five), so
    a lone row goes in twice and the caller keeps the first row of the result."""
    if t.shape[0] == 1:
        return t.expand(2, -1).contiguous()
    return t if t.stride() == (t.shape[1], 1) else t.contiguous()


@fp8_matmul.register_fake
def _(x, xq, x_scale, w, w_scale, wt, wt_scale):
    return xq.new_empty((xq.shape[0], w.shape[0]), dtype=torch.bfloat16)


def _setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[3:])


def _backward(ctx, grad):
    w, w_scale, wt, wt_scale = ctx.saved_tensors
    gq, g_scale = quantize_rows(grad)
    grad_in = fp8_matmul(grad, gq, g_scale, wt, wt_scale, w, w_scale)
    return grad_in, None, None, None, None, None, None


fp8_matmul.register_autograd(_backward, setup_context=_setup)


class Fp8FrozenLinear(torch.nn.Module):
    """A frozen nn.Linear whose products run in float8 (module docstring). Output in bf16."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        w, w_scale = quantize_rows(weight)  # per output channel
        wt, wt_scale = quantize_rows(weight.t().contiguous())  # per input channel
        self.register_buffer("w", w)
        self.register_buffer("w_scale", w_scale)
        self.register_buffer("wt", wt)
        self.register_buffer("wt_scale", wt_scale)
        bias = None if linear.bias is None else linear.bias.detach().to(torch.bfloat16)
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.to(torch.bfloat16).reshape(-1, x.shape[-1])
        # Quantized outside the op, as plain tensor code that torch.compile fuses with its neighbours.
        xq, x_scale = quantize_rows(rows.detach())
        out = fp8_matmul(rows, xq, x_scale, self.w, self.w_scale, self.wt, self.wt_scale)
        out = out.reshape(*x.shape[:-1], self.out_features)
        return out if self.bias is None else out + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp8 e4m3 row-wise"


def convertible(module: torch.nn.Module) -> bool:
    return (type(module) is torch.nn.Linear and not module.weight.requires_grad
            and module.in_features % 16 == 0 and module.out_features % 16 == 0)


def convert_frozen_linears(model: torch.nn.Module) -> int:
    """Replace every frozen nn.Linear of `model` (peft's base layers included, its trainable lora_A/lora_B not)
    by an Fp8FrozenLinear, in place, on the layer's device; returns how many were replaced."""
    targets = [(parent, name, child) for parent in model.modules()
               for name, child in parent.named_children() if convertible(child)]
    for parent, name, child in targets:
        setattr(parent, name, Fp8FrozenLinear(child))
    return len(targets)
