"""The tokenizer: exact vocabulary, lossless round trips, special tokens only where asked for, the chat format's ids
and masks, save/load, and the `primechat tokenizer train|eval` commands on a tiny dataset in conftest's isolated
`home` (CPU, no network)."""

import random

import pytest
import tiktoken
import torch

from primechat import cli
from primechat.common import UserError
from primechat.data import shards
from primechat.tokenizer import SPECIAL_TOKENS, ConversationError, Tokenizer, load_tokenizer, train_tokenizer

VOCAB = 512
WORDS = ("the of and to in is that it was for on are with as his they be at one have this from or had by word but "
         "what some we can out other were all there when up use your how said an each she which do their time if "
         "will way about many then them write would like so these her long make thing see him two has look more day "
         "could go come did number sound no most people my over know water than call first who may down side been "
         "now find tokenizer byte pair encoding merge vocabulary").split()
HARD_TEXTS = [
    "",
    "Hello, world! It's 2026; we'd've known they'll say I'M FINE.",
    "digits 0 7 42 123 4567 89012 3.14159 1,000,000 0x1F 007",
    "spaces    runs\t\ttabs\n\nnewlines\r\nCRLF   \n  trailing   ",
    "你好，世界！こんにちは。안녕하세요. Привет, мир. مرحبا بالعالم. שלום",
    "emoji 🚀🌍 family 👩‍👩‍👧 flag 🇫🇷 skin 👍🏽 combining é (e\u0301) zero\u200bwidth",
    "mixed: naïve café Straße x²+y²≤z² → ∑∫ «quotes» “curly” — dash… <|bos|> {json: [1, 2]}",
]


def make_docs(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 80)))
        docs.append(f"{words.capitalize()}. It's {rng.randint(0, 10**6)} o'clock, they'll see; "
                    f"{HARD_TEXTS[i % len(HARD_TEXTS)]}\n")
    return docs


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return train_tokenizer(iter(make_docs(400)), VOCAB)


def run_cli(*argv) -> int:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(list(argv))
    return exit_info.value.code


# --------------------------------------------------------------------------------------------------------------------
# Vocabulary and encoding

def test_vocab_size_is_exact_and_specials_take_the_last_ids(tok):
    assert tok.vocab_size == VOCAB
    assert tok.get_special_tokens() == SPECIAL_TOKENS
    assert [tok.encode_special(name) for name in SPECIAL_TOKENS] == list(range(VOCAB - 9, VOCAB))
    assert tok.bos_id == VOCAB - 9


@pytest.mark.parametrize("text", HARD_TEXTS)
def test_round_trip_is_lossless(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_special_tokens_written_in_text_stay_text(tok):
    text = "<|bos|>hi<|user_start|> <|assistant_end|><|output_end|>"
    ids = tok.encode(text)
    assert max(ids) < VOCAB - 9
    assert tok.decode(ids) == text


def test_prepend_and_append_by_name_or_id(tok):
    body = tok.encode("hello there")
    end = tok.encode_special("<|assistant_end|>")
    assert tok.encode("hello there", prepend="<|bos|>", append="<|assistant_end|>") == [tok.bos_id] + body + [end]
    assert tok.encode("hello there", prepend=tok.bos_id, append=end) == [tok.bos_id] + body + [end]
    with pytest.raises(ValueError, match="not a special token"):
        tok.encode("x", prepend="<|nope|>")


def test_batch_equals_single(tok):
    texts = HARD_TEXTS + make_docs(20, seed=1)
    assert tok.encode(texts) == [tok.encode(t) for t in texts]
    assert tok.encode(texts, prepend="<|bos|>", num_threads=2) == [tok.encode(t, prepend="<|bos|>") for t in texts]


def test_merges_are_learned(tok):
    # a frequent word must compress, or the "tokenizer" is just bytes
    assert len(tok.encode(" tokenizer")) < len(" tokenizer")


# --------------------------------------------------------------------------------------------------------------------
# Chat format

def expect(tok, *pieces):
    """Expected (ids, mask) from pieces: (special name, m) or (text, m, 'text')."""
    ids, mask = [], []
    for piece in pieces:
        new = tok.encode(piece[0]) if len(piece) == 3 else [tok.encode_special(piece[0])]
        ids += new
        mask += [piece[1]] * len(new)
    return ids, mask


def test_conversation_ids_and_mask(tok):
    conversation = {"messages": [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
    ]}
    assert tok.render_conversation(conversation) == expect(
        tok, ("<|bos|>", 0),
        ("<|user_start|>", 0), ("Hi there", 0, "text"), ("<|user_end|>", 0),
        ("<|assistant_start|>", 0), ("Hello! How can I help?", 1, "text"), ("<|assistant_end|>", 1),
        ("<|user_start|>", 0), ("What is 2+2?", 0, "text"), ("<|user_end|>", 0),
        ("<|assistant_start|>", 0), ("4", 1, "text"), ("<|assistant_end|>", 1),
    )
    # a bare list of messages is the same conversation
    assert tok.render_conversation(conversation["messages"]) == tok.render_conversation(conversation)


def test_tool_parts_mask_calls_in_and_outputs_out(tok):
    conversation = [
        {"role": "user", "content": "What is 6 times 7?"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Let me compute."},
            {"type": "python", "text": "6*7"},
            {"type": "python_output", "text": "42"},
            {"type": "text", "text": "It is 42."},
        ]},
    ]
    assert tok.render_conversation(conversation) == expect(
        tok, ("<|bos|>", 0),
        ("<|user_start|>", 0), ("What is 6 times 7?", 0, "text"), ("<|user_end|>", 0),
        ("<|assistant_start|>", 0), ("Let me compute.", 1, "text"),
        ("<|python_start|>", 1), ("6*7", 1, "text"), ("<|python_end|>", 1),
        ("<|output_start|>", 0), ("42", 0, "text"), ("<|output_end|>", 0),
        ("It is 42.", 1, "text"), ("<|assistant_end|>", 1),
    )


def test_system_message_is_merged_into_first_user_message(tok):
    with_system = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                   {"role": "assistant", "content": "Hey"}]
    merged = [{"role": "user", "content": "Be brief.\n\nHi"}, {"role": "assistant", "content": "Hey"}]
    assert tok.render_conversation(with_system) == tok.render_conversation(merged)


def test_truncation_to_max_tokens(tok):
    conversation = [{"role": "user", "content": "tell me a long story " * 20},
                    {"role": "assistant", "content": "once upon a time " * 20}]
    ids, mask = tok.render_conversation(conversation)
    assert len(ids) > 50
    assert tok.render_conversation(conversation, max_tokens=50) == (ids[:50], mask[:50])


def test_render_for_completion_drops_the_answer_and_opens_a_turn(tok):
    conversation = {"messages": [{"role": "user", "content": "Capital of France?"},
                                 {"role": "assistant", "content": "Paris"}]}
    ids = tok.render_for_completion(conversation)
    prompt, _ = tok.render_conversation(conversation["messages"][:1])
    assert ids == prompt + [tok.encode_special("<|assistant_start|>")]
    assert len(conversation["messages"]) == 2  # the caller's conversation is left alone
    with pytest.raises(ConversationError, match="message 0: expected role 'assistant'"):
        tok.render_for_completion([{"role": "user", "content": "no answer to drop"}])


def user(text):
    return {"role": "user", "content": text}


def assistant(content):
    return {"role": "assistant", "content": content}


@pytest.mark.parametrize("messages, error", [
    ([user("a"), user("b")], "message 1 has role 'user', expected 'assistant'"),
    ([assistant("a")], "message 0 has role 'assistant', expected 'user'"),
    ([{"role": "system", "content": "s"}, assistant("a")], "message 1 has role 'assistant', expected 'user'"),
    ([user("a"), {"role": "system", "content": "s"}], "message 1 has role 'system', expected 'assistant'"),
    ([{"role": "system", "content": "s"}], "message 1: expected role 'user'"),
    ([user("a"), assistant([{"type": "image", "text": "x"}])], "message 1 has a part of type 'image'"),
])
def test_malformed_conversations_raise_naming_the_message(tok, messages, error):
    with pytest.raises(ValueError, match=error) as info:
        tok.render_conversation(messages)
    assert isinstance(info.value, UserError)  # the CLI shows it as one line, exit 2


# --------------------------------------------------------------------------------------------------------------------
# Save and load

def test_save_load_round_trip_and_token_bytes(tok, tmp_path):
    tok.save(tmp_path / "tok")
    for path in (tmp_path / "tok", tmp_path / "tok" / "tokenizer.pkl"):
        loaded = load_tokenizer(path)
        assert loaded.vocab_size == VOCAB
        assert loaded.encode(HARD_TEXTS) == tok.encode(HARD_TEXTS)
        assert loaded.encode_special("<|output_end|>") == VOCAB - 1

    token_bytes = torch.load(tmp_path / "tok" / "token_bytes.pt")
    assert token_bytes.dtype == torch.int32 and token_bytes.shape == (VOCAB,)
    assert token_bytes[VOCAB - 9:].tolist() == [0] * 9
    assert token_bytes[ord("a")].item() == 1  # the first 256 ids are the single bytes
    (word,) = tok.encode(" tokenizer")[-1:]
    assert token_bytes[word].item() == len(tok.token_bytes(word)) > 1
    assert token_bytes[:VOCAB - 9].min().item() >= 1


def test_load_missing_tokenizer_says_how_to_make_one(tmp_path):
    with pytest.raises(UserError, match="primechat tokenizer train"):
        load_tokenizer(tmp_path / "nothing here")


# --------------------------------------------------------------------------------------------------------------------
# Commands

def write_dataset(home, name="tiny"):
    folder = home / "base_data" / name
    shards.write_shard(make_docs(300, seed=2), folder / shards.shard_name(0))
    shards.write_shard(make_docs(50, seed=3), folder / shards.shard_name(1))


def test_train_command_saves_a_tokenizer_and_reports(home, capsys):
    write_dataset(home)
    # every document is cut to 100 chars, and reading stops once more than 2,000 have gone by: 21 documents
    assert run_cli("tokenizer", "train", "--dataset", "tiny", "--vocab-size", "300", "--max-chars", "2e3",
                   "--doc-cap", "100") == 0
    assert "trained on 2,100 characters (21 documents)" in capsys.readouterr().out
    tokenizer = load_tokenizer()
    assert tokenizer.vocab_size == 300
    assert (home / "tokenizer" / "token_bytes.pt").is_file()
    section = (home / "report" / "tokenizer-training.md").read_text()
    for line in ("- vocab_size: 300", "- train_chars: 2100", "- num_special_tokens: 9", "- token_bytes_max: "):
        assert line in section


def test_without_dataset_flag_the_only_dataset_present_is_used(home, capsys):
    """A user who downloaded or added one corpus (not nanochat's default) means that one, and is told so."""
    write_dataset(home, "mine")
    assert run_cli("tokenizer", "train", "--vocab-size", "300", "--max-chars", "2e3") == 0
    out = capsys.readouterr().out
    assert "dataset: mine (the only one in" in out and "training shard(s) of mine" in out
    write_dataset(home, "other")  # two candidates: no guessing, the default is asked for and the error lists both
    assert run_cli("tokenizer", "train", "--vocab-size", "300") == 2
    err = capsys.readouterr().err
    assert "'climbmix-400b-shuffle' needs at least 2 shards" in err and "datasets present: mine, other" in err


@pytest.mark.parametrize("argv, message", [
    (["--vocab-size", "264"], "--vocab-size 264 is too small"),
    (["--vocab-size", "100000"], "lower --vocab-size"),
    (["--dataset", "missing"], "needs at least 2 shards"),
])
def test_train_command_user_errors_exit_2(home, capsys, argv, message):
    write_dataset(home)
    assert run_cli("tokenizer", "train", "--dataset", "tiny", *argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (home / "tokenizer" / "tokenizer.pkl").exists()


def offline(name):
    """tiktoken.get_encoding without network: what the commands meet on a machine that never cached GPT vocabularies."""
    raise ConnectionError(f"cannot download {name}")


def test_eval_command_offline_says_baselines_are_unavailable(home, capsys, monkeypatch):
    write_dataset(home)
    assert run_cli("tokenizer", "train", "--dataset", "tiny", "--vocab-size", "300") == 0
    capsys.readouterr()
    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    assert run_cli("tokenizer", "eval", "--dataset", "tiny") == 0
    out = capsys.readouterr().out
    for row in ("news", "korean", "code", "math", "science", "train", "val"):
        assert f"| {row} | " in out
    assert "GPT-2 (tiktoken `gpt2`): unavailable offline" in out
    assert "GPT-4 (tiktoken `cl100k_base`): unavailable offline" in out
    assert "GPT-2 tokens" not in out
    assert (home / "report" / "tokenizer-evaluation.md").read_text().count("| val | ") == 1


def test_eval_command_compares_with_available_baselines(home, capsys, monkeypatch):
    write_dataset(home)
    assert run_cli("tokenizer", "train", "--dataset", "tiny", "--vocab-size", "300") == 0
    ours = load_tokenizer().enc
    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: ours)  # a baseline identical to ours: 0% difference
    capsys.readouterr()
    assert run_cli("tokenizer", "eval", "--dataset", "tiny") == 0
    out = capsys.readouterr().out
    assert "| GPT-2 tokens | GPT-2 bytes/token | vs GPT-2 | GPT-4 tokens |" in out
    code_row = next(line for line in out.splitlines() if line.startswith("| code | "))
    assert code_row.count("+0.0%") == 2
    assert "unavailable" not in out


def test_bench_command_trains_with_both_libraries(home, capsys, monkeypatch):
    write_dataset(home)
    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    assert run_cli("bench", "tokenizer", "--dataset", "tiny", "--vocab-size", "300") == 0
    out = capsys.readouterr().out
    for row in ("| rustbpe ", "| HF tokenizers ", "| tiktoken, our 300 vocab (primechat) | ",
                "| HF tokenizers, same training (300 vocab) | "):
        assert row in out
    assert "GPT-4 cl100k_base: unavailable offline" in out


def test_train_refuses_to_replace_the_tokenizer_checkpoints_use_and_overwrite_moves_it_aside(home, capsys):
    """A new tokenizer of the same size loads silently into old checkpoints and turns their output into garbage."""
    write_dataset(home)
    assert run_cli("tokenizer", "train", "--dataset", "tiny", "--vocab-size", "300") == 0
    old = (home / "tokenizer" / "tokenizer.pkl").read_bytes()
    (home / "base_checkpoints" / "d2").mkdir(parents=True)
    (home / "base_checkpoints" / "d2" / "meta_000010.json").write_text("{}")
    (home / "mid_checkpoints" / "imported").mkdir(parents=True)  # carries its own tokenizer: not affected
    (home / "mid_checkpoints" / "imported" / "meta_000001.json").write_text("{}")
    (home / "mid_checkpoints" / "imported" / "tokenizer.pkl").write_bytes(old)
    capsys.readouterr()
    assert run_cli("tokenizer", "train", "--dataset", "tiny", "--vocab-size", "300", "--max-chars", "2e3") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "base_checkpoints/d2 was trained with" in err
    assert "--overwrite" in err and "PRIMECHAT_HOME" in err and "imported" not in err
    assert (home / "tokenizer" / "tokenizer.pkl").read_bytes() == old
    # the same settings on the same data give the same tokenizer: a rerun (speedrun --restart) goes through
    assert run_cli("tokenizer", "train", "--dataset", "tiny", "--vocab-size", "300") == 0
    assert (home / "tokenizer" / "tokenizer.pkl").read_bytes() == old and not (home / "tokenizer_backup").exists()
    # a tokenizer from before the record (training.json) is compared after training: the same one goes through,
    # another is refused and the old one kept
    (home / "tokenizer" / "training.json").unlink()
    assert run_cli("tokenizer", "train", "--dataset", "tiny", "--vocab-size", "300") == 0
    (home / "tokenizer" / "training.json").unlink()
    capsys.readouterr()
    assert run_cli("tokenizer", "train", "--dataset", "tiny", "--vocab-size", "300", "--max-chars", "2e3") == 2
    assert "differs from it" in capsys.readouterr().err
    assert (home / "tokenizer" / "tokenizer.pkl").read_bytes() == old

    assert run_cli("tokenizer", "train", "--dataset", "tiny", "--vocab-size", "300", "--max-chars", "2e3",
                   "--overwrite") == 0
    assert "moved the old tokenizer to" in capsys.readouterr().out
    backups = list((home / "tokenizer_backup").iterdir())
    assert len(backups) == 1 and (backups[0] / "tokenizer.pkl").read_bytes() == old
    assert (home / "tokenizer" / "tokenizer.pkl").read_bytes() != old


def test_eval_defaults_to_the_dataset_the_tokenizer_was_trained_on(home, capsys, monkeypatch):
    write_dataset(home, "mine")
    write_dataset(home, "other")  # two datasets: without the record, eval would ask for climbmix
    assert run_cli("tokenizer", "train", "--dataset", "mine", "--vocab-size", "300") == 0
    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    capsys.readouterr()
    assert run_cli("tokenizer", "eval") == 0
    out = capsys.readouterr().out
    assert "dataset: mine (the tokenizer was trained on it" in out and "rows from dataset mine" in out
    (home / "tokenizer" / "training.json").unlink()  # an older tokenizer, or nanochat's: today's rule
    assert run_cli("tokenizer", "eval") == 2
    assert "'climbmix-400b-shuffle' needs at least 2 shards" in capsys.readouterr().err
