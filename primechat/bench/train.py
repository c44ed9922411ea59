"""`primechat bench train --depth D`: training throughput (tok/s), MFU and peak memory of the real training step.

Random tokens stand in for data (the loader is not what is measured), the model, optimizer, dtype, attention,
fp8 and torch.compile are exactly those of `primechat train base`. The first --warmup steps (compilation, allocator
warm-up) are not timed. MFU is against the device's dense bf16 peak (common.PEAK_BF16_FLOPS), as nanochat reports
it. Every run trains on the same random batch from the same seed, so the last loss is a cross-check between attention
backends, fp8 and compile: they should agree to a few hundredths.
"""

import time

import torch

from primechat.common import UserError, compute_dtype, compute_init, peak_flops
from primechat.fp8 import check_device as check_fp8_device, enable_fp8
from primechat.model import GPT, config_for_depth
from primechat.optim import build_optimizer
from primechat.train.loop import add_speed_arguments, training_model


def add_arguments(p):
    p.add_argument("--depth", type=int, default=12, help="model depth")
    p.add_argument("--vocab-size", type=int, default=32768, help="vocabulary size")
    p.add_argument("--max-seq-len", type=int, default=2048, help="context length")
    p.add_argument("--window-pattern", default="SSSL", help="attention windows, as in train base")
    p.add_argument("--device-batch-size", type=int, default=32, help="rows per step")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--fp8", action="store_true", help="fp8 matmuls, as train base --fp8")
    add_speed_arguments(p)
    p.add_argument("--device-type", default="", help="cuda|cpu|mps (default: autodetect)")


def main(args):
    if args.steps < 1 or args.warmup < 0 or args.device_batch_size < 1 or args.max_seq_len < 1:
        raise UserError("--steps, --device-batch-size and --max-seq-len must be positive, --warmup at least 0")
    device, _, _ = compute_init(args.device_type)
    config = config_for_depth(args.depth, args.vocab_size, args.max_seq_len, window_pattern=args.window_pattern)
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device=device)
    model.init_weights()
    model.compute_dtype = compute_dtype(device.type)
    optimizer = build_optimizer(model)
    if args.fp8:
        check_fp8_device(device, args.device_batch_size * args.max_seq_len)
        enable_fp8(model)
    train_model, attention = training_model(model, args, device)
    tokens = torch.randint(0, args.vocab_size, (args.device_batch_size, args.max_seq_len + 1), device=device)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]

    def step():
        loss = train_model(inputs, targets)
        loss.backward()
        optimizer.step()
        model.zero_grad(set_to_none=True)
        return loss.item()

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    losses = [step() for _ in range(args.steps)]
    dt = (time.perf_counter() - t0) / args.steps
    tok_per_sec = args.device_batch_size * args.max_seq_len / dt
    achieved = model.estimate_flops() * tok_per_sec
    peak = peak_flops(device)
    mfu = f"{100 * achieved / peak:.1f}%" if peak else "-"  # no peak is known for CPUs
    memory = f"{torch.cuda.max_memory_allocated() / 2 ** 30:.1f} GiB" if device.type == "cuda" else "-"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    dtype = str(model.compute_dtype).removeprefix("torch.")
    print("| device | depth | params | batch × seq | dtype | attention | compile | step ms | tok/s | TFLOP/s | MFU | "
          "peak memory | last loss |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {name} | {args.depth} | {model.num_params()['total'] / 1e6:.1f}M | {args.device_batch_size} × "
          f"{args.max_seq_len} | {dtype}{' + fp8' if args.fp8 else ''} | {attention} | "
          f"{'yes' if train_model is not model else 'no'} | {dt * 1000:.0f} | {tok_per_sec:,.0f} | "
          f"{achieved / 1e12:.3f} | {mfu} | {memory} | {losses[-1]:.4f} |")
