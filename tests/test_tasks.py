"""Chat tasks and mixtures (primechat/tasks/): every adapter on rows written into the fake Hub, slicing, shuffling,
oversampling, loss masks for every task type, GSM8K parsing, MMLU/ARC rendering, JSONL and mixture errors, word
lists, and the `primechat data mixture` preview. CPU, no network (the fake Hub is local)."""

import json
import re
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from primechat.common import UserError
from primechat.tasks.arc import ARC
from primechat.tasks.arithmetic import Arithmetic
from primechat.tasks.chat import ChatTask
from primechat.tasks.common import Task, TaskMixture, extract_number, render_mc
from primechat.tasks.customjson import CustomJSON
from primechat.tasks.gsm8k import GSM8K, solution_parts
from primechat.tasks.humaneval import HumanEval
from primechat.common import CONFIGS_DIR as CONFIGS
from primechat.tasks.mixture import GENERATED, _check_entry, generated_task, load_mixture
from primechat.tasks.mmlu import MMLU
from primechat.tasks.spelling import SimpleSpelling, SpellingBee
from primechat.tasks.words import load_words
from primechat.tokenizer import train_tokenizer

ANSI = re.compile(r"\x1b\[[0-9;]*m")
WORDS = ["apple", "banana", "strawberry", "letter", "mississippi", "tokenizer"]
GSM_ANSWER = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nAltogether 48+24 = <<48+24=72>>72 clips.\n#### 72"


@pytest.fixture(scope="module")
def tok():
    texts = [json.dumps(json.loads(line)) for line in (CONFIGS / "identity.jsonl").read_text().splitlines()]
    texts += [GSM_ANSWER, "Multiple Choice question: which one? - a=A - b=B Respond only with the letter."] * 20
    return train_tokenizer(iter(texts * 5), 512)


def put_parquet(hub, repo: str, path: str, rows: list[dict]) -> None:
    folder = hub.repo_dir(f"datasets/{repo}")
    (folder / path).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / path)


def gsm_rows(n: int) -> list[dict]:
    return [{"question": f"Question {i}: what is {i} + {i}?", "answer": f"{i}+{i} = <<{i}+{i}={2 * i}>>{2 * i}\n#### {2 * i}"}
            for i in range(n)]


def mmlu_rows(n: int) -> list[dict]:
    return [{"question": f"Q{i}?", "subject": "math", "choices": ["w", "x", "y", "z"], "answer": i % 4}
            for i in range(n)]


def arc_rows(n: int) -> list[dict]:
    return [{"id": str(i), "question": f"Science {i}?", "answerKey": "2",
             "choices": {"text": ["one", "two", "three"], "label": ["1", "2", "3"]}} for i in range(n)]


def chat_rows(n: int) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"hello {i}"}, {"role": "assistant", "content": f"hi {i}"}],
             "source": "test"} for i in range(n)]


HUMANEVAL_ROW = {"task_id": "HumanEval/0", "prompt": "import math\n\ndef root(x):\n    \"\"\"Square root.\"\"\"\n",
                 "canonical_solution": "    return math.sqrt(x)\n", "entry_point": "root",
                 "test": "def check(candidate):\n    assert candidate(9) == 3\n"}


def trained_text(tok, conversation) -> str:
    ids, mask = tok.render_conversation(conversation)
    return tok.decode([i for i, m in zip(ids, mask) if m])


def expected_trained_text(conversation) -> str:
    """What the mask must select: the assistant's text and python calls (not tool outputs), and each turn's end."""
    out = []
    for message in conversation["messages"]:
        if message["role"] != "assistant":
            continue
        content = message["content"]
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        for part in parts:
            if part["type"] == "text":
                out.append(part["text"])
            elif part["type"] == "python":
                out.append(f"<|python_start|>{part['text']}<|python_end|>")
        out.append("<|assistant_end|>")
    return "".join(out)


# --------------------------------------------------------------------------------------------------------------------
# Task, TaskMixture

class Numbers(Task):
    def __init__(self, n, tag="n", **kwargs):
        super().__init__(**kwargs)
        self.n, self.tag = n, tag

    def num_examples(self):
        return self.n

    def get_example(self, index):
        return {"messages": [], "value": (self.tag, index)}


def values(task):
    return [example["value"][1] for example in task]


def test_slicing():
    assert values(Numbers(10)) == list(range(10))
    assert values(Numbers(10, start=2, stop=8, step=3)) == [2, 5]
    assert len(Numbers(10, start=1, step=3)) == 3  # ceil(9 / 3)
    assert values(Numbers(5, stop=100)) == list(range(5))  # stop past the end is clipped
    assert len(Numbers(5, start=7)) == 0
    with pytest.raises(IndexError):
        Numbers(10, stop=4)[4]
    with pytest.raises(ValueError):
        Numbers(10, start=5, stop=2)


def test_mixture_shuffles_everything_once_and_repeats_oversample():
    a, b = Numbers(30, "a"), Numbers(10, "b")
    mix = TaskMixture([a, b, b])
    seen = Counter(example["value"] for example in mix)
    assert len(mix) == 50 and sum(seen.values()) == 50
    assert all(seen[("a", i)] == 1 for i in range(30)) and all(seen[("b", i)] == 2 for i in range(10))
    order = [example["value"] for example in mix]
    assert order == [example["value"] for example in TaskMixture([a, b, b])]  # fixed seed
    assert order[:30] != [("a", i) for i in range(30)]  # interleaved, not in task order


# --------------------------------------------------------------------------------------------------------------------
# Hub adapters

def test_gsm8k_from_hub_shuffled_like_datasets_and_cached_for_offline_use(fake_hub):
    rows = gsm_rows(20)
    put_parquet(fake_hub, "openai/gsm8k", "main/train-00000-of-00001.parquet", rows)
    put_parquet(fake_hub, "openai/gsm8k", "main/test-00000-of-00001.parquet", gsm_rows(3))
    task = GSM8K("train")
    order = np.random.default_rng(42).permutation(20)  # what datasets.Dataset.shuffle(seed=42) gives
    assert len(task) == 20
    assert [ex["messages"][0]["content"] for ex in task] == [rows[i]["question"] for i in order]
    assert [r.path.rsplit("/", 1)[-1] for r in fake_hub.requests("GET", "/resolve/")] == [
        "train-00000-of-00001.parquet"]  # only the asked split is downloaded
    fake_hub.stop()  # the Hub is gone: the cached files still serve
    again = GSM8K("train", stop=5)
    assert [ex["answer"] for ex in again] == [str(2 * i) for i in order[:5]]


def test_gsm8k_answer_parsing_and_calculator_parts():
    assert extract_number("so the total is\n#### 1,234") == "1234"
    assert extract_number("#### -3.5 apples") == "-3.5"
    assert extract_number("no final answer") is None
    assert extract_number("#### apple") is None  # numbers only: a task with text answers needs its own reader
    assert solution_parts(GSM_ANSWER) == [
        {"type": "text", "text": "Natalia sold 48/2 = "},
        {"type": "python", "text": "48/2"}, {"type": "python_output", "text": "24"},
        {"type": "text", "text": "24 clips in May.\nAltogether 48+24 = "},
        {"type": "python", "text": "48+24"}, {"type": "python_output", "text": "72"},
        {"type": "text", "text": "72 clips.\n#### 72"}]


def test_gsm8k_evaluate(fake_hub):
    put_parquet(fake_hub, "openai/gsm8k", "main/test-00000-of-00001.parquet", gsm_rows(4))
    task = GSM8K("test")
    conversation = task[0]
    assert task.eval_type == "generative"
    assert task.evaluate(conversation, f"blah\n#### {conversation['answer']}")
    assert not task.evaluate(conversation, "blah\n#### 99999")
    assert not task.evaluate(conversation, conversation["answer"])  # no #### line


def test_mmlu_rendering_categorical_and_auxiliary_train_unwrapped(fake_hub):
    put_parquet(fake_hub, "cais/mmlu", "all/test-00000-of-00001.parquet", mmlu_rows(8))
    put_parquet(fake_hub, "cais/mmlu", "auxiliary_train/train-00000-of-00001.parquet",
                [{"train": row} for row in mmlu_rows(5)])
    task = MMLU("test")
    assert task.eval_type == "categorical" and len(task) == 8
    example = task[0]
    question = example["messages"][0]["content"]
    row = mmlu_rows(8)[int(question[len("Multiple Choice question: Q"):].split("?")[0])]
    assert question == render_mc(row["question"], ["A", "B", "C", "D"], row["choices"])
    assert question.splitlines()[1:5] == ["- w=A", "- x=B", "- y=C", "- z=D"]
    assert question.endswith("\n\nRespond only with the letter of the correct answer.")
    assert example["letters"] == ["A", "B", "C", "D"] and example["answer"] == "ABCD"[row["answer"]]
    assert example["messages"][1]["content"] == example["answer"]
    assert task.evaluate(example, f" {example['answer']}") and not task.evaluate(example, "E")
    assert len(MMLU("train", subset="auxiliary_train")) == 5
    assert MMLU("train", subset="auxiliary_train")[0]["messages"][0]["content"].startswith("Multiple Choice")


def test_arc_keeps_the_datasets_own_labels(fake_hub):
    put_parquet(fake_hub, "allenai/ai2_arc", "ARC-Easy/train-00000-of-00001.parquet", arc_rows(3))
    example = ARC("ARC-Easy", "train")[0]
    assert example["letters"] == ["1", "2", "3"] and example["answer"] == "2"
    assert "- two=2" in example["messages"][0]["content"]
    with pytest.raises(ValueError, match="ARC-Easy, ARC-Challenge"):
        ARC("ARC-Medium", "train")


def test_humaneval_runs_completions_in_the_sandbox(fake_hub):
    put_parquet(fake_hub, "openai/openai_humaneval", "openai_humaneval/test-00000-of-00001.parquet", [HUMANEVAL_ROW])
    task = HumanEval()
    example = task[0]
    assert example["messages"][1]["content"] == HUMANEVAL_ROW["prompt"] + HUMANEVAL_ROW["canonical_solution"]
    good = "Here you go:\n```python\ndef root(x):\n    return math.sqrt(x)\n```\nDone."  # import comes from the prompt
    assert task.evaluate(example, good)
    assert task.evaluate(example, "def root(x):\n    return x ** 0.5\n")  # no code block: the whole completion
    assert not task.evaluate(example, "```python\ndef root(x):\n    return x\n```")


def test_chat_adapter_messages_and_instruction_columns(fake_hub):
    put_parquet(fake_hub, "HuggingFaceTB/smol-smoltalk", "data/train-00000-of-00001.parquet", chat_rows(6))
    smoltalk = ChatTask("HuggingFaceTB/smol-smoltalk", "train")  # `messages` by default, as SmolTalk has them
    assert sorted(ex["messages"][0]["content"] for ex in smoltalk) == [f"hello {i}" for i in range(6)]
    put_parquet(fake_hub, "me/alpaca", "data/train-00000-of-00001.parquet", [
        {"prompt": "Translate", "extra": "bonjour", "completion": "hello", "sys": "Be brief."},
        {"prompt": "Add 1 and 2", "extra": "", "completion": "3", "sys": ""}])
    task = ChatTask("me/alpaca", "train", seed=None,
                    columns={"instruction": "prompt", "input": "extra", "response": "completion", "system": "sys"})
    assert task[0]["messages"] == [{"role": "system", "content": "Be brief."},
                                   {"role": "user", "content": "Translate\n\nbonjour"},
                                   {"role": "assistant", "content": "hello"}]
    assert task[1]["messages"] == [{"role": "user", "content": "Add 1 and 2"}, {"role": "assistant", "content": "3"}]


def test_chat_adapter_names_the_bad_row(fake_hub):
    put_parquet(fake_hub, "me/chats", "data/train-00000-of-00001.parquet",
                [{"messages": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(UserError, match="me/chats train row 0: the conversation must end with an assistant"):
        ChatTask("me/chats", "train")[0]


@pytest.mark.parametrize("make, fragments", [
    (lambda: GSM8K("validation"), ["no parquet files for subset main, split validation", "it has main/train"]),
    (lambda: GSM8K("train", subset="socratic"), ["subset socratic"]),
    (lambda: ChatTask("me/nothere", "train"), ["dataset me/nothere not found"]),
    (lambda: ChatTask("openai/gsm8k", "train", subset="main"), ["has no column messages", "question, answer"]),
])
def test_missing_split_subset_dataset_or_column(fake_hub, make, fragments):
    put_parquet(fake_hub, "openai/gsm8k", "main/train-00000-of-00001.parquet", gsm_rows(2))
    with pytest.raises(UserError) as info:
        make()
    assert "\n" not in str(info.value)
    for fragment in fragments:
        assert fragment in str(info.value)


# --------------------------------------------------------------------------------------------------------------------
# Generated tasks and word lists

def test_spelling_bee_counts_and_checks_with_python():
    task = SpellingBee(WORDS, size=200, split="train")
    for example in task:
        parts = example["messages"][1]["content"]
        word, letter = re.fullmatch(r"'(\w+)'\.count\('(\w)'\)", parts[1]["text"]).groups()
        assert example["answer"] == parts[2]["text"] == str(word.count(letter))
        assert parts[-1]["text"].endswith(f"#### {word.count(letter)}")
        assert task.evaluate(example, parts[-1]["text"]) and not task.evaluate(example, "#### 42")
    assert any(ex["answer"] == "0" for ex in task)  # sometimes a letter not in the word
    assert [ex["messages"] for ex in task] == [ex["messages"] for ex in SpellingBee(WORDS, size=200)]  # fixed seeds
    test = SpellingBee(WORDS, size=200, split="test")
    assert [ex["messages"] for ex in test] != [ex["messages"] for ex in task]
    assert task[57] == SpellingBee(WORDS, size=200, start=50)[7]  # examples do not depend on the slice


def test_simple_spelling_and_arithmetic():
    example = SimpleSpelling(["apple"], size=3)[0]
    assert example["messages"][1]["content"] == "apple:a,p,p,l,e"
    for example in Arithmetic(50):
        parts = example["messages"][1]["content"]
        assert parts[1]["type"] == "python" and str(eval(parts[1]["text"])) == parts[2]["text"] == example["answer"]
        assert parts[-1]["text"].endswith(f"#### {example['answer']}")


class Countdown(Task):
    """A generated task that needs no word list, as a new one registered in GENERATED might be."""

    eval_type = "generative"

    def __init__(self, size: int, split: str = "train", seed: int = 42, **slice_args):
        super().__init__(**slice_args)
        self.size, self.split = size, split

    def num_examples(self):
        return self.size

    def get_example(self, index):
        return {"messages": [{"role": "user", "content": f"What comes before {index + 1}?"},
                             {"role": "assistant", "content": f"#### {index}"}], "answer": str(index)}


def test_a_new_generated_task_without_a_word_list_loads_in_a_mixture(tmp_path, home, monkeypatch):
    monkeypatch.setitem(GENERATED, "countdown", Countdown)
    path = write_mixture(tmp_path, {"words": "no-such-words.txt", "train": [{"task": "countdown", "size": 5}],
                                    "val": [{"task": "countdown", "size": 2}]})
    mixture = load_mixture(path)  # the word list is neither loaded nor passed: Countdown takes none
    assert len(mixture.train) == 5 and mixture.sources["val"][0].task.split == "test"


def test_generated_tasks_say_whether_they_need_words_and_score_answers(tmp_path, home):
    assert {name for name, task in GENERATED.items() if task.needs_words} == {"spelling-bee", "simple-spelling"}
    assert {name for name, task in GENERATED.items() if task.eval_type} == {"spelling-bee", "arithmetic"}
    assert ChatTask.eval_type is CustomJSON.eval_type is None  # training data only
    assert len(generated_task("arithmetic", "missing.txt", size=3)) == 3  # no word list to load
    (tmp_path / "w.txt").write_text("apple\nbanana\n")
    bee = generated_task("spelling-bee", "w.txt", tmp_path, size=4, split="test")
    assert bee.words == ["apple", "banana"] and bee.split == "test"
    with pytest.raises(UserError, match="not found"):
        generated_task("spelling-bee", "missing.txt", tmp_path, size=3)


def test_word_lists_from_a_file_a_url_once_and_builtin(fake_hub, tmp_path, home):
    (tmp_path / "w.txt").write_text("Zebra\napple\nx\nnot-a-word\napple\n")
    assert load_words("w.txt", base=tmp_path) == ["apple", "zebra"]
    fake_hub.add_files("datasets/me/words", {"words.txt": "cat\ndog\n"})
    url = f"{fake_hub.url}/datasets/me/words/resolve/main/words.txt"
    assert load_words(url) == load_words(url) == ["cat", "dog"]
    assert len(fake_hub.requests("GET", "words.txt")) == 1  # downloaded once, then read from <home>/words/
    with pytest.raises(UserError, match="not found"):
        load_words("missing.txt", base=tmp_path)
    with pytest.raises(UserError, match="cannot download"):
        load_words(f"{fake_hub.url}/datasets/me/words/resolve/main/nope.txt")
    builtin = load_words("builtin")
    assert len(builtin) > 1000 and {"function", "return", "value"} <= set(builtin)
    assert all(re.fullmatch(r"[a-z]{3,}", w) for w in builtin)


def test_custom_json_and_its_errors_name_file_and_line(tmp_path):
    good = {"messages": [{"role": "system", "content": "Be nice."}, {"role": "user", "content": "hi"},
                         {"role": "assistant", "content": "hello"}]}
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps(good) + "\n\n" + json.dumps(good["messages"][1:]) + "\n")
    task = CustomJSON(path)
    assert len(task) == 2 and task[0] == good and task[1]["messages"] == good["messages"][1:]
    bad_lines = {
        "{not json": "not valid JSON",
        json.dumps({"messages": [{"role": "assistant", "content": "hi"}]}): "message 0 has role 'assistant', expected 'user'",
        json.dumps({"messages": [{"role": "user", "content": "hi"}]}): "must end with an assistant message",
        json.dumps({"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}]}): "needs text content",
        json.dumps({"text": "hello"}): "'messages' must be a non-empty list",
    }
    for line, why in bad_lines.items():
        path.write_text(json.dumps(good) + "\n" + line + "\n")
        with pytest.raises(UserError) as info:
            CustomJSON(path)
        assert str(info.value).startswith(f"{path}:2: ") and why in str(info.value)


def test_shipped_identity_conversations_are_valid():
    assert len(CustomJSON(CONFIGS / "identity.jsonl")) >= 50


# --------------------------------------------------------------------------------------------------------------------
# Loss masks: every task type trains exactly on the assistant's text and tool calls

def test_loss_masks_for_every_task_type(fake_hub, tok):
    put_parquet(fake_hub, "openai/gsm8k", "main/train-00000-of-00001.parquet", gsm_rows(3))
    put_parquet(fake_hub, "cais/mmlu", "all/test-00000-of-00001.parquet", mmlu_rows(3))
    put_parquet(fake_hub, "allenai/ai2_arc", "ARC-Challenge/test-00000-of-00001.parquet", arc_rows(3))
    put_parquet(fake_hub, "openai/openai_humaneval", "openai_humaneval/test-00000-of-00001.parquet", [HUMANEVAL_ROW])
    put_parquet(fake_hub, "me/chats", "data/train-00000-of-00001.parquet", chat_rows(3))
    tasks = [GSM8K("train"), MMLU("test"), ARC("ARC-Challenge", "test"), HumanEval(), ChatTask("me/chats", "train"),
             CustomJSON(CONFIGS / "identity.jsonl"), SpellingBee(WORDS, 5), SimpleSpelling(WORDS, 5), Arithmetic(5)]
    for task in tasks:
        for example in task:
            assert trained_text(tok, example) == expected_trained_text(example), task.name
    gsm = tasks[0][0]
    output = next(p["text"] for p in gsm["messages"][1]["content"] if p["type"] == "python_output")
    ids, mask = tok.render_conversation(gsm)
    start = ids.index(tok.encode_special("<|output_start|>"))
    assert mask[start:start + len(tok.encode(output)) + 2] == [0] * (len(tok.encode(output)) + 2)
    mc_ids, mc_mask = tok.render_conversation(tasks[1][0])
    assert tok.decode([i for i, m in zip(mc_ids, mc_mask) if m]) == tasks[1][0]["answer"] + "<|assistant_end|>"


# --------------------------------------------------------------------------------------------------------------------
# Mixtures

def write_mixture(tmp_path, spec: dict, name="mix.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture
def mixture_file(fake_hub, tmp_path):
    put_parquet(fake_hub, "openai/gsm8k", "main/train-00000-of-00001.parquet", gsm_rows(40))
    put_parquet(fake_hub, "openai/gsm8k", "main/test-00000-of-00001.parquet", gsm_rows(10))
    put_parquet(fake_hub, "me/chats", "data/train-00000-of-00001.parquet", chat_rows(30))
    (tmp_path / "words.txt").write_text("\n".join(WORDS))
    (tmp_path / "convs").mkdir()
    (tmp_path / "convs" / "me.jsonl").write_text("\n".join(
        json.dumps({"messages": [{"role": "user", "content": f"who {i}"}, {"role": "assistant", "content": "me"}]})
        for i in range(5)))
    return write_mixture(tmp_path, {
        "description": "test mixture", "words": "words.txt",
        "train": [{"dataset": "openai/gsm8k", "subset": "main", "split": "train", "stop": 20},
                  {"dataset": "me/chats", "split": "train", "repeat": 2},
                  {"jsonl": "convs/me.jsonl", "repeat": 3},
                  {"task": "spelling-bee", "size": 10}, {"task": "arithmetic", "size": 7, "name": "sums"}],
        "val": [{"dataset": "openai/gsm8k", "subset": "main", "split": "test"}, {"task": "spelling-bee", "size": 4}],
    })


def test_mixture_loads_sources_with_weights(mixture_file):
    mixture = load_mixture(mixture_file)
    assert [(s.label, len(s.task), s.repeat) for s in mixture.sources["train"]] == [
        ("openai/gsm8k main train", 20, 1), ("me/chats train", 30, 2), ("me.jsonl", 5, 3),
        ("spelling-bee", 10, 1), ("sums", 7, 1)]
    train = mixture.train
    assert len(train) == 20 + 60 + 15 + 10 + 7 and len(mixture.val) == 14
    counts = Counter(json.dumps(example["messages"]) for example in train)
    assert max(counts.values()) == 3 and sorted(set(counts.values())) == [1, 2, 3]
    assert mixture.sources["val"][1].task.split == "test"  # generated val examples differ from train ones
    assert load_mixture(mixture_file, sections=("val",)).sources.keys() == {"val"}
    assert mixture.source_names() == "openai/gsm8k main train, me/chats train ×2, me.jsonl ×3, spelling-bee, sums"


@pytest.mark.parametrize("entry, fragments", [
    ({"dataset": "openai/gsm8k", "split": "train", "colour": "red"}, ["train[0]", "unknown field `colour`"]),
    ({"dataset": "openai/gsm8k", "subset": "main"}, ["train[0]", "missing `split:`"]),
    ({"dataset": "gsm8k", "split": "train"}, ["OWNER/NAME"]),
    ({"dataset": "me/x", "split": "train", "adapter": "magic"}, ["unknown adapter 'magic'", "chat, mmlu"]),
    ({"dataset": "openai/gsm8k", "split": "train", "columns": {"messages": "m"}}, ["`columns:` is for the chat"]),
    ({"dataset": "me/x", "split": "train", "columns": {"prompt": "p"}}, ["unknown column role 'prompt'"]),
    ({"dataset": "me/x", "split": "train", "columns": {"instruction": "p"}}, ["`response: COLUMN`"]),
    ({"dataset": "allenai/ai2_arc", "split": "train"}, ["ARC needs `subset: ARC-Easy`"]),
    ({"dataset": "me/x", "jsonl": "a.jsonl", "split": "train"}, ["exactly one of"]),
    ({"jsonl": "missing.jsonl"}, ["missing.jsonl not found"]),
    ({"task": "poetry", "size": 3}, ["unknown task 'poetry'", "spelling-bee"]),
    ({"task": "arithmetic"}, ["missing `size:`"]),
    ({"task": "arithmetic", "size": 5, "repeat": 0}, ["`repeat: 0` must be a whole number >= 1"]),
    ({"task": "arithmetic", "size": "many"}, ["`size: many`"]),
    ({"task": "arithmetic", "size": 5, "start": 4, "stop": 2}, ["`stop: 2` is before `start: 4`"]),
    ("just a string", ["expected a mapping"]),
])
def test_mixture_validation_errors_name_file_entry_and_fix(tmp_path, home, entry, fragments):
    path = write_mixture(tmp_path, {"train": [entry], "val": [{"task": "arithmetic", "size": 2}]})
    with pytest.raises(UserError) as info:
        load_mixture(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_a_copied_mixture_finds_the_shipped_identity_conversations(tmp_path, home):
    """A shipped mixture copied elsewhere to be edited names identity.jsonl, which is not beside the copy."""
    from primechat.common import CONFIGS_DIR
    path = write_mixture(tmp_path, {"train": [{"jsonl": "identity.jsonl"}], "val": [{"task": "arithmetic", "size": 2}]})
    mixture = load_mixture(path)
    task = mixture.sources["train"][0].task
    assert len(task) == len((CONFIGS_DIR / "identity.jsonl").read_text().splitlines())
    (tmp_path / "identity.jsonl").write_text('[{"role": "user", "content": "hi"}, {"role": "assistant", "content": '
                                             '"mine"}]\n')  # one beside the mixture wins
    assert len(load_mixture(path).sources["train"][0].task) == 1


@pytest.mark.parametrize("spec, fragment", [
    ({"train": [{"task": "arithmetic", "size": 2}]}, "`val:` must be a non-empty list"),
    ({"train": [], "val": [{"task": "arithmetic", "size": 2}]}, "`train:` must be a non-empty list"),
    ({"trian": [], "train": [{"task": "arithmetic", "size": 2}]}, "unknown key `trian`"),
    (["a", "list"], "a mixture is a mapping"),
])
def test_mixture_file_level_errors(tmp_path, home, spec, fragment):
    with pytest.raises(UserError, match=re.escape(fragment)):
        load_mixture(write_mixture(tmp_path, spec))


def test_mixture_errors_found_at_load_name_the_entry(fake_hub, tmp_path):
    put_parquet(fake_hub, "openai/gsm8k", "main/train-00000-of-00001.parquet", gsm_rows(2))
    path = write_mixture(tmp_path, {"train": [{"task": "arithmetic", "size": 2},
                                              {"dataset": "openai/gsm8k", "subset": "main", "split": "dev"}],
                                    "val": [{"task": "arithmetic", "size": 2}]})
    with pytest.raises(UserError, match=re.escape(f"{path}: train[1] (openai/gsm8k main dev): dataset openai/gsm8k "
                                                  "has no parquet files for subset main, split dev")):
        load_mixture(path)
    (tmp_path / "bad.yaml").write_text("train: [\n  - x\n")
    with pytest.raises(UserError, match=r"bad.yaml:\d+: not valid YAML"):
        load_mixture(tmp_path / "bad.yaml")
    with pytest.raises(UserError, match="mixture nope not found.*demo-chat, mid, sft"):
        load_mixture("nope")


def test_a_dataset_missing_from_a_shipped_mixture_says_to_use_a_copy(fake_hub, tmp_path, caplog):
    """A mirror without smol-smoltalk (or MMLU's auxiliary_train): the user cannot edit the shipped file, so the fix is
    a copy of it, not "check its name"; huggingface_hub's own "No files matched" line is not printed before ours."""
    shipped = CONFIGS / "mid.yaml"
    with pytest.raises(UserError) as info:
        load_mixture("mid")
    message = str(info.value)
    assert message.startswith(f"{shipped}: train[0] (HuggingFaceTB/smol-smoltalk train): dataset "
                              "HuggingFaceTB/smol-smoltalk not found on ")
    assert f"copy {shipped}, change or remove that entry, and pass the copy with `--mixture COPY`" in message
    assert "HF_TOKEN" not in message and "check its name" not in message and "\n" not in message
    put_parquet(fake_hub, "HuggingFaceTB/smol-smoltalk", "data/train-00000-of-00001.parquet", chat_rows(3))
    put_parquet(fake_hub, "cais/mmlu", "all/test-00000-of-00001.parquet", mmlu_rows(3))
    with pytest.raises(UserError) as info:
        load_mixture("mid")
    message = str(info.value)
    assert "train[1] (cais/mmlu auxiliary_train train): dataset cais/mmlu has no parquet files" in message
    assert "--mixture COPY" in message and "fix the subset/split" not in message
    assert "No files matched" not in caplog.text
    copy = tmp_path / "mid.yaml"  # the user's own file keeps the fix for a name they typed
    copy.write_text(shipped.read_text().replace("HuggingFaceTB/smol-smoltalk", "me/chats"))
    with pytest.raises(UserError, match=re.escape(f"{copy}: train[0] (me/chats train): dataset me/chats not found on ")
                       + ".*check its name; for a private one set HF_TOKEN$"):
        load_mixture(copy)


def test_shipped_mixtures_are_valid(home):
    for name in ("mid", "sft", "demo-chat"):
        spec = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
        for section in ("train", "val"):
            for i, entry in enumerate(spec[section]):
                _check_entry(entry, f"{name} {section}[{i}]", CONFIGS)
    mid = yaml.safe_load((CONFIGS / "mid.yaml").read_text())
    assert [e.get("dataset") or e.get("jsonl") or e.get("task") for e in mid["train"]] == [
        "HuggingFaceTB/smol-smoltalk", "cais/mmlu", "openai/gsm8k", "identity.jsonl", "simple-spelling",
        "spelling-bee"]


# --------------------------------------------------------------------------------------------------------------------
# The preview command

def test_preview_shows_rows_tokens_shares_and_masked_examples(mixture_file, tok, tmp_path, cli):
    tok.save(tmp_path / "tok")
    result = cli("data", "mixture", mixture_file, "--tokenizer", tmp_path / "tok", "--examples", "2")
    assert result.code == 0, result.err
    out = ANSI.sub("", result.out)
    assert "mixture " in out and "test mixture" in out
    assert re.search(r"train: 112 conversations, ~[\d,]+ tokens", out)
    line = next(l for l in out.splitlines() if l.strip().startswith("me/chats train"))
    assert re.search(r"me/chats train\s+60\s+2\s+53\.6%", line)
    assert out.count("--- train example") == 2 and out.count("--- val example") == 2
    assert "<|assistant_start|>|" in out and "<|assistant_end|>" in out
    # off a terminal (captured here) no escape codes: trained tokens are in [brackets], the rest plain
    assert "\x1b[" not in result.out and "trained (in [brackets])" in out
    assert "[<|assistant_end|>]" in out and "|<|user_start|>|" in out
    ids, mask = tok.render_conversation({"messages": [{"role": "user", "content": "hi"},
                                                      {"role": "assistant", "content": "yo"}]})
    shown = tok.visualize_tokenization(ids, mask)  # on a terminal: trained tokens green, the rest red
    assert "\x1b[92m" in shown and "\x1b[91m" in shown
    assert "Fetching" not in result.err and "\r" not in result.err  # no download bars off a terminal

    only_val = cli("data", "mixture", mixture_file, "--tokenizer", tmp_path / "tok", "--section", "val",
                   "--examples", "0")
    assert only_val.code == 0 and "train:" not in only_val.out and "val: 14 conversations" in only_val.out


def test_preview_errors_are_one_line(tmp_path, home, cli, tok):
    tok.save(tmp_path / "tok")
    path = write_mixture(tmp_path, {"train": [{"task": "nope", "size": 1}], "val": [{"task": "arithmetic", "size": 1}]})
    result = cli("data", "mixture", path, "--tokenizer", tmp_path / "tok")
    assert result.code == 2 and result.err.count("\n") == 1 and "unknown task 'nope'" in result.err
    result = cli("data", "mixture", "demo-chat")  # no tokenizer in the fresh home
    assert result.code == 2 and "tokenizer train" in result.err


def test_demo_chat_mixture_needs_no_download(home):
    mixture = load_mixture("demo-chat")
    assert {s.label for s in mixture.sources["train"]} == {"identity.jsonl", "simple-spelling", "spelling-bee",
                                                          "arithmetic"}
    assert len(mixture.train) > 5000 and len(mixture.val) == 300
    assert mixture.train[0]["messages"] and mixture.val[0]["messages"]
