"""Bits per byte: the tokenizer-independent loss used during training and by `primechat eval base`.

Per-token cross-entropy (nats) is summed over targets that stand for real text (byte length > 0, so special tokens
and ignored -1 targets are left out) and divided by ln 2 × the number of bytes those targets encode. Sums are
all-reduced across ranks before dividing, so every rank returns the same number (nanochat A7).
"""

import math

import torch
import torch.distributed as dist

from primechat.common import progress


@torch.no_grad()
def evaluate_bpb(model, batches, steps: int, token_bytes: torch.Tensor, abandon=lambda: False) -> float | None:
    """batches yields (inputs, targets); token_bytes[id] = UTF-8 byte length of token id (0 for specials).
    abandon() is asked before each batch (a stop signal arrived: a long CPU evaluation should not hold up the save);
    when it says yes on any rank, every rank returns None."""
    device = token_bytes.device
    total_nats = torch.zeros((), dtype=torch.float64, device=device)
    total_bytes = torch.zeros((), dtype=torch.int64, device=device)
    abandoned = torch.zeros((), dtype=torch.int64, device=device)
    for _ in progress(range(steps), desc="validation", unit="batch", leave=False):
        if abandon():
            abandoned.fill_(1)
            break
        inputs, targets = next(batches)
        loss = model(inputs, targets, loss_reduction="none").view(-1)
        flat = targets.reshape(-1)
        nbytes = torch.where(flat >= 0, token_bytes[flat.clamp(min=0)], 0)
        counted = nbytes > 0
        total_nats += loss[counted].double().sum()
        total_bytes += nbytes[counted].sum()
    if dist.is_available() and dist.is_initialized():  # the same collectives on every rank, abandoned or not
        dist.all_reduce(total_nats)
        dist.all_reduce(total_bytes)
        dist.all_reduce(abandoned, op=dist.ReduceOp.MAX)
    if abandoned.item():
        return None
    if total_bytes.item() == 0:
        return float("inf")
    return total_nats.item() / (math.log(2) * total_bytes.item())
