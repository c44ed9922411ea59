"""`primechat chat` on a tiny random checkpoint made here: a stdin session with commands and stats, one-shot -p,
plain completion for base models, a helpful error when the stage is missing, the conversation's token layout, a
conversation too long for the model, and Ctrl-C / Ctrl-D (signals sent to a child whose stdin is a terminal)."""

import codecs
import os
import pty
import random
import re
import signal
import subprocess
import threading
import time

import pytest
import torch

from primechat.chat_cli import Chat
from primechat.common import UserError
from primechat.engine import Engine
from primechat.model import GPT, GPTConfig
from primechat.tokenizer import train_tokenizer
from primechat.train.checkpoint import checkpoint_dir, save_checkpoint

WORDS = "the a cat dog sat ran on under mat tree quickly slowly happy sad one two three hello world".split()


def tiny_tokenizer():
    rng = random.Random(0)
    docs = [" ".join(rng.choice(WORDS) for _ in range(40)) + ". 12 + 7 = 19\n" for _ in range(200)]
    return train_tokenizer(iter(docs), 300)


def tiny_model(vocab_size: int) -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(sequence_len=64, vocab_size=vocab_size, n_layer=2, n_head=2, n_kv_head=1, n_embd=32)
    model = GPT(config)
    model.init_weights()
    with torch.no_grad():
        model.lm_head.weight.normal_(0, 0.5)  # sharper than the init, so that replies vary with the seed
    return model


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def chat_home(tmp_path_factory, tokenizer):
    """A home folder holding a tokenizer and one checkpoint saved as both base and sft (d2, step 5)."""
    home = tmp_path_factory.mktemp("chat_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRIMECHAT_HOME", str(home))
        tokenizer.save(home / "tokenizer")
        model = tiny_model(tokenizer.vocab_size)
        meta = {"step": 5, "model_config": model.config.to_dict()}
        for stage in ("base", "sft"):
            save_checkpoint(checkpoint_dir(stage, "d2"), 5, model.state_dict(), meta)
    return home


@pytest.fixture(scope="module")
def runaway_home(tmp_path_factory, tokenizer):
    """A home whose sft/d2 model never ends a reply at temperature 0 (its <|assistant_end|> and <|bos|> logits are
    0, below the largest of ~300 random ones), with a 2,560-token context: a reply long enough to interrupt."""
    home = tmp_path_factory.mktemp("runaway_home")
    tokenizer.save(home / "tokenizer")
    torch.manual_seed(0)
    model = GPT(GPTConfig(sequence_len=256, vocab_size=tokenizer.vocab_size, n_layer=2, n_head=2, n_kv_head=1,
                          n_embd=32))
    model.init_weights()
    with torch.no_grad():
        model.lm_head.weight.normal_(0, 0.5)
        for name in ("<|assistant_end|>", "<|bos|>"):
            model.lm_head.weight[tokenizer.encode_special(name)] = 0
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRIMECHAT_HOME", str(home))
        save_checkpoint(checkpoint_dir("sft", "d2"), 7, model.state_dict(),
                        {"step": 7, "model_config": model.config.to_dict()})
    return home


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """A tiny model computes faster on one thread than on several (OpenMP hand-offs), in this process and in
    the `primechat chat` subprocesses."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def chat_env(chat_home, monkeypatch):
    monkeypatch.setenv("PRIMECHAT_HOME", str(chat_home))
    return chat_home


def test_stdin_session_with_commands_and_stats(chat_env, cli):
    script = ("hello there\n/temperature 0\n/topk 3\nthe cat\n/temperature nope\n/clear\nclear\n/help\nexit\n"
              "never read\n")  # nanochat's bare clear and exit work too
    proc = cli.popen("chat", "-m", "8", "--device-type", "cpu", stdin=-1, stdout=-1, stderr=-1, text=True)
    out, err = proc.communicate(script, timeout=120)
    assert proc.returncode == 0, err
    assert out.startswith("primechat chat · sft/d2/5 ·")  # the model named as everywhere else: stage/tag/step
    assert out.count("Assistant: ") == 2
    assert out.count("time to first token") == 2 and "tok/s" in out and "tokens" in out
    assert "temperature 0.0" in out and "top-k 3" in out
    assert "not a float >= 0: 'nope'" in out and out.count("temperature 0.0") == 2  # a bad value changes nothing
    assert out.count("(new conversation)") == 2 and "/topk [k]" in out
    assert "never read" not in out


def test_one_shot_prompt_prints_the_reply_and_exits(chat_env, cli):
    first = cli.run("chat", "-p", "hello", "-t", "0", "-m", "6", "--device-type", "cpu")
    second = cli.run("chat", "-p", "hello", "-t", "0", "-m", "6", "--device-type", "cpu")
    assert first.code == 0, first.err
    assert first.out == second.out and first.out.strip()
    assert "time to first token" in first.err and "time to first token" not in first.out


def test_a_prompt_asked_again_gets_another_sample_unless_the_seed_is_given(chat_env, cli):
    def ask(*flags):
        result = cli.run("chat", "-p", "hello", "-t", "1", "-k", "0", "-m", "8", "--device-type", "cpu", *flags)
        assert result.code == 0, result.err
        return result.out

    assert ask("--seed", "7") == ask("--seed", "7")
    assert len({ask(), ask(), ask()}) > 1  # one seed for every run made these equal
    told = cli.run("chat", "-p", "hello", "-t", "1", "-k", "0", "-m", "8", "--device-type", "cpu")
    seed = re.search(r" · seed (\d+)$", told.err.strip().splitlines()[-1]).group(1)  # the seed that repeats it
    assert ask("--seed", seed) == told.out


def test_one_shot_says_when_it_ran_past_the_trained_context(chat_env, cli):
    short = cli.run("chat", "-p", "hello", "-t", "0", "-m", "4", "--device-type", "cpu")
    assert short.code == 0 and "trained on" not in short.err
    long = cli.run("chat", "-p", "the cat sat " * 20, "-t", "0", "-m", "4", "--device-type", "cpu")
    assert long.code == 0, long.err
    assert "run past the 64-token context the model was trained on" in long.err and "trained on" not in long.out


def test_base_model_completes_plain_text(chat_env, cli):
    result = cli("chat", "-i", "base", "-p", "the cat", "-m", "5", "--device-type", "cpu")
    assert result.code == 0, result.err
    assert result.out.startswith("the cat")


def test_missing_stage_names_the_stages_that_exist(home, tokenizer, cli):
    tokenizer.save(home / "tokenizer")
    model = tiny_model(tokenizer.vocab_size)
    save_checkpoint(checkpoint_dir("base", "d2"), 1, model.state_dict(),
                    {"step": 1, "model_config": model.config.to_dict()})
    result = cli("chat", "-p", "hi", "--device-type", "cpu")
    assert result.code == 2
    assert "no sft checkpoint" in result.err and "base" in result.err and "-i" in result.err
    assert len(result.err.strip().splitlines()) == 1


def test_conversation_is_one_growing_token_list(tokenizer, capsys):
    model = tiny_model(tokenizer.vocab_size).eval()
    chat = Chat(Engine(model, tokenizer), tokenizer, chat_format=True, temperature=1.0, top_k=0, max_tokens=5)
    s = tokenizer.encode_special
    chat.reply("hello")
    first_turn = list(chat.tokens)
    opening = [tokenizer.bos_id, s("<|user_start|>"), *tokenizer.encode("hello"), s("<|user_end|>"),
               s("<|assistant_start|>")]
    assert first_turn[:len(opening)] == opening
    assert first_turn[-1] == s("<|assistant_end|>") and len(first_turn) <= len(opening) + 6
    chat.reply("the dog")
    assert chat.tokens[:len(first_turn)] == first_turn  # history kept as is, not re-encoded
    assert chat.tokens[len(first_turn)] == s("<|user_start|>")
    chat.clear()
    assert chat.tokens == [tokenizer.bos_id]


def test_context_figure_is_the_conversation_length(tokenizer):
    model = tiny_model(tokenizer.vocab_size).eval()
    chat = Chat(Engine(model, tokenizer), tokenizer, chat_format=True, temperature=0, top_k=0, max_tokens=5)
    for text in ("hello", "the dog"):
        stats = chat.reply(text)
        assert re.search(r" [1-9]\d* tokens · ", stats)  # a reply was written, so counting it twice would show
        assert stats.endswith(f" · {len(chat.tokens)} in context")
    base = Chat(Engine(model, tokenizer), tokenizer, chat_format=False, temperature=0, top_k=0, max_tokens=5)
    n = int(re.search(r"(\d+) tokens · ", base.reply("the cat")).group(1))
    assert base.reply("the cat").endswith(f" · {1 + len(tokenizer.encode('the cat')) + n} in context")


def test_a_conversation_too_long_for_the_model_is_refused_in_one_line(chat_env, tokenizer, cli, capsys):
    model = tiny_model(tokenizer.vocab_size).eval()
    engine = Engine(model, tokenizer)
    long_text = "the cat sat " * 300  # more tokens than the tiny model's 640 positions
    chat = Chat(engine, tokenizer, chat_format=True, temperature=0, top_k=0, max_tokens=5)
    with pytest.raises(UserError, match=r"^the prompt is [\d,]+ tokens, too long for this model's 640-token limit$"):
        chat.reply(long_text)
    assert chat.tokens == [tokenizer.bos_id] and capsys.readouterr().out == ""  # nothing written, nothing kept
    chat.reply("hello")
    history = list(chat.tokens)
    with pytest.raises(UserError, match=r"^the conversation is [\d,]+ tokens, .*: /clear to start again$"):
        chat.reply(long_text)
    assert chat.tokens == history  # the refused turn is not added

    result = cli("chat", "-p", long_text, "--device-type", "cpu")
    assert result.code == 2 and result.out == ""
    assert "the prompt is" in result.err and len(result.err.strip().splitlines()) == 1

    proc = cli.popen("chat", "-t", "0", "-m", "4", "--device-type", "cpu", stdin=-1, stdout=-1, stderr=-1, text=True)
    out, err = proc.communicate(f"hello\n{long_text}\nthe cat\n", timeout=120)
    assert proc.returncode == 0, err
    assert out.count("/clear to start again") == 1 and out.count("Assistant: ") == 2  # the session goes on


def test_past_the_trained_context_is_said_once_per_conversation(chat_env, cli):
    """The tiny model was trained on 64 tokens; the note comes as a conversation crosses that, not at every turn."""
    long_text = "the cat sat " * 20
    proc = cli.popen("chat", "-t", "0", "-m", "4", "--device-type", "cpu", stdin=-1, stdout=-1, stderr=-1, text=True)
    out, err = proc.communicate(f"{long_text}\nhello\nhello\n/clear\n{long_text}\n", timeout=120)
    assert proc.returncode == 0, err
    assert out.count("Assistant: ") == 4 and out.count("64-token context the model was trained on") == 2


class Stop:
    """An output that raises KeyboardInterrupt, as Ctrl-C would, on its `at`-th write (a streamed token)."""

    def __init__(self, at: int):
        self.at, self.text = at, ""

    def write(self, text):
        self.at -= 1
        if self.at == 0:
            raise KeyboardInterrupt
        self.text += text

    def flush(self):
        pass


def test_ctrl_c_stops_the_reply_and_keeps_what_it_wrote(runaway_home, tokenizer):
    from primechat.train.checkpoint import load_model
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRIMECHAT_HOME", str(runaway_home))
        model, _, _ = load_model("sft", "d2", 7)
    chat = Chat(Engine(model, tokenizer), tokenizer, chat_format=True, temperature=0, top_k=0, max_tokens=50,
                out=Stop(at=6))  # the heading, four tokens, then Ctrl-C as the fifth is written
    try:
        stats = chat.reply("hello")
    except KeyboardInterrupt:  # would otherwise end the whole test session
        pytest.fail("Ctrl-C went past the reply")
    assert chat.stopped and " 5 tokens (stopped) · " in stats
    s = tokenizer.encode_special
    prompt = [tokenizer.bos_id, s("<|user_start|>"), *tokenizer.encode("hello"), s("<|user_end|>"),
              s("<|assistant_start|>")]
    assert chat.tokens[:len(prompt)] == prompt and len(chat.tokens) == len(prompt) + 6
    assert chat.tokens[-1] == s("<|assistant_end|>")  # the partial reply is a closed turn of the history
    chat.out = Stop(at=-1)  # never stops
    stats = chat.reply("the cat")
    assert not chat.stopped and " 50 tokens · " in stats and chat.out.text.strip()  # the engine still answers


class Terminal:
    """`primechat chat ARGS` run as a person runs it, with a terminal for stdin (`type` presses keys on it). Its
    output, a pipe, is gathered on a thread so that a test can wait for some text to appear."""

    def __init__(self, cli, *args):
        self.keys, stdin = pty.openpty()
        self.proc = cli.popen("chat", *args, "--device-type", "cpu", stdin=stdin, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
        os.close(stdin)
        self.text = ""
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        decoder = codecs.getincrementaldecoder("utf-8")()
        while chunk := os.read(self.proc.stdout.fileno(), 4096):
            self.text += decoder.decode(chunk)

    def type(self, keys: str):
        os.write(self.keys, keys.encode())

    def ctrl_c(self):
        self.proc.send_signal(signal.SIGINT)  # what a terminal sends on Ctrl-C

    def wait_for(self, pattern: str, start: int = 0, timeout: float = 60) -> int:
        """Where the first match of the regex `pattern` at or after `start` ends; fails once the child has ended
        without writing it."""
        deadline = time.monotonic() + timeout
        while True:
            ended = self.proc.poll() is not None
            if ended:
                self.reader.join(10)  # the rest of its output
            if match := re.compile(pattern).search(self.text, start):
                return match.end()
            assert not ended and time.monotonic() < deadline, \
                f"no {pattern!r} in {self.text[start:]!r}" + (f", exit {self.proc.returncode}" if ended else "")
            time.sleep(0.01)


@pytest.fixture
def terminal(cli):
    started = []

    def start(*args) -> Terminal:
        started.append(Terminal(cli, *args))
        return started[-1]
    yield start
    for chat in started:
        if chat.proc.poll() is None:
            chat.proc.kill()
        chat.proc.wait()
        os.close(chat.keys)


def test_ctrl_d_at_the_prompt_leaves_on_a_line_of_its_own(chat_env, terminal):
    chat = terminal()
    chat.wait_for("You: ")
    chat.type("\x04")  # Ctrl-D
    assert chat.proc.wait(timeout=60) == 0
    assert chat.text.endswith("You: \n")  # so that the shell's prompt starts on a new line


def test_ctrl_c_stops_a_reply_or_clears_the_prompt(runaway_home, monkeypatch, terminal):
    monkeypatch.setenv("PRIMECHAT_HOME", str(runaway_home))
    chat = terminal("-t", "0", "-m", "5000")
    at = chat.wait_for("You: ")
    for line in ("hello", "the cat"):  # the second reply shows that a stopped one leaves the engine usable
        chat.type(line + "\n")
        at = chat.wait_for("Assistant: .", at)  # once the reply shows, so it has a token to keep
        chat.ctrl_c()
        at = chat.wait_for(r"\(stopped\)", at)
        at = chat.wait_for("You: ", at)
    chat.ctrl_c()  # at the prompt
    at = chat.wait_for(r"\n\(Ctrl-D or /quit to leave\)\n\nYou: ", at)
    chat.type("/quit\n")
    assert chat.proc.wait(timeout=60) == 0
    stats = [line for line in chat.text.splitlines() if "time to first token" in line]
    assert len(stats) == 2 and all(re.search(r" [1-9]\d* tokens \(stopped\) · ", line) for line in stats)


def test_ctrl_c_ends_a_one_shot_prompt_after_what_it_wrote(runaway_home, monkeypatch, terminal):
    monkeypatch.setenv("PRIMECHAT_HOME", str(runaway_home))
    chat = terminal("-p", "hello", "-t", "0", "-m", "5000")
    chat.wait_for(".")
    chat.ctrl_c()
    assert chat.proc.wait(timeout=60) == 130
    err = chat.proc.stderr.read().decode()
    assert "(stopped)" in err and err.strip().endswith("primechat: interrupted") and chat.text.strip()
