"""Chat-model evaluation: `primechat eval chat -i sft`, on CPU, one GPU or under torchrun.

Each task on its test split: ChatCORE's five (ARC-Easy, ARC-Challenge, MMLU, GSM8K, HumanEval, the default) and every
generated task that scores answers (tasks/mixture.py's GENERATED; Arithmetic, offline, is what the demo's RL trains on).
- categorical (ARC-Easy, ARC-Challenge, MMLU): the prompt is the question with the assistant turn opened; the model's
  answer is whichever allowed letter has the highest logit at that position. No sampling, so any model gets a clean
  reading, even one that would ramble instead of writing a letter.
- generative (GSM8K, HumanEval, the generated tasks): the Engine samples up to --max-new-tokens per reply (with the
  calculator tool), and the task checks the reply. With -n N samples per problem the score is pass@N: solved if any
  sample is.
ChatCORE, when its five ran, is the mean over them of the accuracy rescaled so that chance is 0 and perfect is 1.
Those five are nanochat's Oct 2025 definition, the one its published ChatCORE figures use (nanochat added SpellingBee
from Nov 2025 and removed the task again in Jul 2026); other tasks never enter it, so it stays comparable.
Problems are strided over ranks and the counts summed, so every process count gives the same figures. Results are
printed as a table and written to the report section "Chat evaluation <source>".

evaluate_categorical, sample_outcomes and pass_at_k are also what SFT and RL training call for their evaluations.
"""

import os
import time
from functools import partial
from typing import NamedTuple

import torch
import torch.distributed as dist

from primechat import report
from primechat.common import UserError, compute_cleanup, compute_init, print0, progress
from primechat.engine import Engine
from primechat.tasks.arc import ARC
from primechat.tasks.gsm8k import GSM8K
from primechat.tasks.hub import MissingDataset
from primechat.tasks.humaneval import HumanEval
from primechat.tasks.mixture import EVAL_SIZE, GENERATED, generated_task
from primechat.tasks.mmlu import MMLU
from primechat.train.checkpoint import STAGE_DIRS, check_model_tag, default_tag, load_model

WORDS_URL = "https://raw.githubusercontent.com/dwyl/english-words/master/words_alpha.txt"  # nanochat's word list

# name -> factory of the test split, given the word-list source (only tasks that need one use it)
TASKS = {
    "ARC-Easy": lambda words: ARC("ARC-Easy", "test"),
    "ARC-Challenge": lambda words: ARC("ARC-Challenge", "test"),
    "MMLU": lambda words: MMLU("test"),
    "GSM8K": lambda words: GSM8K("test"),
    "HumanEval": lambda words: HumanEval("test"),
    # the generated tasks that score answers (tasks/mixture.py's GENERATED), under their class names
    **{task.__name__: partial(generated_task, name, size=EVAL_SIZE, split="test")
       for name, task in GENERATED.items() if task.eval_type},
}
# the names a mixture and `train rl --task` use, taken too: spelling-bee is SpellingBee
ALIASES = {"gsm8k": "GSM8K", **{name: task.__name__ for name, task in GENERATED.items() if task.eval_type}}
# ChatCORE's tasks and their random baselines: nanochat's Oct 2025 definition (see above), so a task added to TASKS
# leaves ChatCORE as it is
CHATCORE_BASELINES = {"ARC-Easy": 0.25, "ARC-Challenge": 0.25, "MMLU": 0.25, "GSM8K": 0.0, "HumanEval": 0.0}


def task_name(name: str) -> str:
    """The TASKS name of a task, given as that or as an alias (ALIASES)."""
    name = ALIASES.get(name, name)
    if name not in TASKS:
        raise UserError(f"unknown task {name!r}: choose from {'|'.join(TASKS)} (several separated by |), or by the "
                        f"name a mixture and `train rl --task` use: {', '.join(ALIASES)}")
    return name


def task_names(text: str) -> list[str]:
    """The tasks of a '|'-separated list (-a, --metrics), each once, by their TASKS names."""
    return list(dict.fromkeys(task_name(n.strip()) for n in text.split("|") if n.strip()))


def load_task(name: str, words: str = WORDS_URL, flag: str = "-a/--task-name"):
    """The test split of a task of TASKS (or an alias), shuffled with seed 42 as nanochat's. A dataset missing from
    the Hub or mirror names `flag`, the one that picks the tasks: the dataset's name is ours, not the user's to fix."""
    try:
        return TASKS[task_name(name)](words)
    except MissingDataset as e:
        raise UserError(f"{name}: {e.problem}; pick tasks without it with {flag}") from None


def num_problems(task, max_problems: int | None) -> int:
    """How many problems are evaluated: the first max_problems of the task (None: all). Rank r of N takes problems
    r, r + N, …"""
    return len(task) if max_problems is None else min(len(task), max_problems)


def sum_over_ranks(counts: list[int], device, world: int) -> list[int]:
    # world == 1 skips the collective even inside a process group, so that one rank may evaluate alone
    counts = torch.tensor(counts, dtype=torch.long, device=device)
    if world > 1 and dist.is_initialized():
        dist.all_reduce(counts, op=dist.ReduceOp.SUM)
    return counts.tolist()


class Overflow(NamedTuple):
    """The problems of a task whose prompt did not fit the context the model was trained on (`count` of `total`).
    They are run past it as nanochat does, where the model is weaker, up to the length it can run at all (`runnable`,
    its RoPE tables); the `beyond` ones longer than that were handled as `fate` says."""
    count: int
    total: int
    trained: int
    runnable: int
    beyond: int
    fate: str

    def summary(self) -> str:
        text = f"{self.count} of {self.total} problems did not fit the model's context ({self.trained:,} tokens)"
        beyond = f"; {self.beyond} longer than the {self.runnable:,} it can run at all {self.fate}" if self.beyond \
            else ""
        return f"{text}: run past it as nanochat does, where the model is weaker{beyond}"


# --------------------------------------------------------------------------------------------------------------------
# Categorical: the best-scoring allowed letter

def letter_ids(tokenizer, letters: list[str], task_name: str) -> list[int]:
    ids = []
    for letter in letters:
        tokens = tokenizer.encode(letter)
        if len(tokens) != 1:
            raise UserError(f"{task_name}: the answer label {letter!r} is {len(tokens)} tokens in this tokenizer; "
                            "categorical evaluation needs every label to be a single token")
        ids.append(tokens[0])
    return ids


@torch.inference_mode()
def categorical_results(model, tokenizer, task, batch_size: int = 8, max_problems: int | None = None,
                        rank: int = 0, world: int = 1) -> tuple[float, Overflow]:
    """(accuracy, overflow) on a multiple-choice task: per problem, argmax of the logits of its letters after the
    prompt. A prompt longer than the trained context is read whole, as nanochat does, up to the RoPE tables' length
    (model.cos, Engine.context: what the model can run); longer ones keep their end."""
    device = next(model.parameters()).device
    trained, runnable = model.config.sequence_len, model.cos.size(1)
    indices = range(rank, num_problems(task, max_problems), world)
    batches = [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]
    correct = over = cut = 0
    for batch in progress(batches, desc=task.name, unit="batch", leave=False) if rank == 0 else batches:
        conversations = [task[i] for i in batch]
        prompts = [tokenizer.render_for_completion(c) for c in conversations]
        over += sum(len(prompt) > trained for prompt in prompts)
        cut += sum(len(prompt) > runnable for prompt in prompts)
        # cropped from the left: the question's last lines and the opened answer turn stay
        prompts = [prompt[-runnable:] for prompt in prompts]
        ids = torch.full((len(prompts), max(map(len, prompts))), tokenizer.bos_id, dtype=torch.long)
        for row, prompt in enumerate(prompts):  # right-padded: each row's last prompt position is its own
            ids[row, :len(prompt)] = torch.tensor(prompt)
        ends = torch.tensor([len(prompt) - 1 for prompt in prompts])
        logits = model(ids.to(device), at=ends)[:, 0]  # only where each prompt ends: B × vocab, not B × T × vocab
        for row, conversation in enumerate(conversations):
            letters = conversation["letters"]
            scores = logits[row, letter_ids(tokenizer, letters, task.name)]
            correct += letters[scores.argmax().item()] == conversation["answer"]
    correct, total, over, cut = sum_over_ranks([correct, len(indices), over, cut], device, world)
    return correct / max(total, 1), Overflow(over, total, trained, runnable, cut, "were cropped from the left")


def evaluate_categorical(*args, **kwargs) -> float:
    """The accuracy of categorical_results (what training's evaluations log)."""
    return categorical_results(*args, **kwargs)[0]


# --------------------------------------------------------------------------------------------------------------------
# Generative: sample replies, let the task check them

def sample_outcomes(engine, task, index: int, num_samples: int, max_new_tokens: int, temperature: float,
                    top_k: int | None, seed: int) -> list[bool]:
    """Whether each of num_samples replies to problem `index` is correct. As nanochat, a reply may run past the
    trained context, up to what the model can run (Engine.context); a prompt that leaves no room there is wrong."""
    conversation = task[index]
    tokenizer = engine.tokenizer
    prompt = tokenizer.render_for_completion(conversation)
    if len(prompt) >= engine.context:
        return [False] * num_samples
    rows, _ = engine.generate_batch(prompt, num_samples, max_tokens=max_new_tokens, temperature=temperature,
                                    top_k=top_k, seed=seed)
    return [task.evaluate(conversation, tokenizer.decode(row[len(prompt):])) for row in rows]


def generative_results(model, tokenizer, task, num_samples: int = 1, max_new_tokens: int = 512,
                       temperature: float = 0.0, top_k: int | None = 50, max_problems: int | None = None,
                       rank: int = 0, world: int = 1) -> tuple[float, Overflow]:
    """(pass@num_samples, overflow): the share of problems that at least one sample solves."""
    engine = Engine(model, tokenizer)
    trained = model.config.sequence_len
    indices = range(rank, num_problems(task, max_problems), world)
    passed = over = lost = 0
    for i in progress(indices, desc=task.name, unit="problem", leave=False) if rank == 0 else indices:
        length = len(tokenizer.render_for_completion(task[i]))
        over += length >= trained  # no room for a reply inside the trained context
        lost += length >= engine.context
        # seeded by the problem, not the rank, so the figure does not depend on the number of processes
        passed += any(sample_outcomes(engine, task, i, num_samples, max_new_tokens, temperature, top_k, seed=i))
    passed, total, over, lost = sum_over_ranks([passed, len(indices), over, lost],
                                               next(model.parameters()).device, world)
    return passed / max(total, 1), Overflow(over, total, trained, engine.context, lost, "were scored wrong")


def evaluate_generative(*args, **kwargs) -> float:
    """The pass@num_samples of generative_results (what training's evaluations log)."""
    return generative_results(*args, **kwargs)[0]


def pass_at_k(outcomes: list[list[bool]], k: int) -> float:
    """The share of problems with a correct sample among their first k (outcomes: one list of samples per problem)."""
    return sum(any(samples[:k]) for samples in outcomes) / max(len(outcomes), 1)


def chatcore(accuracies: dict[str, float]) -> float | None:
    """Mean over ChatCORE's tasks of (accuracy - baseline) / (1 - baseline); None unless each of them was evaluated.
    Other tasks in `accuracies` are left out."""
    if any(name not in accuracies for name in CHATCORE_BASELINES):
        return None
    return sum((accuracies[name] - baseline) / (1 - baseline)
               for name, baseline in CHATCORE_BASELINES.items()) / len(CHATCORE_BASELINES)


def replaced_note(title: str, tasks: list[str], max_problems: int | None) -> str | None:
    """A line saying what the report section `title` held, when this run (other tasks or another problem cap) is about
    to replace it: the card keeps one chat evaluation per stage, and a quick check should not erase a full one
    unnoticed."""
    path = report.section_path(title)
    if not path.exists():
        return None
    old = report.section_values(path.read_text())
    old_tasks, old_cap = report.chat_scores(old), old.get("max problems", "all").replace(",", "")
    if set(old_tasks) == set(tasks) and old_cap == str(max_problems or "all"):
        return None
    cap = "all problems" if old_cap == "all" else f"up to {old_cap} problems each"
    return f"replaced the report's {title} section (was {len(old_tasks)} tasks, {cap})"


# --------------------------------------------------------------------------------------------------------------------
# The command

def add_arguments(p):
    p.add_argument("-i", "--source", required=True, choices=tuple(STAGE_DIRS), help="which stage's model")
    p.add_argument("-a", "--task-name", default=None,  # None: the help names the default once, in words
                   help=f"tasks separated by |, of {'|'.join(TASKS)}, or by the name a mixture and `train rl --task` "
                        f"use ({'|'.join(ALIASES)}) (default: ChatCORE's five, {'|'.join(CHATCORE_BASELINES)})")
    p.add_argument("-d", "--dtype", choices=("float32", "bfloat16", "float16"),
                   help="compute dtype (default: bfloat16 on GPUs that have it, else float32; or $PRIMECHAT_DTYPE)")
    p.add_argument("-t", "--temperature", type=float, default=0.0,
                   help="sampling temperature for generative tasks (0: greedy)")
    p.add_argument("-m", "--max-new-tokens", type=int, default=512, help="longest reply (generative tasks)")
    p.add_argument("-n", "--num-samples", type=int, default=1, help="samples per problem: the score is pass@n")
    p.add_argument("-k", "--top-k", type=int, default=50, help="sample among the k likeliest tokens (0: all)")
    p.add_argument("-b", "--batch-size", type=int, default=8, help="problems per forward pass (categorical tasks)")
    p.add_argument("-g", "--model-tag", default=None, help="checkpoint folder (default: the deepest d<N>)")
    p.add_argument("-s", "--step", type=int, default=None, help="checkpoint step (default: the latest)")
    p.add_argument("-x", "--max-problems", type=int, default=None, help="first problems per task (default: all)")
    p.add_argument("--words", default=WORDS_URL, help="word list of the tasks that need one: a URL, a file, or builtin "
                   "(offline)")
    p.add_argument("--device-type", default=None, help="cuda|cpu|mps (default: autodetect)")


def main(args):
    args.task_name = args.task_name or "|".join(CHATCORE_BASELINES)
    names = task_names(args.task_name)
    if not names:
        raise UserError(f"--task-name {args.task_name!r} names no task: give some of {'|'.join(TASKS)}")
    if args.max_problems is not None and args.max_problems < 1:
        raise UserError(f"--max-problems {args.max_problems}: give at least 1, or leave it out for all problems")
    if args.num_samples < 1 or args.batch_size < 1 or args.max_new_tokens < 1:
        raise UserError("--num-samples, --batch-size and --max-new-tokens must be at least 1")
    if args.temperature < 0 or args.top_k < 0:
        raise UserError("--temperature and --top-k must be >= 0 (temperature 0: greedy; top-k 0: no cut)")
    # Every task's data (Hub datasets, a word list) first: offline, the error comes now, not after an
    # hour of other tasks whose scores it would throw away; and before the model is loaded.
    check_model_tag(args.source, args.model_tag or default_tag(args.source))  # a missing model first: cheaper
    tasks = {name: load_task(name, args.words) for name in names}
    if args.dtype:  # what load_model's compute_dtype reads, so the flag overrides the device's default and the variable
        os.environ["PRIMECHAT_DTYPE"] = args.dtype
    device, rank, world = compute_init(args.device_type)
    model, tokenizer, meta = load_model(args.source, args.model_tag, args.step, device)
    slug = f"{args.source}_{args.model_tag or default_tag(args.source)}_{meta['step']:06d}"
    dtype = str(model.activation_dtype(device)).removeprefix("torch.")
    print0(f"evaluating {slug} on {device} in {dtype} ({world} process{'es' if world > 1 else ''}): {', '.join(names)}")

    accuracies, rows, overflows = {}, [], {}
    for name, task in tasks.items():
        t0 = time.time()
        if task.eval_type == "categorical":
            accuracy, overflow = categorical_results(model, tokenizer, task, args.batch_size, args.max_problems,
                                                     rank, world)
        else:
            accuracy, overflow = generative_results(model, tokenizer, task, args.num_samples, args.max_new_tokens,
                                                    args.temperature, args.top_k, args.max_problems, rank, world)
        accuracies[name] = accuracy
        rows.append((name, accuracy, num_problems(task, args.max_problems), time.time() - t0))
        print0(f"{name}: {accuracy:.4f}")
        if overflow.count:  # never silently: their score is not what a longer-context model would get
            print0(f"{name}: {overflow.summary()}")
            overflows[name] = overflow

    width = max(len("ChatCORE"), *(len(r[0]) for r in rows))
    lines = [f"{'Task':<{width}}  {'Accuracy':>8}  {'Problems':>8}  {'Time':>7}"]
    lines += [f"{name:<{width}}  {acc:>8.4f}  {n:>8}  {seconds:>6.1f}s" for name, acc, n, seconds in rows]
    score = chatcore(accuracies)
    if score is not None:
        lines.append(f"{'ChatCORE':<{width}}  {score:>8.4f}")
    print0("\n".join(lines))
    if args.num_samples > 1:
        print0(f"generative tasks: pass@{args.num_samples}")

    section = {"model": slug, "max problems": args.max_problems or "all", "num samples": args.num_samples,
               "temperature": args.temperature, **accuracies,
               # not a number, so the card's summary reads it as a note, not as a task's score
               **{f"{name} over context": o.summary() for name, o in overflows.items()}}
    if score is not None:
        section["ChatCORE metric"] = score
    title = f"Chat evaluation {args.source}"
    note = replaced_note(title, list(accuracies), args.max_problems)
    report.log_section(title, section)
    if note:
        print0(note)
    compute_cleanup()


if __name__ == "__main__":
    from primechat.cli import run_module
    run_module(add_arguments, main)
