"""CORE: the DCLM benchmark score nanochat reports for base models, computed exactly as DCLM (and nanochat) do.

The bundle (core.yaml, eval_meta_data.csv, eval_data/*.jsonl) lists 22 in-context-learning tasks of three types:
- multiple_choice: one prompt per choice ("query<delim>choice"); the choice tokens are what follows the prompts'
  common token prefix; the model picks the choice with the lowest mean cross-entropy over those tokens;
- schema: one prompt per context option ("option<delim>continuation"); the scored span is the common token suffix
  (the continuation), again lowest mean loss wins;
- language_modeling: "context<delim>continuation"; correct only if greedy (argmax) prediction reproduces every
  continuation token.
Each task's examples are shuffled with Random(1337) and cropped to --max-per-task; example idx gets num_fewshot
other examples drawn with Random(1234 + idx), shown before it and separated by blank lines. Every prompt starts with
BOS, prompts of one example are padded with BOS into one batch, and models with a maximum length see prompts
cropped from the left. Accuracy is centered against the task's random baseline, (acc - rb) / (1 - rb), and CORE is
the mean centered accuracy. Keeping every one of these details is what makes our number comparable with nanochat's
published ones (GPT-2 124M 0.1139, d20 0.2219).

A bundle missing some tasks' data files still gives a number, labelled `CORE (partial, N/22 tasks)` so nobody
compares it with a full CORE.
"""

import csv
import http.client
import json
import os
import random
import shutil
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from typing import NamedTuple
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from filelock import FileLock

from primechat.common import UserError, atomic_path, dist_info, home_dir, progress

BUNDLE_URL = "https://karpathy-public.s3.us-west-2.amazonaws.com/eval_bundle.zip"  # nanochat's copy of DCLM's
REQUIRED_FIELDS = {"multiple_choice": ("query", "choices", "gold"),
                   "schema": ("context_options", "continuation", "gold"),
                   "language_modeling": ("context", "continuation")}


# --------------------------------------------------------------------------------------------------------------------
# The bundle: downloaded once, unpacked atomically under a lock

def _download(url: str, dest: Path) -> None:
    with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as f:
        total = int(response.headers.get("Content-Length") or 0) or None
        with progress(total=total, unit="B", unit_scale=True, desc="eval_bundle.zip") as bar:
            while chunk := response.read(1 << 20):
                f.write(chunk)
                bar.update(len(chunk))
        if total is not None and f.tell() != total:
            raise ConnectionError(f"got {f.tell()} of {total} bytes")


def _unpack(zip_path: Path, into: Path) -> None:
    with zipfile.ZipFile(zip_path) as z:
        if z.testzip() is not None:
            raise zipfile.BadZipFile("a member fails its CRC check")
        z.extractall(into)


def ensure_bundle(url: str | None = None) -> Path:
    """<home>/eval_bundle, downloaded and unpacked first if absent. Concurrent callers (ranks, other runs) wait on a
    file lock, so only one downloads; the folder appears by a rename, complete or not at all. A failed or corrupt
    download is tried once more, then it is a UserError."""
    home = home_dir()
    bundle = home / "eval_bundle"
    if (bundle / "core.yaml").exists():
        return bundle
    url = url or BUNDLE_URL
    with FileLock(home / "eval_bundle.lock"):
        if (bundle / "core.yaml").exists():  # another process finished it while we waited
            return bundle
        for attempt in (1, 2):
            with tempfile.TemporaryDirectory(dir=home, prefix=".eval_bundle.") as tmp:
                tmp = Path(tmp)
                try:
                    _download(url, tmp / "eval_bundle.zip")
                    _unpack(tmp / "eval_bundle.zip", tmp / "unzipped")
                except urllib.error.HTTPError as e:
                    raise UserError(f"cannot download the CORE bundle from {url}: HTTP {e.code} {e.reason}") from None
                except (OSError, http.client.HTTPException, zipfile.BadZipFile, ValueError) as e:
                    if attempt == 2:
                        raise UserError(f"cannot get a valid CORE bundle from {url} ({e}), twice: check the address "
                                        f"(--bundle-url, PRIMECHAT_EVAL_BUNDLE_URL) and the network") from None
                    print(f"CORE bundle download failed ({e}); downloading it again", flush=True)
                    continue
                unpacked = tmp / "unzipped" / "eval_bundle"
                if not (unpacked / "core.yaml").exists():
                    raise UserError(f"{url} is not a CORE bundle: it has no eval_bundle/core.yaml")
                shutil.rmtree(bundle, ignore_errors=True)  # a half-deleted folder without core.yaml
                unpacked.rename(bundle)
                return bundle


def bundle_for(url: str | None, max_per_task: int, flag: str = "--max-per-task") -> Path:
    """The bundle for an evaluation of at most max_per_task examples per task (-1: all; the user's flag), checked
    first: each example draws its few-shot examples from the others, so a task needs more examples than shots.
    url: --bundle-url, else $PRIMECHAT_EVAL_BUNDLE_URL, else nanochat's copy."""
    if max_per_task == 0 or max_per_task < -1:
        raise UserError(f"{flag} {max_per_task}: give a number of examples, or -1 for all")
    bundle = ensure_bundle(url or os.environ.get("PRIMECHAT_EVAL_BUNDLE_URL") or BUNDLE_URL)
    if max_per_task > 0:
        shots = max((task.num_fewshot for task in load_tasks(bundle)), default=0)
        if max_per_task <= shots:
            raise UserError(f"{flag} {max_per_task} is too few: the {shots}-shot tasks draw their shots from the "
                            f"other examples, so give {shots + 1} or more")
    return bundle


# --------------------------------------------------------------------------------------------------------------------
# Tasks and their data

@dataclass
class Task:
    label: str
    task_type: str
    dataset_uri: str
    num_fewshot: int
    continuation_delimiter: str
    random_baseline: float  # percent


def load_tasks(bundle: Path) -> list[Task]:
    """The tasks core.yaml lists, in its order, with their random baselines from eval_meta_data.csv."""
    try:
        config = yaml.safe_load((bundle / "core.yaml").read_text())
        with open(bundle / "eval_meta_data.csv", newline="") as f:
            baselines = {row["Eval Task"]: float(row["Random baseline"]) for row in csv.DictReader(f)}
        tasks = [Task(label=t["label"], task_type=t["icl_task_type"], dataset_uri=t["dataset_uri"],
                      num_fewshot=t["num_fewshot"][0], continuation_delimiter=t.get("continuation_delimiter", " "),
                      random_baseline=baselines[t["label"]]) for t in config["icl_tasks"]]
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError, IndexError) as e:
        raise UserError(f"the CORE bundle in {bundle} is damaged ({type(e).__name__}: {e}): delete the folder to "
                        f"download it again") from None
    for t in tasks:
        if t.task_type not in REQUIRED_FIELDS:
            raise UserError(f"{bundle / 'core.yaml'}: task {t.label} has unknown type {t.task_type!r}")
    return tasks


def load_task_data(path: Path, task_type: str, max_per_task: int = -1) -> list[dict]:
    """The task's examples, shuffled with Random(1337) and cropped to max_per_task (-1: all). Every row is checked,
    so a bad one is reported with its file and line rather than surfacing as a crash mid-evaluation."""
    data = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            try:
                row = json.loads(line.strip())
                missing = [k for k in REQUIRED_FIELDS[task_type] if k not in row]
                if missing:
                    raise ValueError(f"missing field(s) {', '.join(missing)} for a {task_type} task")
                if task_type != "language_modeling":
                    options = row["choices" if task_type == "multiple_choice" else "context_options"]
                    if not isinstance(row["gold"], int) or not 0 <= row["gold"] < len(options):
                        raise ValueError(f"gold {row['gold']!r} is not an index into its {len(options)} options")
            except (ValueError, TypeError, AttributeError) as e:
                raise UserError(f"{path} line {lineno}: bad row ({e})") from None
            data.append(row)
    random.Random(1337).shuffle(data)
    return data[:max_per_task] if max_per_task > 0 else data


# --------------------------------------------------------------------------------------------------------------------
# Prompts (DCLM's Jinja templates, written out in Python: same strings)

def render_prompts_mc(item, delim, fewshot):
    shots = "".join(f"{ex['query']}{delim}{ex['choices'][ex['gold']]}\n\n" for ex in fewshot)
    return [f"{shots}{item['query']}{delim}{choice}" for choice in item["choices"]]


def render_prompts_schema(item, delim, fewshot):
    shots = "".join(f"{ex['context_options'][ex['gold']]}{delim}{ex['continuation']}\n\n" for ex in fewshot)
    return [f"{shots}{option}{delim}{item['continuation']}" for option in item["context_options"]]


def render_prompts_lm(item, delim, fewshot):
    """[prompt without the continuation, prompt with it]. The first is stripped: a trailing space would otherwise be
    merged into the continuation's first token, and the prompt would not be a token prefix of the full one."""
    shots = "".join(f"{ex['context'].strip()}{delim}{ex['continuation']}\n\n" for ex in fewshot)
    without = f"{shots}{item['context'].strip()}{delim}"
    return [without.strip(), without + item["continuation"]]


def common_length(seqs: list[list[int]], direction: str) -> int:
    """Length of the token prefix (left) or suffix (right) that all sequences share."""
    n = min(len(s) for s in seqs)
    positions = range(n) if direction == "left" else range(-1, -n - 1, -1)
    for i, pos in enumerate(positions):
        if any(s[pos] != seqs[0][pos] for s in seqs):
            return i
    return n


def prepare_example(idx: int, data: list[dict], task: Task, encode, bos: int, max_seq_len: int | None = None):
    """(token sequences, scored span starts, span ends) of example idx, BOS-prefixed and cropped from the left to
    max_seq_len. encode(list of texts) -> list of token lists (no specials added)."""
    item = data[idx]
    fewshot = []
    if task.num_fewshot > 0:
        rng = random.Random(1234 + idx)
        others = [i for i in range(len(data)) if i != idx]
        fewshot = [data[i] for i in rng.sample(others, task.num_fewshot)]
    render = {"multiple_choice": render_prompts_mc, "schema": render_prompts_schema,
              "language_modeling": render_prompts_lm}[task.task_type]
    tokens = [[bos] + ids for ids in encode(render(item, task.continuation_delimiter, fewshot))]
    if task.task_type == "multiple_choice":  # the choices differ after the shared prompt
        start = common_length(tokens, "left")
        starts, ends = [start] * len(tokens), [len(t) for t in tokens]
    elif task.task_type == "schema":  # the options differ before the shared continuation
        suffix = common_length(tokens, "right")
        starts, ends = [len(t) - suffix for t in tokens], [len(t) for t in tokens]
    else:
        without, with_ = tokens
        if not (len(without) < len(with_) and with_[:len(without)] == without):
            raise UserError(f"{task.label} example {idx}: the prompt's tokens are not a prefix of the prompt with its "
                            f"continuation, so the continuation cannot be located")
        tokens, starts, ends = [with_], [len(without)], [len(with_)]
    if max_seq_len is not None:
        tokens, starts, ends = crop_left(tokens, starts, ends, max_seq_len, f"{task.label} example {idx}")
    return tokens, starts, ends


def crop_left(tokens, starts, ends, max_seq_len: int, where: str):
    """The sequences cut from the left to max_seq_len tokens, their scored spans moved with them."""
    crops = [max(0, len(t) - max_seq_len) for t in tokens]
    tokens = [t[c:] for t, c in zip(tokens, crops)]
    starts = [s - c for s, c in zip(starts, crops)]
    ends = [e - c for e, c in zip(ends, crops)]
    if min(starts) < 1:  # the first scored token must still have a token before it
        raise UserError(f"{where}: the scored tokens alone exceed the model's {max_seq_len}-token limit")
    return tokens, starts, ends


# --------------------------------------------------------------------------------------------------------------------
# Scoring

@torch.no_grad()
def score_example(model, tokens, starts, ends, task_type: str, gold: int | None, pad: int, device) -> bool:
    """Whether the model gets one example right. model(ids) -> logits (B, T, V)."""
    width = max(len(t) for t in tokens)
    ids = torch.full((len(tokens), width), pad, dtype=torch.long)
    for i, t in enumerate(tokens):
        ids[i, :len(t)] = torch.tensor(t)
    ids = ids.to(device)
    logits = model(ids).float()
    # losses[:, j] and predictions[:, j] are about token j + 1, hence the spans shifted by one below
    losses = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
    if task_type == "language_modeling":
        predicted = logits[0, starts[0] - 1:ends[0] - 1].argmax(dim=-1)
        return bool(torch.equal(predicted, ids[0, starts[0]:ends[0]]))
    mean_losses = torch.stack([losses[i, s - 1:e - 1].mean() for i, (s, e) in enumerate(zip(starts, ends))])
    return mean_losses.argmin().item() == gold  # one host sync per example; ties go to the first, as DCLM's


class TaskScore(NamedTuple):
    accuracy: float
    over_context: int  # examples longer than the model's trained context (run past it, as nanochat does)
    cropped: int  # examples longer than the model can run at all, cut from the left


def evaluate_task(model, data: list[dict], task: Task, encode, bos: int, device, max_seq_len=None,
                  trained_context=None) -> TaskScore:
    """Accuracy on a task, and how many examples went past the trained context or were cropped to max_seq_len.
    Rank r of N takes examples r, r+N, …; the per-example results are summed across ranks."""
    _, rank, _, world = dist_info()
    results = torch.zeros(len(data), 3, dtype=torch.float32, device=device)  # correct, over context, cropped
    indices = range(rank, len(data), world)
    for idx in progress(indices, desc=task.label, unit="ex", leave=False) if rank == 0 else indices:
        tokens, starts, ends = prepare_example(idx, data, task, encode, bos)
        longest = max(len(t) for t in tokens)
        if max_seq_len is not None and longest > max_seq_len:
            tokens, starts, ends = crop_left(tokens, starts, ends, max_seq_len, f"{task.label} example {idx}")
        correct = score_example(model, tokens, starts, ends, task.task_type, data[idx].get("gold"), bos, device)
        results[idx] = torch.tensor([correct, trained_context is not None and longest > trained_context,
                                     max_seq_len is not None and longest > max_seq_len])
    if world > 1 and dist.is_initialized():
        dist.all_reduce(results, op=dist.ReduceOp.SUM)
    correct, over, cropped = results.sum(dim=0).tolist()
    return TaskScore(correct / len(data), int(over), int(cropped))


def centered(accuracy: float, random_baseline: float) -> float:
    """Accuracy rescaled so that chance (random_baseline, in percent) is 0 and perfect is 1."""
    rb = 0.01 * random_baseline
    return (accuracy - rb) / (1.0 - rb)


@dataclass
class CoreResult:
    rows: list[dict]  # {"task", "type", "shots", "examples", "accuracy", "centered", "seconds", "over_context",
    # "cropped"} per evaluated task
    missing: list[str]  # labels of tasks whose data file is absent
    total_tasks: int
    core: float

    @property
    def label(self) -> str:
        if self.missing:
            return f"CORE (partial, {len(self.rows)}/{self.total_tasks} tasks)"
        return "CORE"

    def context_notes(self, trained_context: int | None, max_seq_len: int | None) -> dict[str, str]:
        """What the score owes to prompts longer than the model was trained on, for the screen and the report."""
        notes = {}
        examples = sum(r["examples"] for r in self.rows)
        over = [r for r in self.rows if r["over_context"]]
        if over:
            count = sum(r["over_context"] for r in over)
            notes["over context"] = (f"{count:,} of {examples:,} examples ({len(over)} of {len(self.rows)} tasks) are "
                                     f"longer than the model's {trained_context:,}-token context: run past it as "
                                     f"nanochat does, where the model is weaker")
        cropped = sum(r["cropped"] for r in self.rows)
        if cropped:
            notes["cropped"] = (f"{cropped:,} examples longer than {max_seq_len:,} tokens (all the model can run) "
                                f"were cropped from the left")
        return notes


def evaluate_core(model, encode, bos: int, device, bundle: Path, max_per_task: int = -1, max_seq_len=None,
                  strict: bool = False, log=print, abandon=lambda: False, trained_context=None) -> CoreResult | None:
    """Evaluate every task of the bundle whose data file exists (all of them, or a UserError, if strict). Prompts
    are cropped to max_seq_len; those longer than trained_context are counted. abandon() is asked before each task
    (a training run's stop: the save should not wait for 22 tasks); yes gives None."""
    tasks = load_tasks(bundle)
    missing = [t.label for t in tasks if not (bundle / "eval_data" / t.dataset_uri).exists()]
    if len(missing) == len(tasks):
        raise UserError(f"the CORE bundle in {bundle} has the data of none of its tasks: delete the folder to "
                        f"download it again")
    if missing and strict:
        raise UserError(f"--strict: the CORE bundle in {bundle} lacks the data of {len(missing)} of {len(tasks)} "
                        f"tasks ({', '.join(missing)})")
    if missing:
        log(f"the CORE bundle lacks the data of {', '.join(missing)}: the result is a partial CORE")
    rows = []
    for task in tasks:
        if task.label in missing:
            continue
        if abandon():
            return None
        t0 = time.time()
        data = load_task_data(bundle / "eval_data" / task.dataset_uri, task.task_type, max_per_task)
        if len(data) <= task.num_fewshot:
            raise UserError(f"{task.label} has {len(data)} examples, too few for its {task.num_fewshot}-shot "
                            f"prompts (each draws its shots from the others): use --max-per-task "
                            f"{task.num_fewshot + 1} or more")
        score = evaluate_task(model, data, task, encode, bos, device, max_seq_len, trained_context)
        row = {"task": task.label, "type": task.task_type, "shots": task.num_fewshot, "examples": len(data),
               "accuracy": score.accuracy, "centered": centered(score.accuracy, task.random_baseline),
               "seconds": time.time() - t0, "over_context": score.over_context, "cropped": score.cropped}
        over = f"  {score.over_context} over context" if score.over_context else ""
        over += f", {score.cropped} cropped" if score.cropped else ""
        log(f"{task.label:<34} {task.num_fewshot:>2}-shot {task.task_type:<17} {len(data):>5} ex  "
            f"accuracy {score.accuracy:.4f}  centered {row['centered']:+.4f}  {row['seconds']:.1f}s{over}")
        rows.append(row)
    core = sum(r["centered"] for r in rows) / len(rows)
    return CoreResult(rows=rows, missing=missing, total_tasks=len(tasks), core=core)


def write_csv(result: CoreResult, path: Path) -> None:
    """nanochat's base_eval CSV: Task, Accuracy, Centered per task, then the CORE row (no accuracy)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Task", "Accuracy", "Centered"])
        for r in result.rows:
            writer.writerow([r["task"], f"{r['accuracy']:.6f}", f"{r['centered']:.6f}"])
        writer.writerow([result.label, "", f"{result.core:.6f}"])


def markdown_table(result: CoreResult) -> str:
    lines = ["| Task | Accuracy | Centered |", "|---|---|---|"]
    lines += [f"| {r['task']} | {r['accuracy']:.4f} | {r['centered']:.4f} |" for r in result.rows]
    lines.append(f"| {result.label} | | {result.core:.4f} |")
    return "\n".join(lines)
