"""Reinforcement learning on GSM8K: `primechat train rl` (or `torchrun … -m primechat.train.rl`), nanochat A9.

On-policy REINFORCE, the simplest thing that works ("GRPO" without its extras: no KL penalty, no reference model,
no PPO ratio or clipping). Each step, every rank takes its share of --examples-per-step training problems; for each,
the model samples --num-samples answers (the Engine, with the calculator tool); the reward is 1 for a right final
answer, else 0, and the advantage is the reward minus the problem's mean reward. The loss is
    -Σ log p(sampled token) × advantage / (tokens that count)
over the tokens the model sampled (prompt and tool outputs are masked out), normalised per token across the step
(DAPO-style), with one optimizer step per RL step and LR falling linearly to 0.

Every --eval-every steps pass@k (k = 1..--eval-samples) on --eval-examples test problems; checkpoints every
--save-every steps and at the end, SIGTERM/Ctrl-C save and stop, --resume continues. The data order follows from the
step number, so a resumed run samples exactly what an uninterrupted one would have.
--task NAME trains on a generated task instead (offline; the CPU demo uses arithmetic): any task of tasks/mixture.py's
GENERATED that scores answers, by its name there. --num-epochs may be a fraction: fewer steps.
"""

import math
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

from primechat import report
from primechat.common import UserError, compute_cleanup, compute_init, print0, progress
from primechat.engine import Engine
from primechat.eval.chat import pass_at_k, sample_outcomes
from primechat.optim import build_optimizer
from primechat.plots import plot_training_curves
from primechat.tasks.common import Task
from primechat.tasks.gsm8k import GSM8K
from primechat.tasks.mixture import GENERATED, generated_task
from primechat.train import checkpoint
from primechat.train.chat import check_arguments
from primechat.train.loop import (RunLog, StopRequest, add_wandb_arguments, due, out_of_memory, record_typed_flags,
                                  refuse_float16, resume, say)

# --task: GSM8K, or a generated task that scores answers, by its name in tasks/mixture.py's GENERATED
RL_TASKS = ["gsm8k", *(name for name, task in GENERATED.items() if task.eval_type)]
GENERATED_SIZES = {"train": 8000, "test": 1000}  # problems of a generated task per split


def load_rl_task(name: str, split: str, words: str) -> Task:
    """The problems of --task `name` in `split` (a generated task draws other examples for test than for train)."""
    if name == "gsm8k":
        return GSM8K(split)
    return generated_task(name, words, size=GENERATED_SIZES[split], split=split)


def rl_lr_multiplier(step: int, num_steps: int) -> float:
    """RL's schedule (mid/SFT's: chat.py chat_lr_multiplier; base's: base.py lr_multiplier): linear from 1 to 0."""
    return 1.0 - step / num_steps


def count_steps(args, num_problems: int) -> int:
    """--num-iterations, else the steps of --num-epochs passes over the training problems (nanochat's count, which
    a fraction of an epoch shortens: the problems are taken in order from the step number)."""
    if args.num_iterations > 0:
        return args.num_iterations
    if not math.isfinite(args.num_epochs):
        raise UserError(f"--num-epochs {args.num_epochs}: give a number of passes, such as 1 or 0.5")
    steps = int(num_problems // args.examples_per_step * args.num_epochs)
    if steps < 1:
        raise UserError(f"{args.num_epochs:g} epoch(s) of {num_problems} training problems make no step of "
                        f"{args.examples_per_step}: raise --num-epochs or lower --examples-per-step")
    return steps


def add_arguments(p):
    p.add_argument("--source", choices=["base", "mid", "sft"], default="sft", help="the stage to start from")
    p.add_argument("--model-tag", default=None, help="checkpoint folder, read in the source stage and written in "
                   "this one unless --output-tag (default: the source's deepest d<N>)")
    p.add_argument("--output-tag", default=None, help="checkpoint folder this stage writes (default: the tag read): "
                   "to train the stage again from the same source")
    p.add_argument("--source-step", type=int, default=None, help="source checkpoint step (default: the latest)")
    p.add_argument("--task", choices=RL_TASKS, default="gsm8k", help="what to reinforce")
    p.add_argument("--words", default="builtin", help="word list for a --task that needs one (builtin, a URL or a "
                   "file)")
    p.add_argument("--device-type", default="", help="cuda|cpu|mps (default: autodetect)")
    p.add_argument("--device-batch-size", type=int, default=8, help="sequences per forward pass (sampling and "
                   "training); lower it to save memory")
    p.add_argument("--examples-per-step", type=int, default=16, help="problems per step, across all processes")
    p.add_argument("--num-samples", type=int, default=16, help="answers sampled per problem")
    p.add_argument("--max-new-tokens", type=int, default=256, help="longest answer sampled")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    p.add_argument("--top-k", type=int, default=50, help="sample among the k likeliest tokens (0: all)")
    p.add_argument("--embedding-lr", type=float, default=0.2, help="AdamW LR of the embeddings")
    p.add_argument("--unembedding-lr", type=float, default=0.004, help="AdamW LR of the output head")
    p.add_argument("--matrix-lr", type=float, default=0.02, help="Muon LR of the matrices")
    p.add_argument("--scalar-lr", type=float, default=0.5, help="AdamW LR of the residual/x0 lambdas")
    p.add_argument("--init-lr-frac", type=float, default=0.05, help="all LRs × this")
    p.add_argument("--num-epochs", type=float, default=1.0, help="passes over the training problems (0.5: half of "
                   "them)")
    p.add_argument("--num-iterations", type=int, default=-1, help="steps (-1: from the epochs)")
    p.add_argument("--eval-every", type=int, default=60, help="pass@k every N steps (-1: only at the end)")
    p.add_argument("--eval-examples", type=int, default=400, help="test problems per evaluation")
    p.add_argument("--eval-samples", type=int, default=8, help="answers per test problem: pass@1 … pass@N")
    p.add_argument("--save-every", type=int, default=60, help="checkpoint every N steps (-1: only at the end)")
    p.add_argument("--resume", action="store_true", help="continue from this stage's latest checkpoint (or start "
                   "if it has none); with --model-tag, flags not typed take the saved run's values")
    p.add_argument("--resume-from-step", type=int, default=-1, help="continue from this saved step; its later "
                   "steps move into a replaced_<step>_<time>/ subfolder")
    add_wandb_arguments(p)
    record_typed_flags(p)


def rollouts(engine, tokenizer, task, index: int, args, seed_base: tuple):
    """Sample --num-samples answers to problem `index`: (ids, mask, rewards), padded to one length. mask is 1 on the
    tokens the model sampled, which are the ones trained on."""
    conversation = task[index]
    prompt = tokenizer.render_for_completion(conversation)
    sequences, masks = [], []
    for sampling_step in range(args.num_samples // args.device_batch_size):
        seed = hash((*seed_base, index, sampling_step)) & 0x7FFFFFFF
        ids, mask = engine.generate_batch(prompt, args.device_batch_size, max_tokens=args.max_new_tokens,
                                          temperature=args.temperature, top_k=args.top_k or None, seed=seed)
        sequences += ids
        masks += mask
    rewards = [float(task.evaluate(conversation, tokenizer.decode(ids[len(prompt):]))) for ids in sequences]
    length = max(len(s) for s in sequences)
    pad = tokenizer.encode_special("<|assistant_end|>")
    ids = torch.tensor([s + [pad] * (length - len(s)) for s in sequences], dtype=torch.long)
    mask = torch.tensor([m + [0] * (length - len(m)) for m in masks], dtype=torch.bool)
    return ids, mask, torch.tensor(rewards)


def evaluate_pass_at_k(engine, task, args, rank: int, world: int, device) -> dict:
    """pass@1 … pass@eval_samples over the first --eval-examples test problems (strided over ranks)."""
    outcomes = [sample_outcomes(engine, task, i, args.eval_samples, args.max_new_tokens, 1.0, args.top_k or None,
                                seed=i)
                for i in range(rank, min(args.eval_examples, len(task)), world)]
    counts = torch.tensor([pass_at_k(outcomes, k) * len(outcomes) for k in range(1, args.eval_samples + 1)]
                          + [len(outcomes)], dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(counts)
    return {f"pass@{k}": (counts[k - 1] / counts[-1]).item() for k in range(1, args.eval_samples + 1)}


def main(args):
    check_arguments(args)
    if args.output_tag or args.model_tag:  # the folder of this stage's run, whose flags a resume takes back
        checkpoint.inherit_saved_flags(args, checkpoint.checkpoint_dir("rl", args.output_tag or args.model_tag))
    for flag in ("examples_per_step", "num_samples", "device_batch_size", "max_new_tokens"):
        if (value := getattr(args, flag)) < 1:
            raise UserError(f"--{flag.replace('_', '-')} {value}: give 1 or more")
    device, rank, world = compute_init(args.device_type)
    master = rank == 0
    user_config = checkpoint.user_config(args)
    if args.examples_per_step % world:
        raise UserError(f"--examples-per-step {args.examples_per_step} must be a multiple of the {world} processes")
    if args.num_samples % args.device_batch_size:
        fits = max(d for d in range(1, args.device_batch_size + 1) if args.num_samples % d == 0)
        raise UserError(f"--num-samples {args.num_samples} must be a multiple of --device-batch-size "
                        f"{args.device_batch_size}: e.g. --device-batch-size {fits}")
    train_task, test_task = load_rl_task(args.task, "train", args.words), load_rl_task(args.task, "test", args.words)
    num_steps = count_steps(args, len(train_task))  # before the model loads: flag mistakes come first

    source_tag = args.model_tag or checkpoint.default_tag(args.source)
    source_folder = checkpoint.checkpoint_dir(args.source, source_tag)
    model, tokenizer, source_meta = checkpoint.load_model(args.source, source_tag, args.source_step, device,
                                                          train=True)
    refuse_float16(model.compute_dtype)
    optimizer = build_optimizer(model, matrix_lr=args.matrix_lr, embedding_lr=args.embedding_lr,
                                unembedding_lr=args.unembedding_lr, scalar_lr=args.scalar_lr, weight_decay=0.0)
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] = group["initial_lr"] * args.init_lr_frac
    tag = args.output_tag or source_tag
    folder = checkpoint.checkpoint_dir("rl", tag)

    loop = {"training_time": 0.0, "pass_at_k": {}, "mean_reward": None}
    resumed_at, _, _ = resume(
        folder, args, loop, num_steps, model=model, optimizer=optimizer, model_config=source_meta["model_config"],
        user_config=user_config, rank=rank, world=world, device=device, fresh_start=f"from {args.source} {source_tag}",
        source=(args.source, source_tag), tag_flag="--output-tag", loader=False)
    step = resumed_at or 0
    print0(f"RL on {args.task}: {len(train_task):,} problems, {num_steps} steps × {args.examples_per_step} problems "
           f"× {args.num_samples} samples, from {args.source} {source_tag} step {source_meta['step']} on {device}")

    engine = Engine(model, tokenizer)
    if master and (source_folder / "tokenizer.pkl").exists():  # an imported model's own tokenizer goes along
        tokenizer.save(folder)
    if resumed_at is not None:  # only now that every check has passed: a refused run changes nothing on disk
        checkpoint.set_aside_later_steps(folder, resumed_at, rank)
    metrics_path = folder / "metrics.jsonl"
    log = RunLog(metrics_path, resumed_at, args, f"rl-{tag}", user_config)
    stop = StopRequest()
    bar = progress(total=num_steps, initial=step, desc="rl", unit="step")
    per_rank = args.examples_per_step // world
    passes = args.num_samples // args.device_batch_size

    def save(step):
        meta = {"step": step, "model_config": source_meta["model_config"], "user_config": user_config,
                "source": {"stage": args.source, "tag": source_tag, "step": source_meta["step"]},
                "world_size": world, "num_iterations": num_steps, "pass_at_k": loop["pass_at_k"], "loop_state": loop}
        checkpoint.save_checkpoint(folder, step, model.state_dict(), meta, optimizer.state_dict(), rank=rank)

    while True:
        last = step == num_steps
        fresh = step != resumed_at  # a resumed step was evaluated (a stop does not cut pass@k short) and saved
        if fresh and due(step, args.eval_every, last):
            loop["pass_at_k"] = evaluate_pass_at_k(engine, test_task, args, rank, world, device)
            say(f"step {step:05d} | " + " | ".join(f"{k} {v:.4f}" for k, v in loop["pass_at_k"].items()))
            log({"step": step, **loop["pass_at_k"]})
        stopping = stop.requested(device)
        if fresh and step > 0 and (stopping or due(step, args.save_every, last)):
            save(step)
        if last or stopping:
            break

        t0 = time.time()
        lrm = rl_lr_multiplier(step, num_steps)
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * lrm
        rewards_sum, lengths = torch.zeros((), dtype=torch.float64), []
        try:
            for j in range(per_rank):
                index = (step * args.examples_per_step + rank * per_rank + j) % len(train_task)
                ids, mask, rewards = rollouts(engine, tokenizer, train_task, index, args, (step, rank))
                advantages = (rewards - rewards.mean()).to(device)
                rewards_sum += rewards.sum().double()
                lengths.append(mask.sum(1).float().mean().item())
                inputs, targets = ids[:, :-1].to(device), ids[:, 1:].masked_fill(~mask[:, 1:], -1).to(device)
                for b in range(0, len(ids), args.device_batch_size):
                    rows = slice(b, b + args.device_batch_size)
                    logits = model(inputs[rows])
                    logp = -F.cross_entropy(logits.float().flatten(0, 1), targets[rows].flatten(), ignore_index=-1,
                                            reduction="none").view_as(targets[rows])
                    valid = (targets[rows] >= 0).sum().clamp(min=1)
                    objective = (logp * advantages[rows, None]).sum() / (valid * passes * per_rank)
                    (-objective).backward()
        except torch.OutOfMemoryError:
            raise out_of_memory(args.device_batch_size) from None
        optimizer.step()
        model.zero_grad(set_to_none=True)
        stats = torch.tensor([rewards_sum.item(), sum(lengths)], dtype=torch.float64, device=device)
        if dist.is_initialized():
            dist.all_reduce(stats)
        mean_reward = stats[0].item() / (args.examples_per_step * args.num_samples)
        mean_length = stats[1].item() / args.examples_per_step
        loop["mean_reward"] = mean_reward
        dt = time.time() - t0
        step += 1
        loop["training_time"] += dt
        eta = loop["training_time"] / max(1, step - (resumed_at or 0)) * (num_steps - step)
        bar.update(1)
        say(f"step {step:05d}/{num_steps} | reward {mean_reward:.4f} | answer tokens {mean_length:.0f} | "
            f"lrm {lrm:.2f} | dt {dt:.1f}s | eta {eta / 60:.1f}m")
        log({"step": step, "reward": mean_reward, "sequence_length": mean_length, "lrm": lrm, "dt": dt})
    bar.close()
    if master:
        plot_training_curves(metrics_path, folder / "reward_curve.png", title=f"rl {tag}",
                             left=("reward", "mean reward"), right=("pass@1", "pass@1 (test)"))

    if not last:
        compute_cleanup()
        stop.exit_stopped(step, folder)
    report.log_section("Chat RL", {"model tag": tag,
                                   "source": f"{args.source} {source_tag} step {source_meta['step']}",
                                   "task": args.task, "steps": step, "final mean reward": loop["mean_reward"],
                                   **loop["pass_at_k"], "training time (min)": loop["training_time"] / 60})
    print0(f"done: {step} steps, " + ", ".join(f"{k} {v:.4f}" for k, v in loop["pass_at_k"].items())
           + f"; saved in {folder}")
    compute_cleanup()


if __name__ == "__main__":
    from primechat.cli import run_module
    run_module(add_arguments, main)
