"""Plan a run before paying for it: `primechat plan --depth 20 --gpus 8xH100` (or `--budget 100`).

What a base-training run will be (parameters, FLOPs, tokens, steps, batch), what it needs (pretraining shards and
disk, memory per GPU and the largest device batch that fits) and what it costs (hours and dollars for base training
and, estimated, for the whole pipeline). The model and the plan come from `primechat.train.base` itself
(`model_config`, `make_plan` on a model built on the meta device), so planner and trainer cannot disagree.
`--arch nanochat-2025` plans nanochat's Oct 2025 model and horizon rule instead, to check against its published runs
(`train base --arch nanochat-2025` trains that model to primechat's horizon: not the same run).

Memory and time are estimates. Memory counts weights, gradients, optimizer state and what autograd keeps for the
backward pass (calibrated on nanochat's published device batches); time divides the FLOPs by an MFU figure whose
source is printed with it, and counts validation as train base's own expected time does. Nothing here touches a GPU.
"""

import argparse
import math
from dataclasses import dataclass

import torch

from primechat.common import (CPU_RATE, GPU_HOURLY_PRICE, PEAK_BF16_FLOPS, UserError, aligned_rows,
                              gpu_hourly_price, hours_text, human_bytes, measured_mfu, physical_ram)
from primechat.model import ARCHES, GPT, GPTConfig
from primechat.optim import build_optimizer
from primechat.train import base

GIB = 2 ** 30


@dataclass(frozen=True)
class GPU:
    name: str
    memory_gib: float  # what torch.cuda reports as total memory
    datasheet: str  # its key in common's PEAK_BF16_FLOPS and GPU_HOURLY_PRICE tables


# H100's memory is from a nanochat OOM report on 8×H100 80GB ("GPU has 79.19 GiB total", karpathy/nanochat#443);
# the others are their nominal sizes less what the driver keeps, so approximate. H100 means the SXM part.
GPUS = [GPU("H100", 79.19, "H100"), GPU("H200", 139.8, "H200"), GPU("B200", 178.4, "B200"),
        GPU("A100-80GB", 79.15, "A100"), GPU("A100-40GB", 39.39, "A100"), GPU("L40S", 44.4, "L40S"),
        GPU("L4", 22.0, "L4"), GPU("A10G", 22.0, "A10G"), GPU("RTX4090", 23.6, "RTX 4090"),
        GPU("RTX3090", 23.7, "RTX 3090")]

# The whole pipeline: nanochat's Oct 2025 d20 speedrun took 3h51m on 8×H100 (its report card), of which base training
# was 11,219,763,200 tokens at 3.4918e9 FLOPs/token plus its validation (87 × 20·524,288 tokens, forward only): ~2.8 h
# at its d32 run's MFU (below), so ~1.1 h went to everything else (tokenizer, evaluations, mid-training, SFT). Those
# stages see a fixed amount of data whatever the model, so their time scales with FLOPs per token: they are carried as
# a fixed number of extra tokens at the planned model's cost, after the planned base training (validation included).
SPEEDRUN_SECONDS, SPEEDRUN_GPUS = 3 * 3600 + 51 * 60, 8
SPEEDRUN_TOKENS, SPEEDRUN_FLOPS_PER_TOKEN = 11_219_763_200, 3.4918e9

# Pretraining shards, nanochat's numbers (its speedrun.sh): ~4.8 characters per token, a shard holds ~250M characters
# in ~100 MB. primechat's loader packs whole documents into rows and crops what does not fit, which nanochat measured
# as ~35% of tokens at sequence length 2048 (BOS best-fit packing): tokens ÷ 0.65 of text is read. nanochat's Oct 2025
# loader streamed documents across rows and cropped nothing (reference A3): it read exactly the training tokens, which
# gives speedrun.sh's ~216 shards for d20 (it downloads 240) and run1000.sh's d32 ~740 (it downloads 800).
CHARS_PER_TOKEN, CHARS_PER_SHARD, SHARD_BYTES, CROPPED = 4.8, 250e6, 100e6, 0.35

# nanochat's published d32 run (run1000.sh): 1.207960e10 FLOPs per token × 524,288 tokens a step in ~1.574 s on
# 8×H100, so MFU ~50.9% ("~50%" rounded). Plans of its Oct 2025 model use that figure, so they reproduce the run.
NANOCHAT_D32_FLOPS_PER_TOKEN, NANOCHAT_D32_STEP_SECONDS = 1.207960e10, 1.574

# What the backward pass needs, per token, beyond the per-layer activations counted in saved_values():
# logits: bf16 head output kept for backward + the fp32 gradient of the softcapped logits + its bf16 copy for the
# head's matmul backward, all alive as backward starts (8 bytes per vocabulary entry). Eager fp32 (CPU) also keeps
# the tanh and log-softmax outputs: 4 fp32 tensors. Overhead: CUDA context, cuBLAS/NCCL workspaces, the compiler's
# buffers and allocator fragmentation (on a CPU: Python and PyTorch). A check of the CPU side on a 2-core machine:
# d4, 16 × 512 tokens, one training step peaked at 5.4 GiB resident against 6.3 GiB estimated.
LOGIT_BYTES = {"gpu": 8, "cpu": 16}
OVERHEAD_GIB = {"gpu": 3.0, "cpu": 1.0}
MAX_DEVICE_BATCH = 1024
BUDGET_DEPTHS = range(2, 65, 2)
PRIMECHAT_VOCAB = 32768  # `primechat tokenizer train`'s default
NANOCHAT_2025_VOCAB, NANOCHAT_2025_BATCH, NANOCHAT_2025_RATIO = 65536, 524288, 20
NANOCHAT_2025_EVAL_TOKENS = 20 * 524288  # its base_train's validation tokens (reference A6; every 250 steps as here)


@dataclass
class Memory:
    """Bytes per device at the peak (the start of the backward pass of the last micro-batch)."""
    weights: int
    grads: int
    optimizer: int
    activations: int
    logits: int
    overhead: int
    capacity: int

    @property
    def total(self) -> int:
        return self.weights + self.grads + self.optimizer + self.activations + self.logits + self.overhead

    @property
    def fits(self) -> bool:
        return self.total <= self.capacity


@dataclass
class Figures:
    """Everything the planner works out for one run (costs are None without a price)."""
    arch: str
    depth: int
    hardware: str  # "8× H100" or "CPU"
    count: int  # GPUs (1 for a CPU)
    params: dict
    flops_per_token: float
    total_flops: float
    tokens: int
    tokens_per_param: float  # per scaling parameter (primechat) or per parameter (nanochat-2025's rule)
    steps: int
    total_batch: int
    device_batch: int
    seq_len: int
    grad_accum: int
    batch_lr_scale: float
    weight_decay: float
    text_tokens: float  # what the data loader reads to train on the tokens
    shards: int  # training shards to download (plus one validation shard)
    disk_bytes: float
    memory: Memory
    largest_batch: int  # largest power-of-two device batch that fits (0: none)
    mfu: float | None
    rate: float  # achieved FLOP/s of all devices together
    rate_source: str
    price: float | None  # per GPU-hour
    price_source: str
    step_seconds: float
    evaluations: int  # validation runs, as train base schedules them
    eval_tokens: int
    validation_hours: float
    base_hours: float  # the steps and the validation
    base_cost: float | None
    pipeline_hours: float | None  # None on a CPU
    pipeline_cost: float | None


def parse_gpus(text: str) -> tuple[int, GPU | None]:
    """'8xH100', '1xA100-80GB', 'H200' (one), 'cpu' -> (count, GPU or None for the CPU)."""
    text = text.strip()
    if text.lower() == "cpu":
        return 1, None
    count, _, name = text.replace("×", "x").partition("x") if text[:1].isdigit() else ("1", "", text)
    known = ", ".join(g.name for g in GPUS)
    if not count.isdigit() or int(count) < 1:
        raise UserError(f"--gpus {text!r}: write COUNTxNAME, e.g. 8xH100 (known GPUs: {known}; or cpu)")
    gpu = next((g for g in GPUS if g.name.lower() == name.strip().lower()), None)
    if gpu is None:
        raise UserError(f"unknown GPU {name.strip()!r} in --gpus: known are {known} (or cpu)")
    return int(count), gpu


def saved_values(config: GPTConfig, compiled: bool) -> int:
    """Activation values (bf16 compiled, fp32 eager) autograd keeps for backward, per token, over the whole model.

    Per layer, compiled (torch.compile recomputes pointwise ops in the backward; a norm's backward needs its input):
      block input d (the attention norm, q/k/v's matmul input, is recomputed from it) + q and k after RoPE, the
      QK-norm's input, d + kv + q, k, v as FlashAttention keeps them d + 2kv + attention output = c_proj's input d
      + residual after attention d (MLP norm recomputed) + c_fc output 4d (relu², c_proj's input, recomputed)
                                                                                            = 9d + 3kv (12d)
    Eager (CPU) also keeps both norm outputs 2d and relu's output 4d                        = 15d + 3kv (18d)
    plus, on sliding-window layers, SDPA's masked path keeps the T×T softmax: H × T per token.
    Either way + kv on value-embedding layers (the embedding) and + d with residual lambdas (the un-mixed input);
    and once per model the normed embedding x0 and the final norm's input, 2d (no T×T anywhere on a GPU).
    """
    d, kv, T = config.n_embd, config.n_kv_head * config.head_dim, config.sequence_len
    per_layer = 9 * d + 3 * kv if compiled else 15 * d + 3 * kv
    total = 2 * d
    for layer, window in enumerate(config.window_sizes()):
        total += per_layer + (kv if config.has_value_embed(layer) else 0) + (d if config.skip_lambdas else 0)
        if not compiled and window < T - 1:
            total += config.n_head * T
    return total


def optimizer_bytes(model: GPT, world: int) -> int:
    """fp32 optimizer state held by rank 0 (the busiest) under primechat's MuonAdamW, ZeRO-2 style (optim.py):
    AdamW keeps two moments, of a 1/world slice where the parameter is sharded (≥1024 elements, first dim divisible
    by world), else whole; Muon's K same-shape matrices go ceil(K/world) to a rank, each with its momentum and
    NorMuon's second moment (one value per row or column of the smaller side)."""
    total = 0
    for group in build_optimizer(model).param_groups:
        if group["kind"] == "adamw":
            for p in group["params"]:
                sharded = world > 1 and p.numel() >= 1024 and p.size(0) % world == 0
                total += 2 * 4 * (p.numel() // world if sharded else p.numel())
        else:
            m, n = group["params"][0].shape
            owned = math.ceil(len(group["params"]) / world)
            total += owned * 4 * (m * n + min(m, n))
    return total


def memory_per_device(model: GPT, device_batch: int, world: int, gpu: GPU | None, ram_bytes: int) -> Memory:
    """The peak: fp32 master weights and fp32 gradients (whole on every rank: gradients are reduce-scattered inside
    the optimizer step, not before), the optimizer state, and one micro-batch's activations and logits. The Muon
    step's stacked gradients are transient and come when activations are gone, so they are not at this peak."""
    c, where = model.config, "gpu" if gpu else "cpu"
    n_params = model.num_params()["total"]
    tokens = device_batch * c.sequence_len
    act_bytes = 2 if gpu else 4  # bf16 under torch.compile on GPUs; fp32, eager, on a CPU
    return Memory(weights=4 * n_params, grads=4 * n_params, optimizer=optimizer_bytes(model, world),
                  activations=tokens * saved_values(c, compiled=gpu is not None) * act_bytes,
                  logits=tokens * c.padded_vocab * LOGIT_BYTES[where], overhead=int(OVERHEAD_GIB[where] * GIB),
                  capacity=int(gpu.memory_gib * GIB) if gpu else ram_bytes)


def largest_device_batch(memory: Memory, device_batch: int) -> int:
    """The largest power-of-two device batch that fits (0: not even 1), from the estimate at one device batch:
    activations and logits grow in proportion to it, the rest does not depend on it."""
    per_row = (memory.activations + memory.logits) / device_batch
    rows = (memory.capacity - (memory.total - memory.activations - memory.logits)) / per_row
    batch = 0
    while batch < MAX_DEVICE_BATCH and (batch * 2 or 1) <= rows:
        batch = batch * 2 or 1
    return batch


def nanochat_2025_mfu(gpu: GPU) -> tuple[float, str]:
    """The MFU of nanochat's published d32 run (above), and its source: its model's plans match that run."""
    h100 = dict(PEAK_BF16_FLOPS)["H100"]
    mfu = NANOCHAT_D32_FLOPS_PER_TOKEN * NANOCHAT_2025_BATCH / (NANOCHAT_D32_STEP_SECONDS * h100 * 8)
    source = (f"nanochat's published d32 run (~{NANOCHAT_D32_STEP_SECONDS} s/step on 8×H100, so MFU {mfu:.1%}), "
              f"not measured by primechat")
    if "H100" not in gpu.datasheet:
        source = f"no measured figure for {gpu.datasheet}: assumed equal to H100's, {source}"
    return mfu, source


def throughput(gpu: GPU | None, count: int, mfu: float | None, arch: str) -> tuple[float | None, float, str]:
    """(MFU, achieved FLOP/s of all devices, where the figure comes from)."""
    if gpu is None:
        if mfu is not None:
            raise UserError("--mfu needs a GPU: a CPU has no datasheet peak (the planner uses a measured CPU rate)")
        return None, CPU_RATE[0], CPU_RATE[1]
    peak = dict(PEAK_BF16_FLOPS)[gpu.datasheet]
    if mfu is not None:
        source = "--mfu"
    elif arch == "nanochat-2025":
        mfu, source = nanochat_2025_mfu(gpu)
    else:
        mfu, source = measured_mfu(gpu.datasheet)
    if not 0 < mfu <= 1:
        raise UserError(f"--mfu {mfu} must be a fraction in (0, 1], e.g. 0.45")
    return mfu, mfu * peak * count, source


def other_stage_tokens() -> float:
    """The stages of nanochat's d20 speedrun after base training, in base-training tokens of the same model (see
    above): its wall clock less the base training steps and their validation, counted as train base counts it."""
    rate = nanochat_2025_mfu(GPUS[0])[0] * dict(PEAK_BF16_FLOPS)["H100"] * SPEEDRUN_GPUS
    speedrun = argparse.Namespace(num_steps=SPEEDRUN_TOKENS // NANOCHAT_2025_BATCH,
                                  flops_per_token=SPEEDRUN_FLOPS_PER_TOKEN)
    _, validation = base.validation_flops(speedrun, argparse.Namespace(eval_every=250,
                                                                       eval_tokens=NANOCHAT_2025_EVAL_TOKENS))
    return (SPEEDRUN_SECONDS * rate - validation) / SPEEDRUN_FLOPS_PER_TOKEN - SPEEDRUN_TOKENS


def train_base_args(args, depth: int | None = None, device_batch: int | None = None) -> argparse.Namespace:
    """train base's own namespace (its defaults) with the planner's flags on top, for base.make_plan."""
    parser = argparse.ArgumentParser()
    base.add_arguments(parser)
    targs = parser.parse_args([])
    for name in ("arch", "max_seq_len", "device_batch_size", "total_batch_size", "num_iterations", "target_flops",
                 "aspect_ratio", "head_dim", "window_pattern", "eval_every", "eval_tokens"):
        setattr(targs, name, getattr(args, name))
    for name, value in (("depth", args.depth), ("depth", depth), ("device_batch_size", device_batch)):
        if value is not None:
            setattr(targs, name, value)
    if args.ratio is not None:
        targs.target_param_data_ratio = args.ratio
    if args.eval_tokens is None:
        targs.eval_tokens = NANOCHAT_2025_EVAL_TOKENS if args.arch == "nanochat-2025" else parser.get_default(
            "eval_tokens")
    return targs


def plan_run(args, depth: int | None = None, device_batch: int | None = None) -> Figures:
    """The figures of one run; depth and device_batch override the flags' (the budget search varies them)."""
    count, gpu = parse_gpus(args.gpus)
    targs = train_base_args(args, depth, device_batch)
    nanochat = args.arch == "nanochat-2025"
    vocab = args.vocab_size or (NANOCHAT_2025_VOCAB if nanochat else PRIMECHAT_VOCAB)
    with torch.device("meta"):
        model = GPT(base.model_config(targs, vocab))
    counts = model.num_params()
    if nanochat:  # Oct 2025's rule: a fixed 0.5M-token batch, ratio (default 20) × ALL parameters
        if targs.total_batch_size <= 0:
            targs.total_batch_size = NANOCHAT_2025_BATCH
        if targs.num_iterations <= 0 and targs.target_flops <= 0:
            ratio = NANOCHAT_2025_RATIO if args.ratio is None else args.ratio
            targs.num_iterations = max(1, int(ratio * counts["total"]) // targs.total_batch_size)
    plan = base.make_plan(targs, model, count)
    memory = memory_per_device(model, targs.device_batch_size, count, gpu, physical_ram())

    mfu, rate, rate_source = throughput(gpu, count, args.mfu, args.arch)
    step_seconds = plan.flops_per_token * plan.total_batch / rate
    evaluations, validation_flops = base.validation_flops(plan, targs)
    validation_hours = validation_flops / rate / 3600
    base_hours = step_seconds * plan.num_steps / 3600 + validation_hours
    # nanochat's non-base stages are sized for GPU runs; on a CPU one runs the demo preset instead, so no estimate
    pipeline_hours = base_hours + other_stage_tokens() * plan.flops_per_token / rate / 3600 if gpu else None
    if args.price is not None:
        price, price_source = args.price, "--price"
    elif gpu is None:
        price, price_source = None, "a CPU has no listed price: --price sets one"
    else:
        listed = any(key in gpu.datasheet for key, _ in GPU_HOURLY_PRICE)
        price = gpu_hourly_price(gpu.datasheet)
        price_source = "on-demand cloud rate, common.GPU_HOURLY_PRICE" if listed else \
            "primechat's default for GPUs without a listed rate; --price sets yours"
    text_tokens = plan.target_tokens if nanochat else plan.target_tokens / (1 - CROPPED)
    shards = math.ceil(text_tokens * CHARS_PER_TOKEN / CHARS_PER_SHARD)
    per = counts["total"] if nanochat else counts["scaling"]
    return Figures(
        arch=args.arch, depth=targs.depth, hardware=f"{count}× {gpu.name}" if gpu else "CPU", count=count,
        params=counts, flops_per_token=plan.flops_per_token, total_flops=plan.flops_per_token * plan.target_tokens,
        tokens=plan.target_tokens, tokens_per_param=plan.target_tokens / per, steps=plan.num_steps,
        total_batch=plan.total_batch, device_batch=targs.device_batch_size, seq_len=targs.max_seq_len,
        grad_accum=plan.grad_accum, batch_lr_scale=plan.batch_lr_scale, weight_decay=plan.weight_decay,
        text_tokens=text_tokens, shards=shards, disk_bytes=(shards + 1) * SHARD_BYTES, memory=memory,
        largest_batch=largest_device_batch(memory, targs.device_batch_size), mfu=mfu, rate=rate,
        rate_source=rate_source, price=price, price_source=price_source, step_seconds=step_seconds,
        evaluations=evaluations, eval_tokens=targs.eval_tokens, validation_hours=validation_hours, base_hours=base_hours, base_cost=None if price is None else base_hours * count * price,
        pipeline_hours=pipeline_hours,
        pipeline_cost=None if price is None or pipeline_hours is None else pipeline_hours * count * price)


def budget_search(args) -> tuple[Figures, list[Figures]]:
    """The largest even depth whose whole pipeline fits the budget and whose memory fits at some device batch (the
    requested one, else the largest that fits); returns it and every depth tried up to the first over budget."""
    tried = []
    for depth in BUDGET_DEPTHS:
        figures = plan_run(args, depth)
        if not figures.memory.fits and figures.largest_batch:
            figures = plan_run(args, depth, figures.largest_batch)
        tried.append(figures)
        if figures.pipeline_cost > args.budget:
            break
    affordable = [f for f in tried if f.pipeline_cost <= args.budget and f.memory.fits]
    if not affordable:
        cheapest = min(tried, key=lambda f: f.pipeline_cost)
        raise UserError(f"${args.budget:,.0f} buys no run on {cheapest.hardware}: the cheapest, d{cheapest.depth}, "
                        f"costs ${cheapest.pipeline_cost:,.2f} for the whole pipeline (estimate)")
    return affordable[-1], tried


def money(value: float | None) -> str:
    return "-" if value is None else f"${value:,.2f}"


def print_rows(title: str, rows: list[tuple[str, str]]):
    print(title)
    print(aligned_rows(rows))


def print_figures(f: Figures):
    nanochat = f.arch == "nanochat-2025"
    per = "per parameter" if nanochat else "per scaling parameter"
    rows = [(f"params: {name}", f"{n:,}") for name, n in f.params.items() if n or name in ("scaling", "total")]
    rows += [("FLOPs per token", f"{f.flops_per_token:.4e}"),
             ("total FLOPs", f"{f.total_flops:.4e}"),
             ("tokens", f"{f.tokens:,} ({f.tokens_per_param:.1f} {per})"),
             ("steps", f"{f.steps:,}"),
             ("total batch (tokens)", f"{f.total_batch:,}"),
             ("device batch × seq len × devices", f"{f.device_batch} × {f.seq_len} × {f.count}"),
             ("gradient accumulation", f"{f.grad_accum}")]
    if not nanochat:
        rows.append(("LR batch scale / Muon weight decay", f"{f.batch_lr_scale:.3f} / {f.weight_decay:.4f}"))
    print_rows(f"plan: d{f.depth}, {f.arch} architecture, on {f.hardware}", rows)
    if nanochat:
        print("  (nanochat's Oct 2025 horizon: 20 tokens per parameter and a 524,288-token batch unless given; "
              "`train base --arch nanochat-2025` keeps primechat's)")

    read = "nanochat's Oct 2025 loader streams documents across rows and crops nothing" if nanochat else \
        f"of which best-fit packing crops ~{CROPPED:.0%} (nanochat's figure at seq len 2048)"
    print_rows("data (nanochat's shards: ~4.8 chars/token, ~250M chars and ~100 MB per shard)", [
        ("training shards", f"{f.shards:,} + 1 validation shard: primechat data download -n {f.shards}"),
        ("text read", f"~{f.text_tokens:,.0f} tokens: {read}"),
        ("disk", f"~{human_bytes(f.disk_bytes)}")])

    m, on_cpu = f.memory, f.hardware == "CPU"
    share = f"1/{f.count} share" if f.count > 1 else "whole"
    verdict = "fits" if m.fits else "DOES NOT FIT"
    largest = (f"{f.largest_batch}" if f.largest_batch else "none: not even 1 fits") \
        + ("" if f.largest_batch >= MAX_DEVICE_BATCH else " (the next power of two does not)")
    how = "fp32, no compile" if on_cpu else "calibrated on nanochat's published device batches"
    print_rows(f"memory per {'CPU (RAM)' if on_cpu else 'GPU'}: an estimate, {how}", [
        ("weights (fp32 master)", f"{m.weights / GIB:6.1f} GiB"),
        ("gradients (fp32)", f"{m.grads / GIB:6.1f} GiB"),
        (f"optimizer state ({share})", f"{m.optimizer / GIB:6.1f} GiB  AdamW moments; Muon momentum + NorMuon"),
        ("activations", f"{m.activations / GIB:6.1f} GiB  {f.device_batch} × {f.seq_len} tokens"),
        ("logits and loss", f"{m.logits / GIB:6.1f} GiB"),
        ("Python and PyTorch" if on_cpu else "CUDA, compiler, allocator", f"{m.overhead / GIB:6.1f} GiB"),
        ("total", f"{m.total / GIB:6.1f} GiB of {m.capacity / GIB:.1f}{' (this machine)' if on_cpu else ''}: "
                  f"{verdict} at device batch {f.device_batch}"),
        ("largest device batch that fits", largest)])

    if f.mfu is not None:
        speed = f"MFU {f.mfu:.1%} × {f.rate / f.count / f.mfu / 1e12:,.0f} TFLOP/s bf16 peak × {f.count}"
    else:
        speed = f"{f.rate / 1e12:.3f} TFLOP/s"
    print_rows("time and cost: estimates", [
        ("speed", speed),
        ("speed comes from", f.rate_source),
        ("step time", f"{f.step_seconds:,.3f} s"),
        ("price", f.price_source if f.price is None else
         f"${f.price:.2f} per {'' if on_cpu else 'GPU-'}hour ({f.price_source})"),
        ("base training", f"{hours_text(f.base_hours)}, {money(f.base_cost)}"),
        ("  of which validation", f"{hours_text(f.validation_hours)}: {f.evaluations} × {f.eval_tokens:,} tokens, "
                                  f"as train base runs it (--eval-every, --eval-tokens)"),
    ] + ([
        ("whole pipeline", f"{hours_text(f.pipeline_hours)}, {money(f.pipeline_cost)}"),
        ("", "base training plus tokenizer, evaluations, mid-training and SFT, scaled from nanochat's d20 speedrun"),
        ("", "(3h51m for all of it, base training included): the stages after base training count as"),
        ("", f"{other_stage_tokens() / 1e9:.1f}B base-training tokens at this model's FLOPs per token"),
    ] if f.pipeline_hours is not None else [
        ("whole pipeline", "not estimated on a CPU: `primechat speedrun --preset demo` is the CPU pipeline")]))
    if not m.fits and f.largest_batch:
        print(f"  → does not fit: add --device-batch-size {f.largest_batch} (gradient accumulation keeps the result)")


def print_budget(chosen: Figures, tried: list[Figures], budget: float):
    print(f"budget ${budget:,.0f} on {chosen.hardware}: d{chosen.depth} is the largest even depth whose whole pipeline "
          f"fits (estimate)\n")
    print_figures(chosen)
    near = [f for f in tried if abs(f.depth - chosen.depth) <= 6]
    print("\nneighbouring depths")
    print(f"  {'depth':>5}  {'params':>9}  {'device batch':>12}  {'base h':>7}  {'pipeline h':>10}  {'pipeline $':>10}")
    for f in near:
        mark = "  ← chosen" if f is chosen else ("  over budget" if f.pipeline_cost > budget else "")
        print(f"  {f.depth:>5}  {f.params['total'] / 1e6:>8.1f}M  {f.device_batch:>12}  {f.base_hours:>7.1f}  "
              f"{f.pipeline_hours:>10.1f}  {f.pipeline_cost:>10,.2f}{mark}")


def add_arguments(p):
    defaults = argparse.ArgumentParser()
    base.add_arguments(defaults)  # train base's defaults, so the two commands agree
    d = defaults.get_default
    p.add_argument("--depth", type=int, default=None, help=f"number of layers (default {d('depth')}, as train base)")
    p.add_argument("--gpus", default="8xH100", help="COUNTxNAME (8xH100, 1xA100-80GB), NAME for one, or cpu")
    p.add_argument("--arch", choices=ARCHES, default="primechat",
                   help="primechat (nanochat 2026) or nanochat-2025 (nanochat's Oct 2025 model and its horizon "
                   "rule, to check against its published runs; `train base --arch` takes the model only)")
    p.add_argument("--budget", type=float, default=None, metavar="DOLLARS",
                   help="pick the largest even depth whose whole pipeline costs at most this")
    p.add_argument("--price", type=float, default=None,
                   help="dollars per GPU-hour (default: the GPU's on-demand cloud rate, printed with the plan)")
    p.add_argument("--mfu", type=float, default=None, help="model FLOPs utilisation (default: the measured table)")
    p.add_argument("--ratio", "--target-param-data-ratio", type=float, default=None,
                   help=f"training tokens per scaling parameter (default {d('target_param_data_ratio'):g}; "
                        f"nanochat-2025: {NANOCHAT_2025_RATIO} per parameter)")
    p.add_argument("--vocab-size", type=int, default=None,
                   help=f"tokenizer vocabulary (default {PRIMECHAT_VOCAB}; nanochat-2025: {NANOCHAT_2025_VOCAB})")
    p.add_argument("--device-batch-size", type=int, default=d("device_batch_size"), help="rows per forward pass")
    p.add_argument("--max-seq-len", type=int, default=d("max_seq_len"), help="context length in tokens")
    p.add_argument("--total-batch-size", type=int, default=d("total_batch_size"),
                   help="tokens per optimizer step (-1: from depth; nanochat-2025: 524288)")
    p.add_argument("--num-iterations", type=int, default=d("num_iterations"), help="optimizer steps (-1: horizon)")
    p.add_argument("--target-flops", type=float, default=d("target_flops"), help="training FLOPs (-1: the ratio)")
    p.add_argument("--eval-every", type=int, default=d("eval_every"),
                   help="validation every N steps, counted in the base training time (-1: only at the end)")
    p.add_argument("--eval-tokens", type=int, default=None,
                   help=f"validation tokens per evaluation (default {d('eval_tokens'):,}; nanochat-2025: "
                        f"{NANOCHAT_2025_EVAL_TOKENS:,})")
    p.add_argument("--aspect-ratio", type=int, default=d("aspect_ratio"), help="model width = depth × this")
    p.add_argument("--head-dim", type=int, default=d("head_dim"), help="attention head size")
    p.add_argument("--window-pattern", default=d("window_pattern"), help="per-layer attention windows (primechat)")


def main(args):
    if args.price is not None and args.price < 0:
        raise UserError(f"--price {args.price:g}: a price cannot be negative")
    if args.budget is not None:
        if args.depth is not None:
            raise UserError("give --depth or --budget, not both: --budget chooses the depth")
        if args.budget <= 0:
            raise UserError(f"--budget {args.budget:g} must be positive (dollars)")
        if parse_gpus(args.gpus)[1] is None:
            raise UserError("--budget needs GPUs (e.g. --gpus 8xH100): on a CPU, run the demo preset instead")
        chosen, tried = budget_search(args)
        print_budget(chosen, tried, args.budget)
        return
    print_figures(plan_run(args))


if __name__ == "__main__":
    from primechat.cli import run_module
    run_module(add_arguments, main)
