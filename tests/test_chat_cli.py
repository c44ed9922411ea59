"""`primechat chat` on a tiny random checkpoint made here: a stdin session with commands and stats, one-shot -p,
plain completion for base models, a helpful error when the stage is missing, and the conversation's token layout."""

import random

import pytest
import torch

from primechat.chat_cli import Chat
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
    script = "hello there\n/temperature 0\n/topk 3\nthe cat\n/temperature nope\n/clear\n/help\n/quit\nnever read\n"
    proc = cli.popen("chat", "-m", "8", "--device-type", "cpu", stdin=-1, stdout=-1, stderr=-1, text=True)
    out, err = proc.communicate(script, timeout=120)
    assert proc.returncode == 0, err
    assert out.count("Assistant: ") == 2
    assert out.count("time to first token") == 2 and "tok/s" in out and "tokens" in out
    assert "temperature 0.0" in out and "top-k 3" in out
    assert "not a float >= 0: 'nope'" in out and out.count("temperature 0.0") == 2  # a bad value changes nothing
    assert "(new conversation)" in out and "/topk [k]" in out
    assert "never read" not in out


def test_one_shot_prompt_prints_the_reply_and_exits(chat_env, cli):
    first = cli.run("chat", "-p", "hello", "-t", "0", "-m", "6", "--device-type", "cpu")
    second = cli.run("chat", "-p", "hello", "-t", "0", "-m", "6", "--device-type", "cpu")
    assert first.code == 0, first.err
    assert first.out == second.out and first.out.strip()
    assert "time to first token" in first.err and "time to first token" not in first.out


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
