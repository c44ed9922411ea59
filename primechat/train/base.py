"""Base-model pretraining: `primechat train base --depth N` or `torchrun --nproc_per_node 8 -m primechat.train.base`.

Everything derives from --depth (nanochat 2026, reference B5): width, heads, the token budget (tokens:params ratio),
the total batch (grows with the data as D^0.383, rounded to a power of two), learning rates (× sqrt(B/2^19)) and
weight decay (× sqrt(B/2^19) × D_ref/D, D_ref being a d12 model's budget). Any derived value can be overridden.

The loop: gradient accumulation to the total batch, MuonAdamW (which also synchronises gradients across ranks),
validation bits per byte every --eval-every steps, greedy samples every --sample-every, metrics appended to
metrics.jsonl and a loss-curve PNG beside the checkpoints, checkpoints every --save-every steps and at the end.
SIGTERM or Ctrl-C finish the current step (or cut a running validation short), save, and exit; `--resume` continues
exactly where a run stopped.
"""

import math
import time
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist

from primechat import report
from primechat.common import (UserError, aligned_rows, compute_cleanup, compute_dtype, compute_init, device_rate,
                              dist_info, hours_text, print0, progress)
from primechat.data.loader import DataParallelLoader, PretrainLoader
from primechat.data.shards import add_dataset_argument, dataset_label, list_shards, pick_dataset
from primechat.eval.core import bundle_for, evaluate_core
from primechat.eval.loss import evaluate_bpb
from primechat.fp8 import check_device as check_fp8_device, enable_fp8
from primechat.model import ARCHES, GPT, GPTConfig, config_for_depth
from primechat.optim import DEFAULT_LRS, build_optimizer
from primechat.plots import plot_training_curves
from primechat.tokenizer import load_tokenizer
from primechat.train import checkpoint
from primechat.train.loop import (RunLog, StepReport, StopRequest, add_speed_arguments, add_wandb_arguments, due,
                                  note_validation, out_of_memory, record_typed_flags, refuse_float16, resume, say,
                                  training_model, validation_batches, wandb_run)

SAMPLE_PROMPTS = ["The capital of France is", "The chemical symbol of gold is",
                  "If yesterday was Friday, then tomorrow will be", "The opposite of hot is",
                  "The planets of the solar system are:", "My favorite color is", "If 5*x + 3 = 13, then x is"]
B_REF = 2 ** 19  # the reference total batch (tokens) at which the default learning rates were tuned
DEPTH_REF = 12  # the reference model for the data-size scaling of batch and weight decay
DEVICE_BATCH_SIZE = 32  # rows per forward pass: nanochat's, which fits d20 on an 80 GB GPU


def add_arguments(p):
    p.add_argument("--depth", type=int, default=20, help="number of layers: the one dial everything derives from")
    p.add_argument("--aspect-ratio", type=int, default=64, help="model width = depth × this, rounded to heads")
    p.add_argument("--head-dim", type=int, default=128, help="attention head size")
    p.add_argument("--max-seq-len", type=int, default=2048, help="context length in tokens")
    p.add_argument("--window-pattern", default="SSSL", help="per-layer attention windows: S = a quarter of the "
                   "context, L = the context, F = unbounded (nanochat's Oct 2025 model)")
    p.add_argument("--arch", choices=ARCHES, default="primechat", help="the model: primechat (nanochat's 2026 "
                   "design) or nanochat-2025 (its Oct 2025 model: no windows, value embeddings, smear, backout or "
                   "lambdas; ignores --window-pattern), trained the same way (primechat's horizon, batch and optimizer, unlike "
                   "`plan --arch`), to compare the two")
    add_dataset_argument(p, "pretraining dataset under base_data/")
    p.add_argument("--data-streams", type=int, default=None, help="independent data streams (default: one per "
                   "process); runs with equal streams and total batch see the same data whatever the process count")
    p.add_argument("--device-type", default="", help="cuda|cpu|mps (default: autodetect)")
    p.add_argument("--device-batch-size", type=int, default=DEVICE_BATCH_SIZE, help="rows per forward pass; lower it "
                   "to save memory (gradient accumulation keeps the result the same)")
    p.add_argument("--total-batch-size", type=int, default=-1, help="tokens per optimizer step (-1: from depth)")
    p.add_argument("--num-iterations", type=int, default=-1, help="optimizer steps (-1: from the horizon below)")
    p.add_argument("--target-flops", type=float, default=-1, help="training FLOPs budget (-1: use the ratio)")
    p.add_argument("--target-param-data-ratio", type=float, default=12, help="training tokens per scaling param")
    p.add_argument("--embedding-lr", type=float, default=DEFAULT_LRS["embedding_lr"],
                   help="AdamW LR of token and value embeddings")
    p.add_argument("--unembedding-lr", type=float, default=DEFAULT_LRS["unembedding_lr"],
                   help="AdamW LR of the output head")
    p.add_argument("--matrix-lr", type=float, default=DEFAULT_LRS["matrix_lr"],
                   help="Muon LR of the transformer matrices")
    p.add_argument("--scalar-lr", type=float, default=DEFAULT_LRS["scalar_lr"],
                   help="AdamW LR of the residual/x0 lambdas")
    p.add_argument("--weight-decay", type=float, default=0.28, help="Muon weight decay at the d12 reference "
                   "(scaled with batch and data size)")
    p.add_argument("--warmup-steps", type=int, default=40, help="linear LR warmup steps")
    p.add_argument("--warmdown-ratio", type=float, default=0.65, help="final fraction of steps with LR decay")
    p.add_argument("--final-lr-frac", type=float, default=0.05, help="LR at the end as a fraction of the peak")
    p.add_argument("--eval-every", type=int, default=250, help="validation bpb every N steps (-1: only at the end)")
    p.add_argument("--eval-tokens", type=int, default=80 * 524288, help="validation tokens per evaluation")
    p.add_argument("--sample-every", type=int, default=2000, help="print greedy samples every N steps (-1: end)")
    p.add_argument("--core-metric-every", type=int, default=-1, help="CORE every N steps and at the end (-1: never; "
                   "nanochat's runs use 2000): a quick one, on at most --core-metric-max-per-task examples per task")
    p.add_argument("--core-metric-max-per-task", type=int, default=500, help="CORE examples per task during training")
    p.add_argument("--bundle-url", default=None, help="where to download the CORE bundle from (default: "
                   "$PRIMECHAT_EVAL_BUNDLE_URL, else nanochat's public copy)")
    p.add_argument("--save-every", type=int, default=-1, help="checkpoint every N steps (-1: only at the end)")
    p.add_argument("--model-tag", default=None, help="checkpoint folder name (default: d<depth>)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint of this tag (or "
                   "start if it has none); with --model-tag, flags not typed take the saved run's values")
    p.add_argument("--resume-from-step", type=int, default=-1, help="continue from this saved step; its later "
                   "steps move into a replaced_<step>_<time>/ subfolder")
    p.add_argument("--fp8", action="store_true", help="fp8 matmuls for the transformer's matrices (H100/H200; "
                   "emulated on a CPU, for testing)")
    p.add_argument("--fp8-recipe", choices=["tensorwise", "rowwise"], default="tensorwise", help="fp8 scaling "
                   "(nanochat's flag; only tensorwise is built here)")
    add_speed_arguments(p)
    add_wandb_arguments(p)
    record_typed_flags(p)


@dataclass
class Plan:
    """Everything derived from the flags: what will be trained, on how much data, with which hyper-parameters."""
    total_batch: int
    grad_accum: int
    num_steps: int
    batch_lr_scale: float
    weight_decay: float
    target_tokens: int
    flops_per_token: float


def model_config(args, vocab_size: int, depth: int | None = None) -> GPTConfig:
    """The model the flags describe (at another depth if given); `primechat plan` builds the same one."""
    return config_for_depth(args.depth if depth is None else depth, vocab_size, args.max_seq_len, args.aspect_ratio,
                            args.head_dim, args.window_pattern, args.arch)


def scaling_params(depth: int, args, vocab_size: int) -> int:
    with torch.device("meta"):
        model = GPT(model_config(args, vocab_size, depth))
    return model.num_params()["scaling"]


def make_plan(args, model: GPT, world: int) -> Plan:
    n_scaling = model.num_params()["scaling"]
    flops_per_token = model.estimate_flops()
    data_ratio = n_scaling / scaling_params(DEPTH_REF, args, model.config.vocab_size)  # D / D_ref at equal ratio
    if args.device_batch_size < 1 or args.max_seq_len < 1:
        raise UserError(f"--device-batch-size {args.device_batch_size} and --max-seq-len {args.max_seq_len} "
                        f"must be positive")
    tokens_per_pass = args.device_batch_size * args.max_seq_len * world
    if args.total_batch_size > 0:
        total_batch = args.total_batch_size
        if total_batch % tokens_per_pass:
            raise UserError(f"--total-batch-size {total_batch} is not a multiple of device batch × seq len × "
                            f"processes = {args.device_batch_size}×{args.max_seq_len}×{world} = {tokens_per_pass}")
    else:  # Power Lines: the best batch grows as D^0.383; then round to a whole number of passes
        total_batch = 2 ** round(math.log2(B_REF * data_ratio ** 0.383))
        total_batch = max(1, round(total_batch / tokens_per_pass)) * tokens_per_pass
    target_tokens = int(args.target_param_data_ratio * n_scaling)
    if args.num_iterations > 0:
        num_steps = args.num_iterations
    elif args.target_flops > 0:
        num_steps = round(args.target_flops / (flops_per_token * total_batch))
    else:
        num_steps = target_tokens // total_batch
    if num_steps < 1:
        raise UserError(f"the horizon comes to {num_steps} steps: raise --num-iterations, --target-flops or "
                        f"--target-param-data-ratio, or lower --total-batch-size")
    batch_scale = math.sqrt(total_batch / B_REF)
    return Plan(total_batch=total_batch, grad_accum=total_batch // tokens_per_pass, num_steps=num_steps,
                batch_lr_scale=batch_scale, weight_decay=args.weight_decay * batch_scale / data_ratio,
                target_tokens=num_steps * total_batch, flops_per_token=flops_per_token)


# The schedules (nanochat 2026, reference B5), as functions of the step: the loop sets every group's LR, Muon's
# momentum and Muon's weight decay from them before each step.

def warmdown_start(args, num_steps: int) -> int:
    """The step after which the LR decays: the last --warmdown-ratio of the run."""
    return num_steps - round(args.warmdown_ratio * num_steps)


def lr_multiplier(step: int, args, num_steps: int) -> float:
    """Linear warmup over --warmup-steps, 1 until the warmdown starts, then linear down to --final-lr-frac."""
    start = warmdown_start(args, num_steps)
    if step < args.warmup_steps:
        return (step + 1) / args.warmup_steps
    if step <= start:
        return 1.0
    progress_left = (num_steps - step) / (num_steps - start)
    return progress_left + (1 - progress_left) * args.final_lr_frac


def muon_momentum(step: int, args, num_steps: int) -> float:
    """0.85 → 0.97 over the first 400 steps, then down to 0.90 during the LR warmdown."""
    start = warmdown_start(args, num_steps)
    ramp = 0.85 + 0.12 * min(step / 400, 1.0)
    into_warmdown = max(0, step - start) / max(num_steps - start, 1)
    return min(ramp, 0.97 - 0.07 * into_warmdown)


def weight_decay_multiplier(step: int, num_steps: int) -> float:
    """Muon's weight decay follows a cosine from 1 at the start to 0 at the end."""
    return 0.5 * (1 + math.cos(math.pi * step / num_steps))


def validation_flops(plan: Plan, args, step: int = 0) -> tuple[int, float]:
    """How many validations a run does from `step` to the end (where the loop's `due` puts them: step 0, every
    --eval-every steps, the end) and their FLOPs: forward only, a third of a training step's per token. The planner
    counts them the same way."""
    first = step + 1 if step else 0  # a resumed step was evaluated before it was saved
    evaluations = sum(due(s, args.eval_every, s == plan.num_steps) for s in range(first, plan.num_steps + 1))
    return evaluations, evaluations * args.eval_tokens * plan.flops_per_token / 3


def expected_time(plan: Plan, args, step: int, device, world: int) -> list[tuple[str, str]]:
    """Start-up table rows: training plus validation time from `step` to the end, at the speed the planner expects
    of this device."""
    rate, source = device_rate(device, world)
    label = "expected time" + (f" from step {step}" if step else "")
    if rate is None:
        return [(label, f"unknown ({source}): the step lines give an ETA")]
    evaluations, val_flops = validation_flops(plan, args, step)
    train_s = (plan.num_steps - step) * plan.total_batch * plan.flops_per_token / rate
    val_s = val_flops / rate
    hint = "; lower --eval-tokens or raise --eval-every to spend less" if val_s > train_s / 4 else ""
    return [(label, f"{hours_text((train_s + val_s) / 3600)} at {rate / 1e12:,.3f} TFLOP/s"),
            ("  of which validation",
             f"{hours_text(val_s / 3600)}: {evaluations} × {args.eval_tokens:,} tokens{hint}"),
            ("  speed comes from", source)]


def print_plan(model: GPT, plan: Plan, args, world: int, device, step: int, speed_rows: list):
    counts = model.num_params()
    design = ("nanochat-2025 (Oct 2025: whole-prefix attention, no value embeddings, smear, backout or lambdas)"
              if args.arch == "nanochat-2025" else
              f"primechat (windows {model.config.window_pattern}: {', '.join(map(str, model.config.window_sizes()))})")
    rows = [("model", f"d{args.depth}, {design}")]
    rows += [(f"params: {name}", f"{n:,}") for name, n in counts.items() if n or name in ("scaling", "total")]
    rows += [("FLOPs per token", f"{plan.flops_per_token:.4e}"),
             ("total FLOPs", f"{plan.flops_per_token * plan.target_tokens:.4e}"),
             ("tokens", f"{plan.target_tokens:,} ({plan.target_tokens / counts['scaling']:.1f} per scaling param)"),
             ("steps", f"{plan.num_steps:,}"),
             ("total batch (tokens)", f"{plan.total_batch:,}"),
             ("device batch × seq len × processes", f"{args.device_batch_size} × {args.max_seq_len} × {world}"),
             ("gradient accumulation", plan.grad_accum),
             ("LR batch scale / Muon weight decay", f"{plan.batch_lr_scale:.3f} / {plan.weight_decay:.4f}"),
             ("device / dtype", f"{device} / {str(model.compute_dtype).removeprefix('torch.')}")] + speed_rows
    rows += expected_time(plan, args, step, device, world)
    print0(aligned_rows(rows))


def check_learning_rates(args, names=("embedding_lr", "unembedding_lr", "matrix_lr", "scalar_lr")):
    """The LR flags every trainer takes: none negative (None: not given, inherited)."""
    for name in names:
        if (value := getattr(args, name)) is not None and value < 0:
            raise UserError(f"--{name.replace('_', '-')} {value} is negative: a learning rate is 0 or more")


def check_fraction(flag: str, value: float | None, of: str):
    if value is not None and not 0 <= value <= 1:
        raise UserError(f"{flag} {value} is outside [0, 1]: it is a fraction of {of}")


def check_arguments(args):
    """Flag mistakes, found before anything is loaded or built."""
    checkpoint.check_tag(args.model_tag)
    wandb_run(args)  # on every process, before anything is loaded
    if args.data_streams is not None and args.data_streams < 1:
        raise UserError(f"--data-streams {args.data_streams}: give 1 or more (or leave it out: one per process)")
    world = dist_info()[3]  # torchrun's, known before the process group is joined
    if args.data_streams is not None and args.data_streams % world:
        raise UserError(f"--data-streams {args.data_streams} must be a multiple of the {world} processes: change it "
                        f"(or leave it out: one per process)")
    if args.fp8 and args.fp8_recipe != "tensorwise":  # without --fp8 the recipe is unused, as in nanochat
        raise UserError(f"--fp8-recipe {args.fp8_recipe}: only tensorwise is built (primechat/fp8.py); use "
                        f"--fp8-recipe tensorwise or leave the flag out")
    check_learning_rates(args)
    check_fraction("--warmdown-ratio", args.warmdown_ratio, "the run's steps")
    check_fraction("--final-lr-frac", args.final_lr_frac, "the peak learning rate")
    if args.warmup_steps < 0:
        raise UserError(f"--warmup-steps {args.warmup_steps} is negative: give 0 (no warmup) or more")


def main(args):
    check_arguments(args)
    tag = args.model_tag or f"d{args.depth}"
    folder = checkpoint.checkpoint_dir("base", tag)
    checkpoint.inherit_saved_flags(args, folder)
    device, rank, world = compute_init(args.device_type)
    master = rank == 0
    args.dataset = pick_dataset(args.dataset)
    user_config = checkpoint.user_config(args)
    tokenizer = load_tokenizer()
    train_paths, val_path = list_shards(args.dataset)
    config = model_config(args, tokenizer.vocab_size)
    bundle = None
    if args.core_metric_every > 0:  # fetched before anything is built: a missing bundle is a mistake found early
        bundle = bundle_for(args.bundle_url, args.core_metric_max_per_task, "--core-metric-max-per-task")

    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device=device)
    model.init_weights()
    model.compute_dtype = compute_dtype(device.type)
    refuse_float16(model.compute_dtype)
    plan = make_plan(args, model, world)
    if args.warmup_steps >= plan.num_steps:  # the run ends before (or as) the warmup does: no drop, no warmdown
        longer = "as long as" if args.warmup_steps == plan.num_steps else "longer than"
        print0(f"note: warmup ({args.warmup_steps} steps) is {longer} the run ({plan.num_steps} steps): the learning "
               f"rate only rises and never warms down; lower --warmup-steps")
    elif args.warmup_steps > (start := warmdown_start(args, plan.num_steps)):  # lr_multiplier would jump down
        print0(f"note: --warmup-steps {args.warmup_steps} runs past the warmdown's start (step {start} of "
               f"{plan.num_steps}), so the learning rate drops abruptly at step {args.warmup_steps}: lower "
               f"--warmup-steps or --warmdown-ratio")
    streams_per_rank = (args.data_streams or world) // world
    if streams_per_rank and plan.grad_accum % streams_per_rank:
        raise UserError(f"gradient accumulation ({plan.grad_accum}) must be a multiple of the data streams per "
                        f"process ({streams_per_rank}): change --data-streams or --total-batch-size")
    optimizer = build_optimizer(model, matrix_lr=args.matrix_lr, embedding_lr=args.embedding_lr,
                                unembedding_lr=args.unembedding_lr, scalar_lr=args.scalar_lr,
                                weight_decay=plan.weight_decay, batch_lr_scale=plan.batch_lr_scale)

    # Resume: model, optimizer shard, loader state and loop state of a saved step.
    loop = {"min_val_bpb": float("inf"), "smooth_loss": 0.0, "training_time": 0.0, "val_bpb": None}
    resumed_at, _, loader_state = resume(
        folder, args, loop, plan.num_steps, model=model, optimizer=optimizer, model_config=config.to_dict(),
        user_config=user_config, rank=rank, world=world, device=device, fresh_start="from scratch")
    step = resumed_at or 0

    speed_rows = []
    if args.fp8:
        check_fp8_device(device, args.device_batch_size * args.max_seq_len)
        emulated = "; emulated on the CPU: fp8 rounding, no speed-up" if device.type == "cpu" else ""
        speed_rows.append(("fp8 matmuls", f"{enable_fp8(model)} matrices (tensorwise scaling{emulated})"))
        if emulated:
            print0("note: --fp8 on a CPU rounds the matmuls to fp8 as an H100 would, to test the numerics; it is "
                   "slower, not faster (and the loss stays close to a run without it)")
    train_model, attention = training_model(model, args, device)
    print_plan(model, plan, args, world, device, step, speed_rows + [("attention", attention)])
    train_loader = DataParallelLoader(tokenizer, train_paths, args.device_batch_size, args.max_seq_len, rank, world,
                                      args.data_streams or world, device, state=loader_state)
    val_batches = None
    token_bytes = torch.tensor(tokenizer.token_byte_lengths(), dtype=torch.int64, device=device)
    if resumed_at is not None:  # only now that every check has passed: a refused run changes nothing on disk
        checkpoint.set_aside_later_steps(folder, resumed_at, rank)
    metrics_path = folder / "metrics.jsonl"
    log = RunLog(metrics_path, resumed_at, args, tag, user_config)
    report_step = StepReport(log, plan.total_batch, plan.flops_per_token, device, world)
    stop = StopRequest()
    bar = progress(total=plan.num_steps, initial=step, desc="train", unit="step")
    num_steps = plan.num_steps
    # the first steps include compilation and warm-up, so the training time leaves them out (nanochat's first 10),
    # but at most a tenth of the run: a short run's time is its steps'
    untimed = min(10, num_steps // 10)

    def draw_curve():  # at every evaluation and save, so the picture beside a checkpoint is up to date
        if master:
            plot_training_curves(metrics_path, folder / "loss_curve.png", title=f"base {tag}")

    def save(step):
        meta = {"step": step, "val_bpb": loop["val_bpb"], "val_bpb_step": loop.get("val_bpb_step"),
                "model_config": config.to_dict(), "user_config": user_config,
                "device_batch_size": args.device_batch_size, "max_seq_len": args.max_seq_len,
                "total_batch_size": plan.total_batch, "num_iterations": num_steps, "world_size": world,
                "plan": asdict(plan), "loop_state": loop}
        checkpoint.save_checkpoint(folder, step, model.state_dict(), meta, optimizer.state_dict(),
                                   train_loader.state_dict(), rank)
        draw_curve()

    while True:
        last = step == num_steps
        fresh = step != resumed_at  # a resumed step was saved already: only what a stop cut short is left to do
        measured = False
        if due(step, args.eval_every, last) and loop.get("val_bpb_step") != step:
            if val_batches is None:
                packer = PretrainLoader(tokenizer, [val_path], args.device_batch_size, args.max_seq_len)
                val_batches = validation_batches(packer, args.eval_tokens, rank, world)
            with torch.no_grad():
                val_bpb = evaluate_bpb(train_model, (tuple(t.to(device) for t in b) for b in val_batches),
                                       len(val_batches), token_bytes, abandon=stop.pending)
            if measured := note_validation(step, val_bpb, loop, log):
                draw_curve()
        stopping = stop.requested(device)
        core_due = bundle and step > 0 and due(step, args.core_metric_every, last)
        if core_due and loop.get("core_step") != step and not stopping:
            with torch.no_grad():  # the uncompiled model: CORE's prompts come in every length
                result = evaluate_core(model, tokenizer.encode, tokenizer.bos_id, device, bundle,
                                       args.core_metric_max_per_task, model.cos.size(1), log=lambda line: None,
                                       abandon=lambda: stop.requested(device))
            if result is None:
                stopping = True
                say(f"step {step:05d} | CORE abandoned: stopping")
            else:
                loop["core_metric"], loop["core_step"], measured = result.core, step, True
                say(f"step {step:05d} | {result.label} {result.core:.4f} (at most {args.core_metric_max_per_task} "
                    f"examples per task)")
                log({"step": step, "core_metric": result.core})
        if fresh and master and not stopping and due(step, args.sample_every, last) and step > 0:
            for prompt in SAMPLE_PROMPTS:
                ids = tokenizer.encode(prompt, prepend=tokenizer.bos_id)
                say(tokenizer.decode(ids[1:] + list(model.generate(ids, 16, temperature=0))))
        saving = stopping or due(step, args.save_every, last)
        if saving and step > 0 and (fresh or measured):
            save(step)
        if last or stopping:
            break

        # One optimizer step: grad_accum micro-batches, then the synchronising optimizer.
        t0 = time.time()
        lrm = lr_multiplier(step, args, num_steps)
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * lrm
            if group["kind"] == "muon":
                group["momentum"] = muon_momentum(step, args, num_steps)
                group["weight_decay"] = group["initial_weight_decay"] * weight_decay_multiplier(step, num_steps)
        train_loss = torch.zeros((), device=device)
        try:
            for _ in range(plan.grad_accum):
                inputs, targets = train_loader.next_batch()
                loss = train_model(inputs, targets) / plan.grad_accum
                loss.backward()
                train_loss += loss.detach()
        except torch.OutOfMemoryError:
            raise out_of_memory(args.device_batch_size) from None
        optimizer.step()
        model.zero_grad(set_to_none=True)
        if dist.is_initialized():
            dist.all_reduce(train_loss, op=dist.ReduceOp.SUM)
            train_loss /= world
        train_loader.prefetch()  # packing the next rows on the CPU overlaps the GPU's work queued above
        loss_value = train_loss.item()  # the one host sync per step
        dt = time.time() - t0
        step += 1
        if step > untimed or resumed_at is not None:
            loop["training_time"] += dt
        seconds_per_step = loop["training_time"] / (step - untimed) if step > untimed else dt  # untimed: the last
        bar.update(1)
        report_step(loop, step, f"/{num_steps}", step / num_steps, seconds_per_step * (num_steps - step), loss_value,
                    lrm, dt)
    bar.close()

    complete = loop.get("val_bpb_step") == num_steps and (not bundle or loop.get("core_step") == num_steps)
    if not complete:  # a stop came before the end, or cut the last validation or CORE short
        compute_cleanup()
        stop.exit_stopped(step, folder)
    peak_mem = torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == "cuda" else None
    summary = {"model tag": tag, "depth": args.depth, "parameters": model.num_params()["total"],
               "scaling parameters": model.num_params()["scaling"], "FLOPs per token": f"{plan.flops_per_token:e}",
               "steps": num_steps, "total batch size": plan.total_batch, "tokens": plan.target_tokens,
               "min validation bpb": loop["min_val_bpb"], "final validation bpb": loop["val_bpb"],
               **({"final CORE": f"{loop['core_metric']:.4f} (at most {args.core_metric_max_per_task} examples per "
                                 f"task; `primechat eval base` for the full one)"} if bundle else {}),
               "training time (min)": loop["training_time"] / 60,
               "peak memory (GiB)": f"{peak_mem:.2f}" if peak_mem else "-",
               "dataset": dataset_label(args.dataset, len(train_paths)),
               "processes": world}
    report.log_section("Base model training", summary)
    print0(f"done: min val bpb {loop['min_val_bpb']:.4f}, training time {loop['training_time'] / 60:.2f} min"
           + (f", peak memory {peak_mem:.2f} GiB" if peak_mem else ""))
    compute_cleanup()


if __name__ == "__main__":
    from primechat.cli import run_module
    run_module(add_arguments, main)
