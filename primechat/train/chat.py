"""Chat training: the one loop behind `primechat train mid` and `primechat train sft` (presets in PRESETS).

mid: a base model learns the chat format, tool calls and the multiple-choice format from a large mixture
(configs/mid.yaml). sft: a short pass over cleaner, task-like data (configs/sft.yaml). Both (nanochat A8, B7):
- start from the previous stage's latest checkpoint (--source, --model-tag, --source-step) and, where the process
  count matches, warm-start from its optimizer state (momentum buffers), with fresh learning rates;
- pack conversations best-fit into rows and learn only the assistant's tokens (data/chat_loader.py);
- take sequence length, the previous LRs and the batch LR scale from the source checkpoint, and mid also its device
  batch (SFT takes 4 rows per pass, 32 per step);
- run one epoch of the mixture (or --num-iterations steps); LR × init_lr_frac, constant, then a linear warmdown to
  0 over the last --warmdown-ratio of the run; Muon momentum 0.85 → 0.95 over 300 steps; no Muon weight decay
  (the AdamW groups keep their small fixed ones);
- report validation bits per byte (assistant tokens of the val mixture) every --eval-every steps, and task accuracies
  (MMLU, ARC-Easy by default) every --metrics-every steps;
- save and resume exactly as pretraining does: checkpoints every --save-every steps and at the end, SIGTERM/Ctrl-C
  save and stop, --resume continues from the latest.
"""

import math
import shutil
import time

import torch
import torch.distributed as dist

from primechat import report
from primechat.common import UserError, aligned_rows, compute_cleanup, compute_init, print0, progress
from primechat.data.chat_loader import ChatLoader
from primechat.eval import chat as chat_eval
from primechat.eval.loss import evaluate_bpb
from primechat.optim import DEFAULT_LRS, build_optimizer
from primechat.plots import plot_training_curves
from primechat.tasks.mixture import load_mixture, resolve as resolve_mixture
from primechat.train import checkpoint
from primechat.train.base import B_REF, DEVICE_BATCH_SIZE, check_fraction, check_learning_rates
from primechat.train.loop import (RunLog, StepReport, StopRequest, add_speed_arguments, add_wandb_arguments, due,
                                  note_validation, out_of_memory, record_typed_flags, refuse_float16, resume, say,
                                  training_model, validation_batches, wandb_run)

# Per stage: the stage it starts from, its mixture, schedule and evaluation cadence. For SFT from a base model (no
# mid-training) nanochat's 2026 recipe starts higher and decays over half the run: SFT_FROM_BASE.
PRESETS = {
    "mid": dict(source="base", mixture="mid", init_lr_frac=1.0, warmdown_ratio=0.2, device_batch_size=None,
                rows_per_step=None, eval_every=150, metrics_every=300, title="Midtraining"),
    "sft": dict(source="mid", mixture="sft", init_lr_frac=0.02, warmdown_ratio=1.0, device_batch_size=4,
                rows_per_step=32, eval_every=100, metrics_every=200, title="Chat SFT"),
}
SFT_FROM_BASE = dict(init_lr_frac=0.8, warmdown_ratio=0.5)


def add_arguments(p, stage: str):
    preset = PRESETS[stage]
    p.add_argument("--source", choices=["base", "mid", "sft"][:["base", "mid", "sft"].index(stage)],
                   default=preset["source"], help="the stage to start from")
    p.add_argument("--model-tag", default=None, help="checkpoint folder, read in the source stage and written in "
                   "this one unless --output-tag (default: the source's deepest d<N>)")
    p.add_argument("--output-tag", default=None, help="checkpoint folder this stage writes (default: the tag read): "
                   "to train the stage again from the same source")
    p.add_argument("--source-step", type=int, default=None, help="source checkpoint step (default: the latest)")
    p.add_argument("--mixture", default=preset["mixture"], help="a mixture YAML file, or a shipped one's name "
                   "(mid, sft, demo-chat); preview it with `primechat data mixture`")
    p.add_argument("--device-type", default="", help="cuda|cpu|mps (default: autodetect)")
    p.add_argument("--max-seq-len", type=int, default=None, help="row length in tokens (default: the source's)")
    p.add_argument("--device-batch-size", type=int, default=preset["device_batch_size"], help="rows per forward "
                   "pass" + (" (default: the source's)" if preset["device_batch_size"] is None else "")
                   + "; lower it to save memory")
    p.add_argument("--total-batch-size", type=int, default=None, help="tokens per optimizer step (default: "
                   + ("the source's" if preset["rows_per_step"] is None else f"{preset['rows_per_step']} rows") + ")")
    p.add_argument("--num-epochs", type=float, default=1.0, help="passes over the training mixture")
    p.add_argument("--num-iterations", type=int, default=-1, help="stop after this many steps instead (-1: epochs)")
    p.add_argument("--embedding-lr", type=float, default=None, help="AdamW LR of the embeddings (default: the "
                   "source's)")
    p.add_argument("--unembedding-lr", type=float, default=None, help="AdamW LR of the output head (default: the "
                   "source's)")
    p.add_argument("--matrix-lr", type=float, default=None, help="Muon LR of the matrices (default: the source's)")
    p.add_argument("--scalar-lr", type=float, default=None, help="AdamW LR of the residual/x0 lambdas (default: "
                   "the source's)")
    p.add_argument("--init-lr-frac", type=float, default=None, help=f"LRs × this (default: {preset['init_lr_frac']}"
                   + (f"; {SFT_FROM_BASE['init_lr_frac']} from base" if stage == "sft" else "") + ")")
    p.add_argument("--warmdown-ratio", type=float, default=None, help="final fraction of the run with linear LR "
                   f"decay to 0 (default: {preset['warmdown_ratio']}"
                   + (f"; {SFT_FROM_BASE['warmdown_ratio']} from base" if stage == "sft" else "") + ")")
    p.add_argument("--load-optimizer", type=int, choices=[0, 1], default=1, help="warm-start from the source's "
                   "optimizer state (when it was saved by as many processes)")
    p.add_argument("--eval-every", type=int, default=preset["eval_every"], help="validation bpb every N steps "
                   "(-1: only at the end)")
    p.add_argument("--eval-tokens", type=int, default=20 * 524288, help="validation tokens per evaluation")
    p.add_argument("--metrics-every", type=int, default=preset["metrics_every"], help="task accuracies every N "
                   "steps (-1: only at the end)")
    p.add_argument("--metrics", default="MMLU|ARC-Easy", help="'|'-separated tasks of `primechat eval chat` to "
                   "measure during training ('' for none)")
    p.add_argument("--metrics-max-problems", type=int, default=1024, help="problems per task per measurement")
    p.add_argument("--words", default=chat_eval.WORDS_URL, help="word list for a metric that needs one: a URL, a file, "
                   "or builtin (offline)")
    p.add_argument("--save-every", type=int, default=-1, help="checkpoint every N steps (-1: only at the end)")
    p.add_argument("--resume", action="store_true", help="continue from this stage's latest checkpoint (or start "
                   "if it has none); with --model-tag, flags not typed take the saved run's values")
    p.add_argument("--resume-from-step", type=int, default=-1, help="continue from this saved step; its later "
                   "steps move into a replaced_<step>_<time>/ subfolder")
    add_speed_arguments(p)
    add_wandb_arguments(p)
    p.set_defaults(stage=stage)
    record_typed_flags(p)


def inherit(args, source_meta: dict, world: int) -> dict:
    """The run's settings: flags where given, else the source checkpoint's (nanochat B7), checked."""
    stage, preset = args.stage, PRESETS[args.stage]
    source_config = source_meta.get("user_config", {})
    from_base = stage == "sft" and args.source == "base"

    def pick(flag, key, default):
        value = getattr(args, flag)
        return value if value is not None else source_config.get(key, default)

    seq_len = pick("max_seq_len", "max_seq_len", source_meta["model_config"]["sequence_len"])
    if seq_len > source_meta["model_config"]["sequence_len"]:
        raise UserError(f"--max-seq-len {seq_len} is longer than the model's context "
                        f"({source_meta['model_config']['sequence_len']})")
    batch = pick("device_batch_size", "device_batch_size", DEVICE_BATCH_SIZE)
    tokens_per_pass = batch * seq_len * world
    if args.total_batch_size is not None:
        total = args.total_batch_size
    elif preset["rows_per_step"] is not None:  # that many rows, rounded up to whole passes
        total = math.ceil(preset["rows_per_step"] / (batch * world)) * tokens_per_pass
    else:
        total = source_meta.get("total_batch_size", tokens_per_pass)
    if total % tokens_per_pass:
        raise UserError(f"total batch {total} tokens is not a multiple of device batch × seq len × processes = "
                        f"{batch}×{seq_len}×{world}: change --total-batch-size or --device-batch-size")
    init_lr_frac = args.init_lr_frac if args.init_lr_frac is not None else (
        SFT_FROM_BASE if from_base else preset)["init_lr_frac"]
    warmdown = args.warmdown_ratio if args.warmdown_ratio is not None else (
        SFT_FROM_BASE if from_base else preset)["warmdown_ratio"]
    lrs = {name: pick(name, name, default) for name, default in DEFAULT_LRS.items()}
    return dict(max_seq_len=seq_len, device_batch_size=batch, total_batch_size=total,
                grad_accum=total // tokens_per_pass, init_lr_frac=init_lr_frac, warmdown_ratio=warmdown,
                batch_lr_scale=math.sqrt(total / B_REF), **lrs)


# The mid/SFT schedules, as functions of the run's progress (0 → 1) and step; base's are train/base.py's
# lr_multiplier and muon_momentum, RL's is rl.py's rl_lr_multiplier.

def chat_lr_multiplier(progress: float, warmdown_ratio: float) -> float:
    """1 until the last warmdown_ratio of the run, then linearly down to 0 (no warmup)."""
    if warmdown_ratio <= 0 or progress < 1 - warmdown_ratio:
        return 1.0
    return max(0.0, (1 - progress) / warmdown_ratio)


def chat_muon_momentum(step: int) -> float:
    """0.85 → 0.95 over the first 300 steps, then constant."""
    return 0.85 + 0.10 * min(step / 300, 1.0)


def check_epochs(step: int, progress: float, num_epochs: float, saved_config: dict):
    """loop.check_horizon for a run that ends by epochs: refused when the checkpoint has seen more of the data than
    this run trains on. A finished run's last step passes its own target a little, so that target still resumes."""
    saved_epochs = saved_config.get("num_epochs") if saved_config.get("num_iterations", -1) <= 0 else None
    if progress > num_epochs and (saved_epochs is None or num_epochs < saved_epochs):
        raise UserError(f"the checkpoint at step {step} has trained on {progress:g} epochs, past this run's "
                        f"{num_epochs:g}: raise --num-epochs" + (f" (the saved run had {saved_epochs:g})"
                                                                  if saved_epochs is not None else ""))


def warm_start(optimizer, source_folder, source_step: int, rank: int, device) -> bool:
    """Load the source's optimizer state (Adam moments, Muon momentum) but keep this run's learning rates."""
    path = source_folder / f"optim_{source_step:06d}_rank{rank}.pt"
    saved_world = checkpoint.load_meta(source_folder, source_step).get("world_size")
    world = dist.get_world_size() if dist.is_initialized() else 1
    if not path.exists() or saved_world != world:
        return False
    hyper = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    optimizer.load_state_dict(torch.load(path, map_location=device, weights_only=False))
    for group, fresh in zip(optimizer.param_groups, hyper):
        group.update(fresh)
    return True


def measure_tasks(model, tokenizer, tasks: dict, args, rank: int, world: int, stop, device) -> dict | None:
    """Accuracy per task, as `primechat eval chat` measures it (categorical ones batched, generative ones greedy);
    None when a stop comes first (asked before each task, so a preemption's grace period is not spent on them)."""
    results = {}
    for name, task in tasks.items():
        if stop.requested(device):
            return None
        if task.eval_type == "categorical":
            results[name] = chat_eval.evaluate_categorical(model, tokenizer, task, rank=rank, world=world,
                                                           max_problems=args.metrics_max_problems)
        else:
            results[name] = chat_eval.evaluate_generative(model, tokenizer, task, max_new_tokens=256, rank=rank,
                                                          world=world, max_problems=args.metrics_max_problems)
    return results


def check_arguments(args):
    """Flag mistakes, found before anything is loaded (mid/SFT and RL share it)."""
    checkpoint.check_tag(args.model_tag)
    checkpoint.check_tag(args.output_tag, "--output-tag")
    wandb_run(args)  # on every process, before anything is loaded
    check_learning_rates(args)
    if args.init_lr_frac is not None and args.init_lr_frac <= 0:
        raise UserError(f"--init-lr-frac {args.init_lr_frac}: give a positive fraction of the learning rates")
    check_fraction("--warmdown-ratio", getattr(args, "warmdown_ratio", None), "the run")  # RL has none


def main(args):
    stage = args.stage
    check_arguments(args)
    if args.output_tag or args.model_tag:  # the folder of this stage's run, whose flags a resume takes back
        checkpoint.inherit_saved_flags(args, checkpoint.checkpoint_dir(stage, args.output_tag or args.model_tag))
    device, rank, world = compute_init(args.device_type)
    master = rank == 0
    user_config = checkpoint.user_config(args)
    metric_names = chat_eval.task_names(args.metrics)
    resolve_mixture(args.mixture)  # a mistyped mixture is reported before the model is loaded
    # the tasks' data (and a word list) before the model too: offline, fail now, not at the first measure
    metric_tasks = {name: chat_eval.load_task(name, args.words, "--metrics ('' for none)")
                    for name in metric_names}

    # The model: the source checkpoint, in fp32 master weights.
    source_tag = args.model_tag or checkpoint.default_tag(args.source)
    source_folder = checkpoint.checkpoint_dir(args.source, source_tag)
    model, tokenizer, source_meta = checkpoint.load_model(args.source, source_tag, args.source_step, device,
                                                          train=True)
    refuse_float16(model.compute_dtype)
    settings = inherit(args, source_meta, world)
    mixture = load_mixture(args.mixture)
    train_set, val_set = mixture.train, mixture.val
    tag = args.output_tag or source_tag
    folder = checkpoint.checkpoint_dir(stage, tag)

    lrs = {k: settings[k] for k in ("matrix_lr", "embedding_lr", "unembedding_lr", "scalar_lr")}
    optimizer = build_optimizer(model, weight_decay=0.0, batch_lr_scale=settings["batch_lr_scale"], **lrs)
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] = group["initial_lr"] * settings["init_lr_frac"]

    # Resume this stage, or start from the source.
    loop = {"progress": 0.0, "smooth_loss": 0.0, "training_time": 0.0, "val_bpb": None, "min_val_bpb": float("inf"),
            "metrics": {}}
    num_steps = args.num_iterations if args.num_iterations > 0 else None  # else the run ends after --num-epochs
    resumed_at, meta, loader_state = resume(
        folder, args, loop, num_steps, model=model, optimizer=optimizer, model_config=source_meta["model_config"],
        user_config=user_config, rank=rank, world=world, device=device, fresh_start=f"from {args.source} {source_tag}",
        source=(args.source, source_tag), tag_flag="--output-tag")
    step = resumed_at or 0
    if resumed_at is not None:
        if num_steps is None:
            check_epochs(resumed_at, loop["progress"], args.num_epochs, meta["user_config"])
    elif args.load_optimizer and warm_start(optimizer, source_folder, source_meta["step"], rank, device):
        print0(f"optimizer state warm-started from {args.source} {source_tag} step {source_meta['step']}")
    elif args.load_optimizer:
        why = ("it was imported without one" if "imported_from" in source_meta
               else f"none was saved by {world} process(es)")
        print0(f"no optimizer state of {args.source} {source_tag} to warm-start from ({why}): starting it fresh")

    train_loader = ChatLoader(tokenizer, train_set, settings["device_batch_size"], settings["max_seq_len"], rank,
                              world, device, state=loader_state)
    steps_text = f"{args.num_iterations} steps" if args.num_iterations > 0 else f"{args.num_epochs:g} epoch(s)"
    rows = [("source", f"{args.source} {source_tag} step {source_meta['step']} ({model.num_params()['total']:,} "
                       f"params)"),
            ("mixture", f"{mixture.path} ({len(train_set):,} train / {len(val_set):,} val conversations)"),
            ("run", steps_text),
            ("total batch (tokens)", f"{settings['total_batch_size']:,}"),
            ("device batch × seq len × processes", f"{settings['device_batch_size']} × {settings['max_seq_len']} × "
                                                   f"{world}"),
            ("gradient accumulation", settings["grad_accum"]),
            ("LR × init_lr_frac / warmdown", f"{settings['init_lr_frac']} / last {settings['warmdown_ratio']:.0%}"),
            ("device / dtype", f"{device} / {str(model.compute_dtype).removeprefix('torch.')}")]
    train_model, attention = training_model(model, args, device)
    rows.append(("attention", attention))
    print0(aligned_rows(rows))

    token_bytes = torch.tensor(tokenizer.token_byte_lengths(), dtype=torch.int64, device=device)
    val_batches = None
    if master and (source_folder / "tokenizer.pkl").exists():  # an imported model's own tokenizer goes along
        for name in ("tokenizer.pkl", "token_bytes.pt"):
            shutil.copy2(source_folder / name, folder / name)
    if resumed_at is not None:  # only now that every check has passed: a refused run changes nothing on disk
        checkpoint.set_aside_later_steps(folder, resumed_at, rank)
    metrics_path = folder / "metrics.jsonl"
    log = RunLog(metrics_path, resumed_at, args, f"{stage}-{tag}", user_config)
    report_step = StepReport(log, settings["total_batch_size"], model.estimate_flops(), device, world)
    stop = StopRequest()
    bar = progress(total=100, initial=round(100 * loop["progress"]), desc=stage, unit="%")
    # the first step includes compilation, so the training time leaves it out, except in a run known to be short
    untimed = 1 if args.num_iterations <= 0 or args.num_iterations >= 10 else 0

    def run_progress() -> float:
        if args.num_iterations > 0:
            return step / args.num_iterations
        return loop["progress"] / args.num_epochs

    def draw_curve():  # at every evaluation and save, so the picture beside a checkpoint is up to date
        if master:
            plot_training_curves(metrics_path, folder / "loss_curve.png", title=f"{stage} {tag}")

    def save(step):
        meta = {"step": step, "val_bpb": loop["val_bpb"], "val_bpb_step": loop.get("val_bpb_step"),
                "model_config": source_meta["model_config"],
                "user_config": {**user_config, **settings}, "source": {"stage": args.source, "tag": source_tag,
                                                       "step": source_meta["step"]},
                "mixture": str(mixture.path), **{k: settings[k] for k in ("device_batch_size", "max_seq_len",
                                                                          "total_batch_size")},
                "world_size": world, "num_iterations": num_steps, "metrics": loop["metrics"], "loop_state": loop}
        checkpoint.save_checkpoint(folder, step, model.state_dict(), meta, optimizer.state_dict(),
                                   train_loader.state_dict(), rank)
        draw_curve()

    while True:
        last = run_progress() >= 1.0
        fresh = step != resumed_at  # a resumed step was saved already: only what a stop cut short is left to do
        measured = False
        if due(step, args.eval_every, last) and loop.get("val_bpb_step") != step:
            if val_batches is None:
                packer = ChatLoader(tokenizer, val_set, settings["device_batch_size"], settings["max_seq_len"],
                                    device=device)
                val_batches = validation_batches(packer, args.eval_tokens, rank, world)
            val_bpb = evaluate_bpb(train_model, iter(val_batches), len(val_batches), token_bytes, abandon=stop.pending)
            if measured := note_validation(step, val_bpb, loop, log):
                draw_curve()
        stopping = stop.requested(device)
        if metric_tasks and due(step, args.metrics_every, last) and loop.get("metrics_step") != step and not stopping:
            metrics = measure_tasks(model, tokenizer, metric_tasks, args, rank, world, stop, device)
            if metrics is None:
                stopping = True
                say(f"step {step:05d} | task metrics abandoned: stopping")
            else:
                loop["metrics"], loop["metrics_step"], measured = metrics, step, True
                say(f"step {step:05d} | " + " | ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
                log({"step": step, **{f"acc_{k}": v for k, v in metrics.items()}})
        saving = stopping or due(step, args.save_every, last)
        if saving and step > 0 and (fresh or measured):
            save(step)
        if last or stopping:
            break

        # One optimizer step: grad_accum micro-batches, then the synchronising optimizer.
        t0 = time.time()
        lrm = chat_lr_multiplier(run_progress(), settings["warmdown_ratio"])
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * lrm
            if group["kind"] == "muon":
                group["momentum"] = chat_muon_momentum(step)
        train_loss = torch.zeros((), device=device)
        try:
            for _ in range(settings["grad_accum"]):
                inputs, targets = train_loader.next_batch()
                loss = train_model(inputs, targets) / settings["grad_accum"]
                loss.backward()
                train_loss += loss.detach()
        except torch.OutOfMemoryError:
            raise out_of_memory(settings["device_batch_size"]) from None
        optimizer.step()
        model.zero_grad(set_to_none=True)
        # every rank follows the furthest one's progress, so all take the same LR and stop at the same step
        data_progress = torch.tensor(train_loader.progress, dtype=torch.float64, device=device)
        if dist.is_initialized():
            dist.all_reduce(train_loss, op=dist.ReduceOp.SUM)
            train_loss /= world
            dist.all_reduce(data_progress, op=dist.ReduceOp.MAX)
        loss_value = train_loss.item()
        loop["progress"] = data_progress.item()
        dt = time.time() - t0
        step += 1
        if step > untimed or resumed_at is not None:
            loop["training_time"] += dt
        done = min(run_progress(), 1.0)
        eta = (loop["training_time"] or dt) * (1 - done) / done if done > 0 else 0.0  # step 1 is untimed: its dt
        bar.update(round(100 * done) - bar.n)
        of = f"/{args.num_iterations}" if args.num_iterations > 0 else ""  # else epochs: steps known at the end
        report_step(loop, step, of, done, eta, loss_value, lrm, dt, progress=done)
    bar.close()

    complete = last and loop.get("val_bpb_step") == step and (not metric_tasks or loop.get("metrics_step") == step)
    if not complete:  # a stop came before the end, or cut the last validation or metrics short
        compute_cleanup()
        stop.exit_stopped(step, folder)
    summary = {"model tag": tag, "source": f"{args.source} {source_tag} step {source_meta['step']}",
               "mixture": str(mixture.path), "mixture sources": mixture.source_names(),  # the path is this machine's
               "training conversations": len(train_set), "steps": step,
               "total batch size": settings["total_batch_size"], "min validation bpb": loop["min_val_bpb"],
               "final validation bpb": loop["val_bpb"],
               # fewer problems than `eval chat` may use: the card's two figures for one checkpoint can differ
               **({"task metrics": f"on the first {args.metrics_max_problems} problems of each task"}
                  if loop["metrics"] else {}), **loop["metrics"],
               "training time (min)": loop["training_time"] / 60, "processes": world}
    report.log_section(PRESETS[stage]["title"], summary)
    print0(f"done: {step} steps, val bpb {loop['val_bpb']:.4f}"
           + "".join(f", {k} {v:.4f}" for k, v in loop["metrics"].items()) + f"; saved in {folder}")
    compute_cleanup()
