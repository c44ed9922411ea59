"""fp8 training matmuls (train base --fp8): tensorwise dynamic scaling, nanochat's recipe (reference B8), which its
log measured at +17% tok/s and 9 GB less memory on d26 (B11).

A Linear with fp8 on multiplies on the GPU's fp8 tensor cores (H100/H200, Ada): its input and weight are each
scaled so the tensor's largest magnitude lands on e4m3's largest value, cast, and multiplied by torch._scaled_mm,
which multiplies the inverse scales back in its fp32 accumulator. The backward does the same with the incoming
gradient in e5m2 (more range, less precision: gradients span more magnitudes than activations). The backward keeps
only the fp8 copies of input and weight, which is where the memory goes.

Master weights stay fp32 and checkpoints are unchanged. Without gradients (evaluation, samples, chat, serving) the
ordinary matmul runs, so fp8 only ever touches training steps. Which layers: the transformer's matrices whose
sides divide by 16 (cuBLAS's rule) and are at least 128 (below that, casting costs more than it saves), as nanochat;
not the output head, whose logits feed the loss directly.
"""

import torch
import torch.nn as nn

from primechat.common import UserError

E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2


def quantize(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """x cast to fp8 with one scale for the whole tensor, and the inverse scale that _scaled_mm applies."""
    top = torch.finfo(dtype).max
    scale = top / x.detach().abs().max().float().clamp(min=1e-12)
    return (x.float() * scale).clamp(-top, top).to(dtype), scale.reciprocal()


def scaled_matmul(a, b, a_inv_scale, b_inv_scale, out_dtype, fast_accum=False):
    """a @ b from fp8 operands; cuBLAS wants a row-major and b column-major (a no-op when they already are)."""
    return torch._scaled_mm(a.contiguous(), b.t().contiguous().t(), scale_a=a_inv_scale, scale_b=b_inv_scale,
                            out_dtype=out_dtype, use_fast_accum=fast_accum)


class Fp8Matmul(torch.autograd.Function):
    """y = x @ wᵀ for x (M, K) in the activation dtype and w (N, K) the fp32 master weight."""

    @staticmethod
    def forward(ctx, x, weight):
        x8, x_inv = quantize(x, E4M3)
        w8, w_inv = quantize(weight, E4M3)
        ctx.save_for_backward(x8, x_inv, w8, w_inv)
        ctx.weight_dtype = weight.dtype
        return scaled_matmul(x8, w8.t(), x_inv, w_inv, x.dtype, fast_accum=True)

    @staticmethod
    def backward(ctx, grad):
        x8, x_inv, w8, w_inv = ctx.saved_tensors
        g8, g_inv = quantize(grad, E5M2)
        grad_x = scaled_matmul(g8, w8, g_inv, w_inv, grad.dtype)  # (M, N) @ (N, K)
        grad_w = scaled_matmul(g8.t(), x8, g_inv, x_inv, ctx.weight_dtype)  # (N, M) @ (M, K), in fp32
        return grad_x, grad_w


def fp8_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    y = Fp8Matmul.apply(x.reshape(-1, x.size(-1)), weight)
    return y.view(*x.shape[:-1], weight.size(0))


def check_device(device: torch.device, tokens_per_pass: int):
    """fp8 needs fp8 tensor cores (compute capability 8.9+). CPUs run it too (slowly), which is how it is tested."""
    if device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 9):
        raise UserError(f"--fp8 needs an H100/H200 or Ada GPU (compute capability 8.9+), not "
                        f"{torch.cuda.get_device_name(device)}: drop --fp8")
    if device.type not in ("cuda", "cpu"):
        raise UserError(f"--fp8 runs on CUDA GPUs (and CPUs, for testing), not {device.type}: drop --fp8")
    if tokens_per_pass % 16:
        raise UserError(f"--fp8 needs device batch × seq len ({tokens_per_pass}) to be a multiple of 16")


def enable_fp8(model: nn.Module) -> int:
    """Switch the eligible matrices of model.transformer.h to fp8 matmuls; returns how many."""
    count = 0
    for module in model.transformer.h.modules():
        if isinstance(module, nn.Linear) and all(n % 16 == 0 and n >= 128 for n in module.weight.shape):
            module.fp8 = True
            count += 1
    return count
