"""Chat-training mixtures as YAML files, and `primechat data mixture FILE` to preview one.

A mixture lists its sources per split; the shipped ones are configs/mid.yaml, configs/sft.yaml (nanochat's) and
configs/demo-chat.yaml (offline). Each source is a Hub dataset, a JSONL file of conversations, or a generated task:

    description: what this mixture is for
    words: builtin                    # word list of the tasks that need one: builtin, a URL or a file (tasks/words.py)
    train:
      - dataset: HuggingFaceTB/smol-smoltalk     # any Hub dataset repo
        split: train
        stop: 10000                   # slice start/stop/step of the (shuffled) rows
      - dataset: cais/mmlu
        subset: auxiliary_train       # the Hub's subset (config) folder
        split: train
      - dataset: someone/instructions
        split: train
        adapter: chat                 # how rows become conversations; known repos pick theirs (ADAPTERS)
        columns: {instruction: prompt, response: completion}    # for `chat` (tasks/chat.py)
      - jsonl: identity.jsonl         # relative to this file's folder (else the shipped one), or absolute
        repeat: 2                     # listed twice: twice as many of its conversations in the mix
      - task: spelling-bee            # a generated task, by its name in GENERATED (below)
        size: 80000
    val:
      - ...

load_mixture(path) checks the whole file before it downloads anything, and every mistake is one line naming the
file, the entry and the fix. Mixture.train / Mixture.val are TaskMixtures (shuffled with seed 42, as nanochat).
"""

from dataclasses import dataclass
import sys
from pathlib import Path

import yaml

from primechat.common import CONFIGS_DIR, UserError, shipped_configs
from primechat.tasks.arc import ARC
from primechat.tasks.arithmetic import Arithmetic
from primechat.tasks.chat import ChatTask, check_columns
from primechat.tasks.common import Task, TaskMixture
from primechat.tasks.customjson import CustomJSON
from primechat.tasks.gsm8k import GSM8K
from primechat.tasks.hub import MissingDataset
from primechat.tasks.humaneval import HumanEval
from primechat.tasks.mmlu import MMLU
from primechat.tasks.spelling import SimpleSpelling, SpellingBee
from primechat.tasks.words import FIX, load_words

ADAPTERS = {"chat": ChatTask, "mmlu": MMLU, "arc": ARC, "gsm8k": GSM8K, "humaneval": HumanEval}
KNOWN_DATASETS = {"HuggingFaceTB/smol-smoltalk": "chat", "cais/mmlu": "mmlu", "allenai/ai2_arc": "arc",
                  "openai/gsm8k": "gsm8k", "openai/openai_humaneval": "humaneval"}  # others default to `chat`
# The generated tasks, by the name a mixture's `task:` takes. The one list of them: `train rl --task` takes those that
# score answers (eval_type set) by the same name, `eval chat -a` takes those under their class name (SpellingBee).
GENERATED = {"spelling-bee": SpellingBee, "simple-spelling": SimpleSpelling, "arithmetic": Arithmetic}
EVAL_SIZE = 256  # test problems of a generated task in `eval chat` and --metrics (nanochat's SpellingBee size)
SECTIONS = ("train", "val")
SLICE = {"start", "stop", "step", "repeat", "name"}
FIELDS = {"dataset": SLICE | {"dataset", "subset", "split", "adapter", "columns", "seed"},
          "jsonl": SLICE | {"jsonl"},
          "task": SLICE | {"task", "size", "split", "seed", "words"}}


@dataclass
class Source:
    label: str  # how the preview and training logs name it
    task: Task
    repeat: int


@dataclass
class Mixture:
    path: Path
    description: str
    sources: dict[str, list[Source]]  # section ("train", "val") -> its sources

    def source_names(self, section: str = "train") -> str:
        """The section's sources as the preview names them, one line: "openai/gsm8k main train, identity.jsonl ×2"."""
        return ", ".join(s.label + (f" ×{s.repeat}" if s.repeat > 1 else "") for s in self.sources[section])

    def mix(self, section: str) -> TaskMixture:
        return TaskMixture([s.task for s in self.sources[section] for _ in range(s.repeat)])

    @property
    def train(self) -> TaskMixture:
        return self.mix("train")

    @property
    def val(self) -> TaskMixture:
        return self.mix("val")


def resolve(name: str) -> Path:
    """A mixture file: a path, or the name of a shipped one (mid, sft, demo-chat -> configs/NAME.yaml)."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    shipped = shipped_configs("train")  # configs/ also holds the speedrun presets, which are not mixtures
    if name in shipped:
        return shipped[name]
    names = ", ".join(sorted(shipped))
    raise UserError(f"mixture {name} not found: give a YAML file, or one of the shipped mixtures ({names})")


def _check_entry(entry, where: str, base: Path) -> str:
    """Validate one source entry's fields and types; returns its kind (dataset, jsonl or task)."""
    if not isinstance(entry, dict):
        raise UserError(f"{where}: expected a mapping such as `dataset: OWNER/NAME` with `split: train`")
    kinds = [k for k in FIELDS if k in entry]
    if len(kinds) != 1:
        raise UserError(f"{where}: give exactly one of `dataset:`, `jsonl:` or `task:`")
    kind = kinds[0]
    unknown = sorted(set(entry) - FIELDS[kind])
    if unknown:
        raise UserError(f"{where}: unknown field `{unknown[0]}` for a {kind} entry; its fields are "
                        f"{', '.join(sorted(FIELDS[kind]))}")
    for key in ("start", "stop", "step", "repeat", "size", "seed"):
        value = entry.get(key)
        least = 1 if key in ("step", "repeat", "size") else 0
        if key in entry and (not isinstance(value, int) or isinstance(value, bool) or value < least):
            raise UserError(f"{where}: `{key}: {value}` must be a whole number >= {least}")
    if isinstance(entry.get("start"), int) and isinstance(entry.get("stop"), int) and entry["stop"] < entry["start"]:
        raise UserError(f"{where}: `stop: {entry['stop']}` is before `start: {entry['start']}`")
    for key in ("dataset", "subset", "split", "adapter", "jsonl", "task", "words", "name"):
        if key in entry and not (isinstance(entry[key], str) and entry[key]):
            raise UserError(f"{where}: `{key}:` must be a non-empty string")
    if kind == "dataset":
        if "split" not in entry:
            raise UserError(f"{where}: missing `split:` (e.g. train, test, validation)")
        if "/" not in entry["dataset"]:
            raise UserError(f"{where}: dataset {entry['dataset']!r} must be a Hub repo id, OWNER/NAME")
        adapter = entry.get("adapter", KNOWN_DATASETS.get(entry["dataset"], "chat"))
        if adapter not in ADAPTERS:
            raise UserError(f"{where}: unknown adapter {adapter!r}; the adapters are {', '.join(ADAPTERS)}")
        if "columns" in entry:
            if adapter != "chat":
                raise UserError(f"{where}: `columns:` is for the chat adapter, not {adapter}")
            columns = entry["columns"]
            if not isinstance(columns, dict) or not all(isinstance(v, str) for v in columns.values()):
                raise UserError(f"{where}: `columns:` must map roles to column names, e.g. "
                                "{instruction: prompt, response: completion}")
            try:
                check_columns(columns)
            except ValueError as e:
                raise UserError(f"{where}: columns: {e}") from None
        if adapter == "arc" and "subset" not in entry:
            raise UserError(f"{where}: ARC needs `subset: ARC-Easy` or `subset: ARC-Challenge`")
    elif kind == "jsonl":
        path = _jsonl_path(entry["jsonl"], base)
        if not path.is_file():
            raise UserError(f"{where}: conversation file {path} not found (a relative path is taken from the "
                            f"mixture file's folder, else {CONFIGS_DIR}, where the shipped ones are)")
    else:
        if entry["task"] not in GENERATED:
            raise UserError(f"{where}: unknown task {entry['task']!r}; the generated tasks are {', '.join(GENERATED)}")
        if "size" not in entry:
            raise UserError(f"{where}: missing `size:`, the number of examples to generate")
    return kind


def generated_task(name: str, words: str = "builtin", base: Path | None = None, words_fix: str = FIX,
                   **kwargs) -> Task:
    """The generated task `name` of GENERATED, made with kwargs (size, split, seed, slice); a task that needs a word
    list gets the one of the source `words` (tasks/words.py; a relative path is taken from `base`; `words_fix` is
    how the caller's user picks another source, named if this one fails)."""
    task = GENERATED[name]
    if task.needs_words:
        kwargs["words"] = load_words(words, base, words_fix)
    return task(**kwargs)


def _path(name: str, base: Path) -> Path:
    path = Path(name).expanduser()
    return path if path.is_absolute() else base / path


def _jsonl_path(name: str, base: Path) -> Path:
    """A conversation file, relative to the mixture's folder; failing that, a file the package ships under that
    name (identity.jsonl), so a shipped mixture copied elsewhere to be edited still works."""
    path = _path(name, base)
    shipped = CONFIGS_DIR / name
    return shipped if not path.exists() and not Path(name).is_absolute() and shipped.is_file() else path


def _label(entry: dict, kind: str) -> str:
    if "name" in entry:
        return entry["name"]
    if kind == "dataset":
        parts = [entry["dataset"], entry.get("subset"), entry["split"]]
        return " ".join(p for p in parts if p)
    if kind == "jsonl":
        return Path(entry["jsonl"]).name
    return entry["task"]


def _build(entry: dict, kind: str, section: str, base: Path, words_source: str) -> Task:
    slice_args = {k: entry[k] for k in ("start", "stop", "step") if k in entry}
    if kind == "dataset":
        adapter = entry.get("adapter", KNOWN_DATASETS.get(entry["dataset"], "chat"))
        kwargs = {k: entry[k] for k in ("subset", "split", "seed", "columns") if k in entry}
        return ADAPTERS[adapter](repo=entry["dataset"], **kwargs, **slice_args)
    if kind == "jsonl":
        return CustomJSON(_jsonl_path(entry["jsonl"], base), **slice_args)
    split = entry.get("split", "train" if section == "train" else "test")
    kwargs = {"size": entry["size"], "split": split, **({"seed": entry["seed"]} if "seed" in entry else {})}
    return generated_task(entry["task"], entry.get("words", words_source), base,
                          words_fix="`words: builtin` in the mixture file", **kwargs, **slice_args)


def load_mixture(name: str | Path, sections: tuple[str, ...] = SECTIONS) -> Mixture:
    """Read, check, then load a mixture file (a path or a shipped name); only `sections` are loaded."""
    path = resolve(str(name))
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise UserError(f"{path}{line}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    if not isinstance(spec, dict):
        raise UserError(f"{path}: a mixture is a mapping with `train:` and `val:` lists of sources")
    unknown = sorted(set(spec) - {"description", "words", *SECTIONS})
    if unknown:
        raise UserError(f"{path}: unknown key `{unknown[0]}`: a mixture has description, words, train, val")
    words_source = spec.get("words", "builtin")
    if not isinstance(words_source, str):
        raise UserError(f"{path}: `words:` must be builtin, a URL or a file path")
    base = path.parent
    shipped = path.resolve().parent == CONFIGS_DIR.resolve()
    checked = {}
    for section in sections:
        entries = spec.get(section)
        if not isinstance(entries, list) or not entries:
            raise UserError(f"{path}: `{section}:` must be a non-empty list of sources")
        checked[section] = [(entry, _check_entry(entry, f"{path}: {section}[{i}]", base))
                            for i, entry in enumerate(entries)]
    sources = {}
    for section, entries in checked.items():
        sources[section] = []
        for i, (entry, kind) in enumerate(entries):
            label = _label(entry, kind)
            try:
                task = _build(entry, kind, section, base, words_source)
            except (UserError, ValueError) as e:
                if shipped and isinstance(e, MissingDataset):  # its fix (check the name…) is not for a shipped file
                    e = (f"{e.problem}; this mixture ships with primechat: copy {path}, change or remove that "
                         "entry, and pass the copy with `--mixture COPY`")
                raise UserError(f"{path}: {section}[{i}] ({label}): {e}") from None
            sources[section].append(Source(label, task, entry.get("repeat", 1)))
    return Mixture(path, spec.get("description", ""), sources)


# --------------------------------------------------------------------------------------------------------------------
# The preview command

def add_arguments(parser):
    parser.add_argument("mixture", help="mixture YAML file, or a shipped one: mid, sft, demo-chat")
    parser.add_argument("--section", choices=("train", "val", "all"), default="all", help="which part to show")
    parser.add_argument("--examples", type=int, default=3, help="rendered examples shown per section")
    parser.add_argument("--sample", type=int, default=500,
                        help="conversations tokenized per source to estimate its tokens (all of them if fewer)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the home folder's)")


def source_stats(tokenizer, task: Task, sample: int) -> tuple[float, float]:
    """(mean tokens per conversation, fraction of them trained on) over up to `sample` evenly spaced examples."""
    n = len(task)
    if n == 0:
        return 0.0, 0.0
    picks = sorted({i * n // min(n, sample) for i in range(min(n, sample))})
    tokens = trained = 0
    for i in picks:
        ids, mask = tokenizer.render_conversation(task[i], max_tokens=1 << 30)
        tokens += len(ids)
        trained += sum(mask)
    return tokens / len(picks), trained / max(tokens, 1)


def preview(mixture: Mixture, tokenizer, section: str, examples: int, sample: int) -> None:
    rows = [(s, len(s.task) * s.repeat, *source_stats(tokenizer, s.task, sample)) for s in mixture.sources[section]]
    total_rows = sum(r[1] for r in rows)
    total_tokens = sum(r[1] * r[2] for r in rows)
    print(f"\n{section}: {total_rows:,} conversations, ~{total_tokens:,.0f} tokens")
    print(f"  {'source':<44} {'rows':>10} {'x':>3} {'share':>7} {'tokens':>13} {'share':>7} {'tok/row':>8} "
          f"{'trained':>8}")
    for s, n, mean, trained in rows:
        print(f"  {s.label[:44]:<44} {n:>10,} {s.repeat:>3} {n / max(total_rows, 1):>7.1%} {n * mean:>13,.0f} "
              f"{n * mean / max(total_tokens, 1):>7.1%} {mean:>8.1f} {trained:>8.1%}")
    mix = mixture.mix(section)
    owner = {id(s.task): s.label for s in mixture.sources[section]}
    for k in range(min(examples, len(mix))):
        t, _ = mix.index[k]
        ids, mask = tokenizer.render_conversation(mix[k])
        color = sys.stdout.isatty()  # escape codes only where a terminal turns them into colours
        print(f"\n--- {section} example {k} of {len(mix):,} ({owner[id(mix.tasks[t])]}), {len(ids)} tokens, "
              f"{sum(mask)} trained ({'green' if color else 'in [brackets]'}) ---")
        print(tokenizer.visualize_tokenization(ids, mask, color))


def main(args):
    from primechat.tokenizer import load_tokenizer
    if args.examples < 0 or args.sample < 1:
        raise UserError("--examples must be >= 0 and --sample >= 1")
    tokenizer = load_tokenizer(args.tokenizer)
    sections = SECTIONS if args.section == "all" else (args.section,)
    mixture = load_mixture(args.mixture, sections)
    print(f"mixture {mixture.path}" + (f": {mixture.description.strip()}" if mixture.description else ""))
    print("tokens: whole conversations (before cutting to the context length), estimated from "
          f"up to {args.sample} conversations per source; trained = tokens in the loss (the assistant's)")
    for section in sections:
        preview(mixture, tokenizer, section, args.examples, args.sample)
