"""Causal attention with an optional sliding window, on whatever the device offers.

Inputs are (B, T, H, D) like FlashAttention's; a query at position i sees keys j with i - window <= j <= i.
- Full causal windows use PyTorch's SDPA (flash / memory-efficient kernels on GPUs).
- Sliding windows on CUDA use FlexAttention with a block mask, so blocks outside the window are skipped rather
  than computed and masked (a dense masked SDPA would spend the full T² on every short-window layer).
- Elsewhere (CPU, MPS) sliding windows use SDPA with an explicit boolean mask: correct, not fast.

`cached_attention` is the inference variant: T new queries at absolute positions pos..pos+T-1 against every key
held in a KV cache (the prefix, then the new ones). Keys older than the earliest query's window are sliced off
first, so a decode step on a short-window layer reads only its window of the cache.
"""

from functools import lru_cache

import torch
import torch.nn.functional as F


@lru_cache(maxsize=32)
def _window_mask(T: int, window: int, device: torch.device) -> torch.Tensor:
    i = torch.arange(T, device=device)[:, None]
    j = torch.arange(T, device=device)[None, :]
    return (j <= i) & (j >= i - window)


@lru_cache(maxsize=32)
def _window_block_mask(T: int, window: int, device: torch.device):
    from torch.nn.attention.flex_attention import create_block_mask

    def sliding_causal(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & (kv_idx >= q_idx - window)

    return create_block_mask(sliding_causal, B=None, H=None, Q_LEN=T, KV_LEN=T, device=device)


def attention(q, k, v, window: int):
    T = q.size(1)
    gqa = q.size(2) != k.size(2)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, D)
    if window >= T - 1:
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    elif q.is_cuda:
        from torch.nn.attention.flex_attention import flex_attention
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
