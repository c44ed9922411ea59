"""`primechat eval chat` (primechat/eval/chat.py): categorical scoring picks the best allowed letter at each row's own
last prompt position (batched, padded, cropped), generative scoring hands the decoded reply to the task and counts
pass@n, pass@k and ChatCORE arithmetic (nanochat's Oct 2025 five tasks, whatever else ran), the offline Arithmetic task, and
the command end to end on a tiny random checkpoint with the fake Hub:
table, report section, one-line errors, and the same figures under torchrun with two processes. CPU, offline."""

import re
import subprocess
import sys

import pytest
import torch
from torch import nn

from primechat.common import UserError
from primechat.engine import Engine
from primechat.eval.chat import (CHATCORE_BASELINES, TASKS, categorical_results, chatcore, evaluate_categorical,
                                 evaluate_generative, generative_results, load_task, pass_at_k, sample_outcomes)
from primechat.tasks.common import MultipleChoiceTask, Task
from primechat.tasks.common import extract_number
from primechat.train.checkpoint import checkpoint_dir, save_checkpoint
from test_chat_cli import tiny_model, tiny_tokenizer
from test_tasks import HUMANEVAL_ROW, arc_rows, gsm_rows, mmlu_rows, put_parquet


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """A tiny model computes faster on one thread (here and in the subprocesses)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Quiz(MultipleChoiceTask):
    """In-memory multiple-choice questions: answers[i] is the index of question i's right choice."""

    def __init__(self, answers: list[int], letters: str = "ABCD", words: int = 1):
        super().__init__()
        self.answers, self.letters, self.words = answers, list(letters), words

    def num_examples(self):
        return len(self.answers)

    def get_example(self, index):
        question = " ".join(["the cat sat on the mat"] * self.words) + f" {index}" * (index % 3)  # varied lengths
        return self.conversation(question, [f"c{j}" for j in range(len(self.letters))], self.answers[index],
                                 letters=self.letters)


class LetterModel(nn.Module):
    """Stands in for the GPT: model(idx) -> logits (B, T, V). After <|assistant_start|> the logits rank tokens as
    `after_prompt` says ({token: score}); after any other token (BOS padding included) `token_elsewhere` wins, so
    reading the wrong position shows. Like the GPT it runs up to 10× its trained context (its RoPE tables, `cos`) and
    refuses longer inputs; `lengths` records the length of every batch it reads."""

    def __init__(self, tokenizer, after_prompt: dict[str, float], token_elsewhere: str, sequence_len: int = 512):
        super().__init__()
        self.config = nn.Module()
        self.config.sequence_len = sequence_len
        self.register_buffer("cos", torch.zeros(1, 10 * sequence_len, 1, 1), persistent=False)
        self.lengths = []
        self.anchor = nn.Parameter(torch.zeros(()))  # a parameter, so the evaluation can find the device
        self.assistant_start = tokenizer.encode_special("<|assistant_start|>")
        self.vocab = tokenizer.vocab_size
        self.answer = torch.zeros(self.vocab)
        for text, score in after_prompt.items():
            self.answer[tokenizer.encode(text)[0]] = score
        self.elsewhere = torch.zeros(self.vocab)
        self.elsewhere[tokenizer.encode(token_elsewhere)[0]] = 100.0

    def forward(self, idx, at):
        """As GPT.forward(idx, at=positions): the logits at one position per row, (B, 1, vocab)."""
        assert idx.size(1) <= self.cos.size(1), "the prompt was not cropped to what the model can run"
        self.lengths.append(idx.size(1))
        at_answer = (idx == self.assistant_start)[..., None]
        logits = torch.where(at_answer, self.answer, self.elsewhere)
        return logits[torch.arange(idx.size(0)), at].unsqueeze(1)


ANSWERS = [1, 1, 0, 1, 2, 3, 1, 0, 1, 2, 1]  # six B of eleven


def test_categorical_takes_the_best_allowed_letter_at_each_rows_end(tokenizer):
    # "E" scores highest of all but is not a choice; "D" wins wherever a row is read at the wrong (padded) position
    model = LetterModel(tokenizer, {"E": 9.0, "B": 5.0, "A": 4.0, "C": 1.0}, token_elsewhere="D")
    task = Quiz(ANSWERS)
    assert evaluate_categorical(model, tokenizer, task) == pytest.approx(6 / 11)
    assert evaluate_categorical(model, tokenizer, task, batch_size=3) == pytest.approx(6 / 11)
    assert evaluate_categorical(model, tokenizer, task, batch_size=1, max_problems=3) == pytest.approx(2 / 3)
    # ARC-style labels: the dataset's own, here digits, with three choices
    digits = Quiz([1, 0, 1, 2], letters="123")
    model = LetterModel(tokenizer, {"2": 3.0, "1": 2.0, "4": 9.0}, token_elsewhere="3")
    assert evaluate_categorical(model, tokenizer, digits) == pytest.approx(2 / 4)


def test_categorical_strides_problems_over_ranks(tokenizer):
    # without a process group each rank reports its own share: together they cover every problem once
    model = LetterModel(tokenizer, {"B": 1.0}, token_elsewhere="D")
    task = Quiz(ANSWERS)
    shares = [evaluate_categorical(model, tokenizer, task, batch_size=2, rank=r, world=3) for r in range(3)]
    counts = [len(range(r, len(ANSWERS), 3)) for r in range(3)]
    assert sum(s * n for s, n in zip(shares, counts)) == pytest.approx(6)
    assert shares[0] == pytest.approx(3 / 4)  # problems 0, 3, 6, 9: answers B, B, B, C


def test_categorical_reads_long_prompts_whole_up_to_what_the_model_runs_and_says_so(tokenizer):
    model = LetterModel(tokenizer, {"C": 1.0}, token_elsewhere="A", sequence_len=24)  # runs 240 tokens
    task = Quiz([2, 2, 0, 2], words=5)  # prompts past the trained context, inside the 240
    length = len(tokenizer.render_for_completion(task[0]))
    assert 24 < length < 240
    accuracy, overflow = categorical_results(model, tokenizer, task, batch_size=1)
    assert accuracy == pytest.approx(3 / 4)
    assert model.lengths[0] == length  # as nanochat: read whole, not cropped to the 24 trained on
    assert overflow.summary() == ("4 of 4 problems did not fit the model's context (24 tokens): run past it as "
                                  "nanochat does, where the model is weaker")
    # longer than the RoPE tables: the end is kept, and the note says how many were cropped
    task = Quiz([2, 2, 0, 2], words=40)
    assert len(tokenizer.render_for_completion(task[0])) > 240
    accuracy, overflow = categorical_results(model, tokenizer, task, batch_size=4)
    assert accuracy == pytest.approx(3 / 4) and overflow.count == 4 and overflow.beyond == 4
    assert overflow.summary().endswith("; 4 longer than the 240 it can run at all were cropped from the left")
    # prompts that fit: nothing to say
    assert categorical_results(LetterModel(tokenizer, {"C": 1.0}, "A"), tokenizer, task, batch_size=4)[1].count == 0


def test_categorical_needs_single_token_labels(tokenizer):
    model = LetterModel(tokenizer, {"A": 1.0}, token_elsewhere="B")
    with pytest.raises(UserError, match="'xyzzy' is .* tokens"):
        evaluate_categorical(model, tokenizer, Quiz([0, 1], letters=["A", "xyzzy"]))


# --------------------------------------------------------------------------------------------------------------------
# Generative

class Sums(Task):
    """Problem i asks for 2 * i; evaluate() records each completion it is given."""

    def __init__(self, n: int, question_words: int = 1):
        super().__init__()
        self.n, self.question_words, self.seen = n, question_words, []

    def num_examples(self):
        return self.n

    def get_example(self, index):
        question = "the cat " * self.question_words + f"what is {index} + {index}?"
        return {"messages": [{"role": "user", "content": question},
                             {"role": "assistant", "content": f"#### {2 * index}"}], "answer": str(2 * index)}

    def evaluate(self, conversation, completion):
        self.seen.append(completion)
        return extract_number(completion) == conversation["answer"]


def scripted_engine(monkeypatch, replies):
    """Engine.generate_batch answers problem i (found by its question in the prompt) with replies(i) and logs
    (i, num_samples, keyword arguments)."""
    calls = []

    def generate_batch(self, tokens, num_samples=1, **kwargs):
        index = int(re.search(r"what is (\d+) \+", self.tokenizer.decode(tokens)).group(1))
        calls.append((index, num_samples, kwargs))
        texts = replies(index)
        assert len(texts) == num_samples
        return [tokens + self.tokenizer.encode(t) for t in texts], None

    monkeypatch.setattr(Engine, "generate_batch", generate_batch)
    return calls


def test_sample_outcomes_checks_each_decoded_reply(tokenizer, monkeypatch):
    calls = scripted_engine(monkeypatch, lambda i: [f"so\n#### {2 * i + 1}", f"the sum\n#### {2 * i}", "no idea"])
    model = LetterModel(tokenizer, {}, token_elsewhere="A")
    task = Sums(4)
    outcomes = sample_outcomes(Engine(model, tokenizer), task, 3, num_samples=3, max_new_tokens=17, temperature=0.7,
                               top_k=5, seed=11)
    assert outcomes == [False, True, False]
    assert task.seen == ["so\n#### 7", "the sum\n#### 6", "no idea"]  # the reply only, without the prompt
    assert calls == [(3, 3, {"max_tokens": 17, "temperature": 0.7, "top_k": 5, "seed": 11})]


def test_generative_is_pass_at_n_strided_and_long_prompts_lose(tokenizer, monkeypatch):
    # even problems: only the second sample is right; problems divisible by 3: none; others: both
    def replies(i):
        if i % 3 == 0:
            return ["#### -1", "#### -1"]
        return ["#### -1", f"#### {2 * i}"] if i % 2 == 0 else [f"#### {2 * i}"] * 2

    calls = scripted_engine(monkeypatch, replies)
    model = LetterModel(tokenizer, {}, token_elsewhere="A")
    task = Sums(12)  # problems 0, 3, 6, 9 fail: 8 of 12 pass
    assert evaluate_generative(model, tokenizer, task, num_samples=2) == pytest.approx(8 / 12)
    seeds = {index: kwargs["seed"] for index, _, kwargs in calls}
    assert evaluate_generative(model, tokenizer, task, num_samples=2, max_problems=4) == pytest.approx(2 / 4)
    calls.clear()
    shares = [evaluate_generative(model, tokenizer, task, num_samples=2, rank=r, world=2) for r in range(2)]
    assert shares == pytest.approx([4 / 6, 4 / 6])  # evens 2, 4, 8, 10 pass; odds 1, 5, 7, 11
    # each problem is sampled with the same seed however many processes share the work
    assert {index: kwargs["seed"] for index, _, kwargs in calls} == seeds and len(set(seeds.values())) == 12


def test_generative_samples_past_the_trained_context_up_to_what_the_model_runs_and_says_so(tokenizer, monkeypatch):
    calls = scripted_engine(monkeypatch, lambda i: [f"#### {2 * i}"])
    model = LetterModel(tokenizer, {}, token_elsewhere="A", sequence_len=16)  # runs 160 tokens
    task = Sums(3, question_words=20)
    assert 16 <= len(tokenizer.render_for_completion(task[0])) < 160
    accuracy, overflow = generative_results(model, tokenizer, task)
    assert accuracy == 1.0 and len(calls) == 3  # sampled, as nanochat's Engine does, not scored 0 unseen
    assert overflow.summary() == ("3 of 3 problems did not fit the model's context (16 tokens): run past it as "
                                  "nanochat does, where the model is weaker")
    # no room at all (past the RoPE tables): wrong without generating, and counted
    calls.clear()
    accuracy, overflow = generative_results(model, tokenizer, Sums(2, question_words=100))
    assert accuracy == 0.0 and calls == []
    assert overflow.summary().endswith("; 2 longer than the 160 it can run at all were scored wrong")


def test_pass_at_k_and_chatcore():
    outcomes = [[False, True, True], [True, False, False], [False, False, False], [False, False, True]]
    assert [pass_at_k(outcomes, k) for k in (1, 2, 3)] == [0.25, 0.5, 0.75]
    chance = dict(CHATCORE_BASELINES)
    assert chatcore(chance) == pytest.approx(0.0)
    assert chatcore({name: 1.0 for name in CHATCORE_BASELINES}) == pytest.approx(1.0)
    halfway = {**chance, "MMLU": 0.625, "GSM8K": 0.5}  # MMLU half of the way from chance 0.25 to 1
    assert chatcore(halfway) == pytest.approx((0.5 + 0.5) / 5)
    # nanochat's Oct 2025 definition, that of its published figures: SpellingBee and Arithmetic are tasks of eval
    # chat, but neither needed for ChatCORE nor counted in it
    assert chatcore({**halfway, "SpellingBee": 1.0, "Arithmetic": 1.0}) == pytest.approx((0.5 + 0.5) / 5)
    del halfway["HumanEval"]
    assert chatcore(halfway) is None and chatcore({**halfway, "SpellingBee": 1.0}) is None
    assert list(CHATCORE_BASELINES) == ["ARC-Easy", "ARC-Challenge", "MMLU", "GSM8K", "HumanEval"]
    assert list(TASKS) == [*CHATCORE_BASELINES, "SpellingBee", "Arithmetic"]
    with pytest.raises(UserError, match="ARC-Easy.*SpellingBee.*Arithmetic"):
        load_task("arc-easy")


def test_arithmetic_is_scored_from_the_reply_like_gsm8k(tokenizer, monkeypatch):
    """`eval chat -a Arithmetic`: 256 generated test problems, offline; a reply is right when its `#### N` is."""
    task = load_task("Arithmetic")
    assert task.eval_type == "generative" and len(task) == 256 and task.split == "test"

    def generate_batch(self, tokens, num_samples=1, **kwargs):  # a calculator: answers the prompt's sum, or not
        expression = re.search(r"\d+(?: [-+*] \d+)+", self.tokenizer.decode(tokens)).group(0)
        answer = eval(expression) + (kwargs["seed"] % 2)  # odd problems get a wrong answer
        return [tokens + self.tokenizer.encode(f"{expression} = {answer}\n#### {answer}")] * num_samples, None

    monkeypatch.setattr(Engine, "generate_batch", generate_batch)
    model = LetterModel(tokenizer, {}, token_elsewhere="A")
    assert evaluate_generative(model, tokenizer, task, max_problems=10) == pytest.approx(5 / 10)


# --------------------------------------------------------------------------------------------------------------------
# The command

def put_test_splits(hub) -> None:
    put_parquet(hub, "allenai/ai2_arc", "ARC-Easy/test-00000-of-00001.parquet", arc_rows(7))
    put_parquet(hub, "allenai/ai2_arc", "ARC-Challenge/test-00000-of-00001.parquet", arc_rows(5))
    put_parquet(hub, "cais/mmlu", "all/test-00000-of-00001.parquet", mmlu_rows(9))
    put_parquet(hub, "openai/gsm8k", "main/test-00000-of-00001.parquet", gsm_rows(6))
    put_parquet(hub, "openai/openai_humaneval", "openai_humaneval/test-00000-of-00001.parquet", [HUMANEVAL_ROW])


def save_tiny_checkpoint(home, tokenizer, stage: str = "sft") -> None:
    tokenizer.save(home / "tokenizer")
    model = tiny_model(tokenizer.vocab_size)  # context 64: the multiple-choice prompts get cropped
    save_checkpoint(checkpoint_dir(stage, "d2"), 5, model.state_dict(),
                    {"step": 5, "model_config": model.config.to_dict()})


def accuracies(out: str) -> dict[str, str]:
    return dict(re.findall(r"^([\w-]+): (\d\.\d{4})$", out, re.MULTILINE))


def test_command_prints_the_table_and_writes_the_report(home, fake_hub, tokenizer, cli):
    put_test_splits(fake_hub)
    save_tiny_checkpoint(home, tokenizer)
    # the default, ChatCORE's tasks, needs no word list: the unreachable one here would fail a SpellingBee run
    result = cli("eval", "chat", "-i", "sft", "-x", "5", "-m", "4", "--words", "http://127.0.0.1:9/words.txt",
                 "--device-type", "cpu")
    assert result.code == 0, result.err
    found = accuracies(result.out)
    assert list(found) == list(CHATCORE_BASELINES) == ["ARC-Easy", "ARC-Challenge", "MMLU", "GSM8K", "HumanEval"]
    table = result.out[result.out.index("Task "):].splitlines()
    assert [line.split()[0] for line in table[1:]] == [*CHATCORE_BASELINES, "ChatCORE"]
    problems = {line.split()[0]: int(line.split()[2]) for line in table[1:6]}
    assert problems == {"ARC-Easy": 5, "ARC-Challenge": 5, "MMLU": 5, "GSM8K": 5, "HumanEval": 1}
    section = (home / "report" / "chat-evaluation-sft.md").read_text()
    assert section.startswith("## Chat evaluation sft\n") and "- model: sft_d2_000005\n" in section
    for name, accuracy in found.items():
        assert f"- {name}: {accuracy}\n" in section
    assert re.search(r"^- ChatCORE metric: -?\d\.\d{4}$", section, re.MULTILINE)
    # context 64: the multiple-choice prompts run past it, and the run says so, on screen and in the report
    assert re.search(r"^MMLU: \d of 5 problems did not fit the model's context \(64 tokens\): run past it",
                     result.out, re.MULTILINE)
    assert re.search(r"^- MMLU over context: \d of 5 problems did not fit", section, re.MULTILINE)

    # the same figure as the function that training calls
    from primechat.train.checkpoint import load_model
    model, tok, _ = load_model("sft", device="cpu")
    assert f"{evaluate_categorical(model, tok, load_task('MMLU'), max_problems=5):.4f}" == found["MMLU"]

    # a subset: no ChatCORE, and the report says only what ran
    result = cli("eval", "chat", "-i", "sft", "-a", "GSM8K|ARC-Easy", "-x", "2", "-m", "2", "--device-type", "cpu")
    assert result.code == 0, result.err
    assert list(accuracies(result.out)) == ["GSM8K", "ARC-Easy"] and "ChatCORE" not in result.out
    # it replaced the full evaluation of this stage on the card, and says so
    assert "replaced the report's Chat evaluation sft section (was 5 tasks, up to 5 problems each)\n" in result.out
    section = (home / "report" / "chat-evaluation-sft.md").read_text()
    assert "- GSM8K: " in section and "MMLU" not in section and "ChatCORE" not in section

    # Arithmetic needs no download; it and SpellingBee leave ChatCORE out. They go by the names a mixture and `train
    # rl --task` use too (arithmetic, spelling-bee), reported under their class names, each once.
    result = cli("eval", "chat", "-i", "sft", "-a", "arithmetic|spelling-bee|Arithmetic", "-x", "3", "-m", "4",
                 "--words", "builtin", "--device-type", "cpu")
    assert result.code == 0, result.err
    assert list(accuracies(result.out)) == ["Arithmetic", "SpellingBee"] and "ChatCORE" not in result.out
    section = (home / "report" / "chat-evaluation-sft.md").read_text()
    assert re.search(r"^- Arithmetic: \d\.\d{4}$", section, re.MULTILINE) and "ChatCORE" not in section


def test_replacing_a_section_of_other_tasks_or_problem_cap_is_announced(home):
    from primechat import report
    from primechat.eval.chat import replaced_note
    title = "Chat evaluation mid"
    assert replaced_note(title, ["MMLU"], None) is None  # nothing to replace
    report.log_section(title, {"model": "mid_d2_000005", "max problems": "all", "ARC-Easy": 0.5, "MMLU": 0.25,
                               "MMLU over context": "1 of 9 problems did not fit", "ChatCORE metric": 0.1})
    assert replaced_note(title, ["MMLU", "ARC-Easy"], None) is None  # the same evaluation, run again
    assert replaced_note(title, ["MMLU"], None) == ("replaced the report's Chat evaluation mid section "
                                                    "(was 2 tasks, all problems)")
    assert replaced_note(title, ["MMLU", "ARC-Easy"], 8) is not None


def test_dtype_flag_chooses_the_compute_dtype(home, fake_hub, tokenizer, cli, monkeypatch):
    """nanochat's -d/--dtype: bfloat16 runs on the CPU too; the flag overrides the device's default and
    $PRIMECHAT_DTYPE."""
    monkeypatch.setenv("PRIMECHAT_DTYPE", "float16")  # also restores the variable the in-process command sets
    put_test_splits(fake_hub)
    save_tiny_checkpoint(home, tokenizer)
    for dtype in ("bfloat16", "float32"):
        result = cli("eval", "chat", "-i", "sft", "-a", "ARC-Easy|GSM8K", "-x", "2", "-m", "2", "-d", dtype,
                     "--device-type", "cpu")
        assert result.code == 0, result.err
        assert f"on cpu in {dtype} " in result.out and len(accuracies(result.out)) == 2


def test_command_errors_are_one_line(home, tokenizer, cli):
    result = cli("eval", "chat", "-i", "sft", "-a", "GSM8K|Nope", "--device-type", "cpu")
    assert result.code == 2
    assert "'Nope'" in result.err and "ARC-Easy|ARC-Challenge|MMLU|GSM8K|HumanEval|SpellingBee|Arithmetic" in result.err
    assert len(result.err.strip().splitlines()) == 1
    save_tiny_checkpoint(home, tokenizer, stage="base")
    result = cli("eval", "chat", "-i", "sft", "-a", "GSM8K", "--device-type", "cpu")
    assert result.code == 2 and "sft" in result.err and len(result.err.strip().splitlines()) == 1
    result = cli("eval", "chat", "-i", "base", "-x", "0", "--device-type", "cpu")
    assert result.code == 2 and "--max-problems" in result.err


def test_a_tasks_dataset_missing_from_the_hub_names_the_flag(home, fake_hub, tokenizer, cli):
    """A mirror without ARC: the fix is -a (the dataset's name is primechat's), not "check its name"."""
    save_tiny_checkpoint(home, tokenizer)
    result = cli("eval", "chat", "-i", "sft", "--device-type", "cpu")
    assert result.code == 2 and result.err.count("\n") == 1
    assert "ARC-Easy: dataset allenai/ai2_arc not found on " in result.err
    assert "pick tasks without it with -a/--task-name" in result.err and "HF_TOKEN" not in result.err


def test_unreachable_word_list_fails_before_any_task_runs_and_names_the_flag(home, tokenizer, cli):
    """The word list is fetched before evaluating anything: offline, SpellingBee's turn would come after an hour of
    other tasks, whose scores would be lost."""
    save_tiny_checkpoint(home, tokenizer)
    result = cli("eval", "chat", "-i", "sft", "-a", "Arithmetic|SpellingBee", "-x", "2", "-m", "2",
                 "--words", "http://127.0.0.1:9/words_alpha.txt", "--device-type", "cpu")
    assert result.code == 2
    error = result.err.strip().splitlines()[-1]  # after the "downloading the word list" line
    assert "cannot download the word list" in error and "use --words builtin" in error
    assert "Arithmetic:" not in result.out and "evaluating" not in result.out


def test_help_names_the_default_tasks_once(cli):
    result = cli("eval", "chat", "--help")
    help_text = " ".join(result.out.split())
    assert help_text.count("default: ChatCORE's five") == 1 and help_text.count("(default: ARC-Easy") == 0


def test_torchrun_two_processes_give_the_one_process_figures(home, fake_hub, tokenizer, tmp_path, cli):
    put_test_splits(fake_hub)
    save_tiny_checkpoint(home, tokenizer)
    words = tmp_path / "words.txt"
    words.write_text("apple\nbanana\nstrawberry\nletter\nmississippi\n")
    args = ["-i", "sft", "-a", "ARC-Easy|MMLU|GSM8K|SpellingBee", "-x", "7", "-m", "3", "-b", "2", "-n", "2",
            "-t", "1.0", "--words", words, "--device-type", "cpu"]
    env = {k: v for k, v in cli.env().items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT")}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "primechat.eval.chat", *map(str, args)]
    two = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert two.returncode == 0, two.stderr[-3000:]
    one = cli("eval", "chat", *args)
    assert one.code == 0, one.err
    assert accuracies(two.stdout) == accuracies(one.out) and len(accuracies(one.out)) == 4
    assert "(2 processes)" in two.stdout and len(re.findall(r"^ARC-Easy: \d\.", two.stdout, re.MULTILINE)) == 1
    # the problems that did not fit are counted over both processes
    notes = [line for line in one.out.splitlines() if "did not fit" in line]
    assert notes and notes == [line for line in two.stdout.splitlines() if "did not fit" in line]

