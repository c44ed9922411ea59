"""Inference speed: prefill tok/s, time to first token and decode tok/s per batch size, against the memory-bandwidth
ceiling.

Decoding one token per row reads every matmul weight once plus each row's KV cache (within each layer's window), so
a step cannot beat (weight bytes + rows × KV bytes) ÷ memory bandwidth. On GPUs with a known peak bandwidth the
ceiling and the achieved share of it (MBU) are printed; elsewhere (CPU, unknown GPUs) the bytes per step and the
achieved GB/s. The loop is the Engine's (prefill at batch 1, cache copied into the rows, one sampled id to the host
per step) without its per-row tool/stop bookkeeping, so that every row decodes the full --decode-tokens.
The last line printed is one JSON document with every figure.
"""

import json
import statistics
import time

import torch

from primechat.common import UserError, compute_init, human_bytes, peak_bandwidth

PARAGRAPH = ("The history of computing is a story of ideas that became machines and machines that changed ideas. "
             "Early calculators were mechanical; then came relays, vacuum tubes, transistors and integrated circuits, "
             "each making the last look slow. ")


def build_model(args, device):
    """(model, prompt ids, description): a checkpoint, or a random model of --depth with random prompt ids."""
    from primechat.common import compute_dtype
    from primechat.model import GPT, config_for_depth
    from primechat.train.checkpoint import load_model

    if args.depth is None:
        model, tokenizer, meta = load_model(args.source, args.model_tag, args.step, device)
        ids = tokenizer.encode(PARAGRAPH * (1 + args.prompt_tokens * 4 // len(PARAGRAPH)), prepend="<|bos|>")
        return model, ids[:args.prompt_tokens], f"{args.source} d{model.config.n_layer} step {meta['step']}"
    config = config_for_depth(args.depth, vocab_size=32768, sequence_len=args.sequence_len)
    with torch.device(device):
        model = GPT(config)
        model.init_weights()
    model.compute_dtype = compute_dtype(device.type)
    model.prepare_for_inference()  # as a loaded checkpoint is: bf16 weights on GPUs, which byte_counts assumes
    ids = torch.randint(0, config.vocab_size, (args.prompt_tokens,), generator=torch.Generator().manual_seed(0))
    return model, ids.tolist(), f"random d{args.depth}"


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def byte_counts(model, context: int) -> tuple[int, int]:
    """(matmul weight bytes read per decode step, KV bytes read per row per step at this context length)."""
    c = model.config
    weights = sum(m.weight.numel() * m.weight.element_size() for m in model.modules()
                  if isinstance(m, torch.nn.Linear))
    dtype_size = torch.tensor([], dtype=model.activation_dtype(model.lm_head.weight.device)).element_size()
    per_token = 2 * c.n_kv_head * c.head_dim * dtype_size  # k and v of one layer
    kv = sum(per_token * min(context, window + 1) for window in model.windows)
    return weights, kv


@torch.inference_mode()
def measure(model, ids: list[int], batch_sizes: list[int], decode_tokens: int, device) -> dict:
    from primechat.engine import KVCache, sample_next_token

    dtype = model.activation_dtype(device)
    prompt = torch.tensor([ids], dtype=torch.long, device=device)
    rng = torch.Generator(device=device).manual_seed(0)

    def prefill():
        cache = KVCache(model.config, 1, len(ids), dtype, device)
        logits = model(prompt, kv_cache=cache, at=-1)[:, -1, :]
        return cache, logits

    prefill()  # warm-up
    sync(device)
    start = time.perf_counter()
    prefill()
    sync(device)
    prefill_s = time.perf_counter() - start
    result = {"prefill": {"tokens": len(ids), "seconds": prefill_s, "tok_per_s": len(ids) / prefill_s}, "sweep": []}

    for batch in batch_sizes:
        for timed in (False, True):  # the first pass warms up the allocator and kernels for this batch size
            sync(device)
            start = time.perf_counter()
            cache, logits = prefill()
            cache = cache.expand(batch, len(ids) + decode_tokens)
            next_ids = sample_next_token(logits.expand(batch, -1), rng, temperature=1.0)
            next_ids.tolist()
            ttft = time.perf_counter() - start
            steps = []
            for _ in range(decode_tokens if timed else min(8, decode_tokens)):
                start = time.perf_counter()
                logits = model(next_ids[:, None], kv_cache=cache)[:, -1, :]
                next_ids = sample_next_token(logits, rng, temperature=1.0)
                next_ids.tolist()  # the Engine's one host sync per step
                steps.append(time.perf_counter() - start)
        result["sweep"].append({"batch": batch, "ttft_s": ttft, "tpot_s": statistics.median(steps),
                                "tok_per_s": batch * len(steps) / sum(steps), "steps": len(steps)})
    return result


def add_arguments(parser) -> None:
    parser.add_argument("-i", "--source", choices=["base", "mid", "sft", "rl"], default="base",
                        help="which stage's checkpoint")
    parser.add_argument("-g", "--model-tag", help="checkpoint tag (default: the stage's deepest d<N>)")
    parser.add_argument("-s", "--step", type=int, help="checkpoint step (default: the latest)")
    parser.add_argument("--depth", type=int, help="benchmark a random model of this depth instead of a checkpoint")
    parser.add_argument("--sequence-len", type=int, default=2048, help="context of the --depth model")
    parser.add_argument("--prompt-tokens", type=int, default=512, help="prompt length")
    parser.add_argument("--decode-tokens", type=int, default=128, help="tokens decoded per row")
    parser.add_argument("--batch-sizes", default="1,8,32", help="comma-separated rows decoded together")
    parser.add_argument("--device-type", choices=["cuda", "mps", "cpu"], help="default: autodetect")


def main(args) -> None:
    try:
        batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    except ValueError:
        raise UserError(f"--batch-sizes {args.batch_sizes!r} must be whole numbers separated by commas") from None
    if min(batch_sizes) < 1 or args.prompt_tokens < 1 or args.decode_tokens < 1:
        raise UserError("--batch-sizes, --prompt-tokens and --decode-tokens must be positive")
    device, _, _ = compute_init(args.device_type)
    model, ids, what = build_model(args, device)
    if len(ids) + args.decode_tokens > model.cos.size(1):
        raise UserError(f"--prompt-tokens + --decode-tokens must stay within {model.cos.size(1)} positions")
    dtype = str(model.activation_dtype(device)).removeprefix("torch.")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    weights, kv_row = byte_counts(model, len(ids) + args.decode_tokens // 2)
    bandwidth = peak_bandwidth(device)
    print(f"{what} on {name} ({dtype}): {model.num_params()['total']:,} parameters, {human_bytes(weights)} of matmul "
          f"weights, {human_bytes(kv_row)} of KV cache read per row per step at context "
          f"{len(ids) + args.decode_tokens // 2}")
    if bandwidth:
        print(f"batch-1 decode ceiling at {bandwidth / 1e12:.2f} TB/s: {bandwidth / (weights + kv_row):,.0f} tok/s")

    result = measure(model, ids, batch_sizes, args.decode_tokens, device)
    p = result["prefill"]
    print(f"prefill {p['tokens']} tokens: {p['seconds'] * 1000:.1f} ms, {p['tok_per_s']:,.0f} tok/s")
    print(f"{'batch':>5} {'TTFT ms':>9} {'step ms':>8} {'tok/s':>9} {'MB/step':>9} {'GB/s':>7}"
          + (f" {'ceiling tok/s':>14} {'MBU':>5}" if bandwidth else ""))
    for row in result["sweep"]:
        step_bytes = weights + row["batch"] * kv_row
        achieved = step_bytes / row["tpot_s"]
        row.update(bytes_per_step=step_bytes, achieved_bytes_per_s=achieved)
        line = (f"{row['batch']:>5} {row['ttft_s'] * 1000:>9.1f} {row['tpot_s'] * 1000:>8.2f} {row['tok_per_s']:>9,.0f} "
                f"{step_bytes / 1e6:>9.1f} {achieved / 1e9:>7.1f}")
        if bandwidth:
            row.update(ceiling_tok_per_s=row["batch"] * bandwidth / step_bytes, mbu=achieved / bandwidth)
            line += f" {row['ceiling_tok_per_s']:>14,.0f} {row['mbu']:>5.0%}"
        print(line)
    result.update(model=what, device=name, dtype=dtype, weight_bytes=weights, kv_bytes_per_row=kv_row,
                  peak_bandwidth=bandwidth)
    print(json.dumps(result))


if __name__ == "__main__":
    from primechat.cli import run_module
    run_module(add_arguments, main)
