"""Causal attention with an optional sliding window, on whatever the device offers.

Inputs are (B, T, H, D) like FlashAttention's; a query at position i sees keys j with i - window <= j <= i.
Training picks one implementation with `use_backend` (train base's --attention):
- fa3: FlashAttention-3, which nanochat trains with (reference B8). It is not on PyPI as a wheel for every torch and
  CUDA, so like nanochat we fetch a prebuilt kernel from the Hugging Face Hub at run time with the `kernels`
  package (`pip install 'primechat[gpu]'`): kernels-community/flash-attn3, built and signed by Hugging Face. It skips
  the blocks outside a sliding window by itself. bf16/fp16 on CUDA only.
- flex: PyTorch's FlexAttention with a block mask, so blocks outside a window are skipped rather than computed and
  masked; full-context layers use SDPA (flash kernels). The fallback on GPUs where FA3 cannot be had (no network,
  no kernel build for this torch or GPU), for compiled models only: the same process's uncompiled forwards (task
  accuracies during mid/SFT) take SDPA, as eager FlexAttention would build the whole score matrix. FlexAttention
  has no backward on CPU.
- sdpa: SDPA everywhere, sliding windows with an explicit boolean mask: correct, not fast (a dense mask spends the
  full T² on every short-window layer). What CPU and MPS use, and evaluation and serving (any length, no compiling).
"auto" takes the first of these that works on the device.

`cached_attention` is the inference variant: T new queries at absolute positions pos..pos+T-1 against every key
held in a KV cache (the prefix, then the new ones). Keys older than the earliest query's window are sliced off
first, so a decode step on a short-window layer reads only its window of the cache.
"""

from functools import lru_cache

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.compiler import is_compiling
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from primechat.common import UserError, print0

BACKENDS = ("auto", "fa3", "flex", "sdpa")
FA3_KERNEL = "kernels-community/flash-attn3"
_backend = "sdpa"  # until a trainer calls use_backend; evaluation and serving keep it (any length, no compiling)
_fa3 = None  # the FlashAttention-3 module once loaded


def load_fa3():
    """FlashAttention-3 from the Hub through `kernels`; raises RuntimeError saying why it cannot be had."""
    global _fa3
    if _fa3 is None:
        try:
            from kernels import get_kernel
        except ImportError:
            raise RuntimeError("the kernels package is not installed (pip install 'primechat[gpu]')") from None
        try:
            _fa3 = get_kernel(FA3_KERNEL, version=1)
        except Exception as e:  # no network, no build for this torch/CUDA/GPU, …: all mean "use the fallback"
            raise RuntimeError(f"{FA3_KERNEL} did not load: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    return _fa3


def use_backend(choice: str, device: torch.device, dtype: torch.dtype, compiled: bool) -> str:
    """Select the training attention of this process (one of BACKENDS) and return the one in use. "auto" says why
    when a CUDA GPU cannot have FlashAttention-3. FlexAttention is only fast inside torch.compile (eager, it
    materialises the whole T × T score matrix), so it needs a compiled model."""
    global _backend
    if choice not in BACKENDS:
        raise UserError(f"--attention {choice} is not one of {', '.join(BACKENDS)}")
    if choice in ("fa3", "flex") and device.type != "cuda":
        raise UserError(f"--attention {choice} needs a CUDA GPU, not {device.type}: use --attention auto")
    if choice == "flex" and not compiled:
        raise UserError("--attention flex is only fast inside torch.compile: drop --compile off, or use "
                        "--attention sdpa")
    _backend = "sdpa" if choice == "auto" else choice
    if choice in ("auto", "fa3") and device.type == "cuda":
        # Every process must train with the same attention (the same compiled graphs, the same numerics), so one
        # process that cannot load the kernel (a node without the Hub, say) decides for all of them.
        failures = _fa3_failures(dtype)
        if failures:
            if choice == "fa3":
                raise UserError(f"--attention fa3: {failures[0]}; use --attention auto to fall back")
            _backend = "flex" if compiled else "sdpa"
            print0(f"FlashAttention-3 is unavailable ({failures[0]}): using {_backend}")
        else:
            _backend = "fa3"
    return _backend


def _fa3_failures(dtype: torch.dtype) -> list[str]:
    """Why FlashAttention-3 cannot train here: this process's reason, or under torchrun every process's, each
    naming its rank. Empty when every process can."""
    try:
        if dtype not in (torch.bfloat16, torch.float16):
            raise RuntimeError(f"it needs bf16 or fp16, not {str(dtype).removeprefix('torch.')}")
        load_fa3()
        reason = None
    except RuntimeError as e:
        reason = str(e)
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [reason] if reason else []
    reasons = [None] * dist.get_world_size()
    dist.all_gather_object(reasons, reason)
    return [f"rank {rank}: {r}" for rank, r in enumerate(reasons) if r]


@lru_cache(maxsize=4)  # training's few lengths; evaluation's many each build their own (T² bytes each)
def _window_mask(T: int, window: int, device: torch.device) -> torch.Tensor:
    i = torch.arange(T, device=device)[:, None]
    j = torch.arange(T, device=device)[None, :]
    return (j <= i) & (j >= i - window)


def _window_block_mask(T: int, window: int, device: torch.device):
    """Built inside the compiled graph, which costs a few microseconds per step (dynamo would ignore a cache)."""
    def sliding_causal(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & (kv_idx >= q_idx - window)

    return create_block_mask(sliding_causal, B=None, H=None, Q_LEN=T, KV_LEN=T, device=device)


def attention(q, k, v, window: int):
    T = q.size(1)
    full = window >= T - 1
    if _backend == "fa3":
        y = _fa3.flash_attn_func(q, k, v, causal=True, window_size=(-1 if full else window, 0))
        return y[0] if isinstance(y, tuple) else y  # some builds also return the softmax log-sum-exp
    gqa = q.size(2) != k.size(2)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, D)
    if full:
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    elif _backend == "flex" and is_compiling():  # one fused kernel that skips the blocks outside the window
        y = flex_attention(q, k, v, block_mask=_window_block_mask(T, window, q.device), enable_gqa=gqa)
    else:
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=_window_mask(T, window, q.device), enable_gqa=gqa)
    return y.transpose(1, 2)


def cached_attention(q, k, v, pos: int, window: int):
    """q: (B, T, H, D) at positions pos.., k and v: (B, pos + T, H_kv, D), the cache up to and including q's keys."""
    T = q.size(1)
    start = max(0, pos - window)
    k, v = k[:, start:], v[:, start:]
    gqa = q.size(2) != k.size(2)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if T == 1:  # one query: every key kept is inside its window and not in its future
        y = F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
    else:  # a chunk on top of a prefix: the prefix within the window, causal inside the chunk
        i = torch.arange(pos, pos + T, device=q.device)[:, None]
        j = torch.arange(start, pos + T, device=q.device)[None, :]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=(j <= i) & (j >= i - window), enable_gqa=gqa)
    return y.transpose(1, 2)
