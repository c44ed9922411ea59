"""CORE (primechat/eval/core.py) against hand-written expectations, on CPU with no network.

A byte-level tokenizer (trained with no merges, so token ids are the text's bytes and BOS is 256) makes the expected
token sequences writable by hand. A bigram stub model with known preferences gives known accuracies. A tiny bundle
(one task of each type) is zipped and served by the fake hub: download, unpack, the lock, a corrupt zip, a partial
bundle, --strict and bad rows.
"""

import csv
import json
import threading
import zipfile
from io import BytesIO

import pytest
import torch

from primechat.common import UserError
from primechat.eval import core
from primechat.eval.core import Task
from primechat.tokenizer import train_tokenizer

BOS = 256


def b(text: str) -> list[int]:
    return list(text.encode())


@pytest.fixture(scope="module")
def tok():
    tokenizer = train_tokenizer(iter(["bytes only"]), 256 + 9)  # no room for merges
    assert tokenizer.encode("Hi!") == b("Hi!") and tokenizer.bos_id == BOS
    return tokenizer


# --------------------------------------------------------------------------------------------------------------------
# Prompts: few-shot choice, templates, spans

def test_multiple_choice_prompts(tok):
    data = [{"query": "Q0?", "choices": ["a", "bb"], "gold": 1}, {"query": "Q1?", "choices": ["c", "d"], "gold": 0},
            {"query": "Q2?", "choices": ["e", "f"], "gold": 1}]
    task = Task("mc", "multiple_choice", "mc.jsonl", 1, "\nAnswer: ", 25.0)
    tokens, starts, ends = core.prepare_example(0, data, task, tok.encode, BOS)
    shared = [BOS] + b("Q2?\nAnswer: f\n\nQ0?\nAnswer: ")  # Random(1234).sample([1, 2], 1) == [2]: item 2's gold
    assert tokens == [shared + b("a"), shared + b("bb")]
    assert starts == [len(shared)] * 2 and ends == [len(shared) + 1, len(shared) + 2]


def test_schema_prompts(tok):
    data = [{"context_options": ["A cat", "A dog"], "continuation": "ran.", "gold": 0},
            {"context_options": ["The cat", "The dog"], "continuation": "barked.", "gold": 1},
            {"context_options": ["It rained", "It snowed"], "continuation": "today.", "gold": 1}]
    task = Task("schema", "schema", "s.jsonl", 1, " ", 50.0)
    tokens, starts, ends = core.prepare_example(1, data, task, tok.encode, BOS)
    shot = "It snowed today.\n\n"  # Random(1235).sample([0, 2], 1) == [2]
    assert tokens == [[BOS] + b(shot + "The cat barked."), [BOS] + b(shot + "The dog barked.")]
    assert ends == [len(t) for t in tokens]
    assert starts == [e - len(" barked.") for e in ends]  # the common suffix, the leading space included


def test_language_modeling_prompts(tok):
    data = [{"context": "One and one is ", "continuation": "two"},
            {"context": " Two and two is", "continuation": "four"},
            {"context": "Three and three is  ", "continuation": "six"}]
    task = Task("lm", "language_modeling", "lm.jsonl", 1, " ", 0.0)
    tokens, starts, ends = core.prepare_example(2, data, task, tok.encode, BOS)
    # Random(1236).sample([0, 1], 1) == [1]; contexts are trimmed, the prompt without continuation is stripped
    assert tokens == [[BOS] + b("Two and two is four\n\nThree and three is six")]
    assert starts == [len(tokens[0]) - len(" six")] and ends == [len(tokens[0])]


def test_long_prompts_are_cropped_from_the_left(tok):
    data = [{"query": "A long question?", "choices": ["yes", "no"], "gold": 0}]
    task = Task("mc", "multiple_choice", "mc.jsonl", 0, " ", 50.0)
    tokens, starts, ends = core.prepare_example(0, data, task, tok.encode, BOS, max_seq_len=8)
    assert tokens == [b("ion? yes"), b("tion? no")]
    assert starts == [5, 6] and ends == [8, 8]
    with pytest.raises(UserError, match="exceed"):
        core.prepare_example(0, data, task, tok.encode, BOS, max_seq_len=3)


# --------------------------------------------------------------------------------------------------------------------
# Scoring on a stub with known preferences, centering, CSV

class Bigram(torch.nn.Module):
    """Logits of the next token depend only on the current one: every token prefers 'x' next (logit 5), and after
    'x' the token 'z' comes second (logit 4)."""

    def __init__(self):
        super().__init__()
        self.table = torch.zeros(BOS + 9, BOS + 9)
        self.table[:, ord("x")] = 5.0
        self.table[ord("x"), ord("z")] = 4.0

    def forward(self, ids):
        return self.table[ids]


TASKS = {  # label: (type, delimiter, shots, baseline %, rows, expected accuracy)
    "mc": ("multiple_choice", " ", 0, 25,
           [{"query": f"q{i}", "choices": ["x", "y"], "gold": g} for i, g in enumerate([0, 0, 0, 1])], 0.75),
    "schema": ("schema", "", 0, 50, [{"context_options": ["x", "y"], "continuation": "z", "gold": g}
                                     for g in (0, 1)], 0.5),
    "lm": ("language_modeling", "=", 1, 0, [{"context": f"c{i}", "continuation": c}
                                            for i, c in enumerate(["x", "xx", "xy", "y"])], 0.5),
}


def write_bundle(root, drop=()):
    """A bundle folder with one task of each type (tasks in `drop` lack their data file); returns its path."""
    bundle = root / "eval_bundle"
    (bundle / "eval_data").mkdir(parents=True)
    icl = [{"label": label, "dataset_uri": f"{label}.jsonl", "num_fewshot": [shots], "icl_task_type": kind,
            **({"continuation_delimiter": delim} if delim != " " else {})}
           for label, (kind, delim, shots, _, _, _) in TASKS.items()]
    (bundle / "core.yaml").write_text(json.dumps({"icl_tasks": icl}))  # JSON is YAML
    meta = "Eval Task,Task Category,Random baseline\n" + "".join(f"{k},x,{v[3]}\n" for k, v in TASKS.items())
    (bundle / "eval_meta_data.csv").write_text(meta)
    for label, (_, _, _, _, rows, _) in TASKS.items():
        if label not in drop:
            (bundle / "eval_data" / f"{label}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return bundle


def test_centering():
    assert core.centered(0.75, 25) == pytest.approx(2 / 3)
    assert core.centered(0.25, 25) == 0 and core.centered(1.0, 50) == 1 and core.centered(0.3, 0) == 0.3
    assert core.centered(0.0, 50) == -1


def test_stub_model_gets_the_known_accuracies_and_csv(tok, tmp_path, home):
    bundle = write_bundle(tmp_path)
    lines = []
    result = core.evaluate_core(Bigram(), tok.encode, BOS, "cpu", bundle, log=lines.append)
    got = {r["task"]: r["accuracy"] for r in result.rows}
    assert got == {label: v[5] for label, v in TASKS.items()}
    centered = [2 / 3, 0.0, 0.5]
    assert [r["centered"] for r in result.rows] == pytest.approx(centered)
    assert result.core == pytest.approx(sum(centered) / 3) and result.label == "CORE" and not result.missing
    core.write_csv(result, tmp_path / "out.csv")
    rows = list(csv.reader(open(tmp_path / "out.csv")))
    assert rows[0] == ["Task", "Accuracy", "Centered"]
    assert rows[1] == ["mc", "0.750000", "0.666667"] and rows[3] == ["lm", "0.500000", "0.500000"]
    assert rows[4] == ["CORE", "", f"{sum(centered) / 3:.6f}"]


def test_examples_past_the_trained_context_are_counted_and_said(tok, tmp_path, home):
    """CORE runs prompts past the model's trained context, as nanochat does, and crops those past what the model can
    run at all: the result says how many of each, since a small-context model's score is mostly measured there."""
    bundle = write_bundle(tmp_path)
    lines = []
    result = core.evaluate_core(Bigram(), tok.encode, BOS, "cpu", bundle, max_seq_len=8, log=lines.append,
                                trained_context=4)
    # mc "q0 x" is 5 tokens with BOS, schema "xz" 3, a one-shot lm prompt 11-12
    assert {r["task"]: (r["over_context"], r["cropped"]) for r in result.rows} == {
        "mc": (4, 0), "schema": (0, 0), "lm": (4, 4)}
    assert {r["task"]: r["accuracy"] for r in result.rows} == {label: v[5] for label, v in TASKS.items()}  # bigrams
    assert next(line for line in lines if line.startswith("lm")).endswith("4 over context, 4 cropped")
    notes = result.context_notes(4, 8)
    assert notes["over context"].startswith("8 of 10 examples (2 of 3 tasks) are longer than the model's 4-token "
                                            "context: run past it as nanochat does")
    assert notes["cropped"].startswith("4 examples longer than 8 tokens")
    assert core.evaluate_core(Bigram(), tok.encode, BOS, "cpu", bundle).context_notes(None, None) == {}


def test_data_is_shuffled_with_1337_then_cropped(tmp_path):
    path = tmp_path / "lm.jsonl"
    path.write_text("".join(json.dumps({"context": str(i), "continuation": "x"}) + "\n" for i in range(5)))
    assert [r["context"] for r in core.load_task_data(path, "language_modeling")] == ["1", "0", "3", "2", "4"]
    assert [r["context"] for r in core.load_task_data(path, "language_modeling", 2)] == ["1", "0"]


def test_partial_bundle_is_labelled_and_strict_refuses(tok, tmp_path, home):
    bundle = write_bundle(tmp_path, drop={"schema"})
    lines = []
    result = core.evaluate_core(Bigram(), tok.encode, BOS, "cpu", bundle, log=lines.append)
    assert result.missing == ["schema"] and result.label == "CORE (partial, 2/3 tasks)"
    assert result.core == pytest.approx((2 / 3 + 0.5) / 2)
    assert any("schema" in line and "partial" in line for line in lines)
    core.write_csv(result, tmp_path / "out.csv")
    assert list(csv.reader(open(tmp_path / "out.csv")))[-1][0] == "CORE (partial, 2/3 tasks)"
    assert "CORE (partial, 2/3 tasks)" in core.markdown_table(result)
    with pytest.raises(UserError, match="--strict.*schema"):
        core.evaluate_core(Bigram(), tok.encode, BOS, "cpu", bundle, strict=True)


@pytest.mark.parametrize("line, problem", [("{not json", "bad row"), ('{"query": "q", "choices": ["a"]}', "gold"),
                                           ('{"query": "q", "choices": ["a"], "gold": 3}', "gold 3")])
def test_bad_row_names_file_and_line(tmp_path, line, problem):
    path = tmp_path / "mc.jsonl"
    path.write_text('{"query": "q", "choices": ["a", "b"], "gold": 0}\n' + line + "\n")
    with pytest.raises(UserError, match=f"mc.jsonl line 2: .*{problem}"):
        core.load_task_data(path, "multiple_choice")


# --------------------------------------------------------------------------------------------------------------------
# The bundle download

def bundle_zip(tmp_path) -> bytes:
    folder = write_bundle(tmp_path / "src")
    buffer = BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for p in sorted(folder.rglob("*")):
            z.write(p, p.relative_to(folder.parent).as_posix())
    return buffer.getvalue()


def test_download_unpacks_once_even_with_concurrent_callers(fake_hub, home, tmp_path):
    url = fake_hub.add_static("eval_bundle.zip", bundle_zip(tmp_path))
    fake_hub.throttle = 0.05  # the first download is still running when the second caller arrives
    results = []
    threads = [threading.Thread(target=lambda: results.append(core.ensure_bundle(url))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [home / "eval_bundle"] * 2
    assert len(fake_hub.requests("GET", "/static/")) == 1
    assert [t.label for t in core.load_tasks(home / "eval_bundle")] == list(TASKS)
    assert core.ensure_bundle(url) == home / "eval_bundle" and len(fake_hub.requests("GET", "/static/")) == 1
    assert sorted(p.name for p in home.iterdir()) == ["eval_bundle", "eval_bundle.lock"]  # no temporary leftovers


def test_corrupt_zip_is_downloaded_again_once(fake_hub, home, tmp_path):
    url = fake_hub.add_static("eval_bundle.zip", b"PK this is not a zip", bundle_zip(tmp_path))
    assert (core.ensure_bundle(url) / "core.yaml").exists()
    assert len(fake_hub.requests("GET", "/static/")) == 2


def test_cut_off_download_is_tried_again(fake_hub, home, tmp_path):
    url = fake_hub.add_static("eval_bundle.zip", bundle_zip(tmp_path))
    fake_hub.break_bodies(1)
    assert (core.ensure_bundle(url) / "core.yaml").exists()
    assert len(fake_hub.requests("GET", "/static/")) == 2


def test_bundle_that_stays_corrupt_or_missing_is_a_user_error(fake_hub, home):
    url = fake_hub.add_static("eval_bundle.zip", b"garbage")
    with pytest.raises(UserError, match="cannot get a valid CORE bundle"):
        core.ensure_bundle(url)
    assert len(fake_hub.requests("GET", "/static/")) == 2
    with pytest.raises(UserError, match="HTTP 404"):
        core.ensure_bundle(fake_hub.url + "/static/nothing.zip")
    assert not (home / "eval_bundle").exists()
