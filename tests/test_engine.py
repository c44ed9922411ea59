"""The inference engine: KV-cache logits equal a full recompute (sliding windows, smear, value embeddings, GQA,
chunked prefill), sampling (seeds, temperature 0, top-k/top-p, max_tokens, independent rows), the context limit, a
generation stopped part-way, tool calls injected from a scripted fake model, the calculator's whitelist, and UTF-8-safe
streaming."""

import json

import pytest
import torch

from primechat.engine import (Engine, KVCache, StreamDecoder, calculator, sample_next_token, tool_call_specials,
                              tool_output)
from primechat.model import GPT, GPTConfig
from primechat.tokenizer import SPECIAL_TOKENS, Tokenizer

VOCAB = 300


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: with several threads, OpenMP's hand-offs cost more than the arithmetic (much more on a busy
    machine), so these tests run single-threaded."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def byte_tokenizer() -> Tokenizer:
    """256 single-byte tokens plus the specials (ids 256..264): no training needed."""
    return Tokenizer.from_ranks({bytes([b]): b for b in range(256)})


def tiny_model(n_layer=3, windows=None, seed=0, **overrides) -> GPT:
    fields = dict(sequence_len=64, vocab_size=VOCAB, n_layer=n_layer, n_head=4, n_kv_head=2, n_embd=64)
    fields.update(overrides)
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**fields))
    model.init_weights()
    with torch.no_grad():  # give zero-initialised weights values so that every path shows in the logits
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.1)
        model.lm_head.weight.normal_(0, 0.3)
    if windows is not None:  # windows shorter than the sequence (the config's rule never goes below 128 tokens)
        model.windows = windows
    return model.eval()


def cached_logits(model, idx, chunks):
    """Logits of idx fed through a KV cache in chunks of the given sizes, then one token at a time."""
    cache = KVCache(model.config, idx.size(0), 4, torch.float32, "cpu")  # small: exercises growth too
    out, pos = [], 0
    for size in chunks:
        out.append(model(idx[:, pos:pos + size], kv_cache=cache))
        pos += size
    for t in range(pos, idx.size(1)):
        out.append(model(idx[:, t:t + 1], kv_cache=cache))
    assert cache.pos == idx.size(1)
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("windows,chunks", [
    (None, [1]),
    (None, [20]),
    ([5, 9, 64], [13, 17]),  # windows smaller than the chunks and than the sequence
    ([3, 64, 64], [2, 2, 7]),
])
@torch.no_grad()
def test_kv_cache_matches_full_recompute(windows, chunks):
    model = tiny_model(windows=windows)
    idx = torch.randint(0, VOCAB, (2, 40), generator=torch.Generator().manual_seed(1))
    full = model(idx)
    assert torch.allclose(cached_logits(model, idx, chunks), full, atol=1e-5, rtol=1e-4)
    assert torch.allclose(model(idx, at=-1), full[:, -1:], atol=1e-5, rtol=1e-4)
    ends = torch.tensor([39, 17])  # one position per row, as for right-padded multiple-choice prompts
    assert torch.allclose(model(idx, at=ends)[:, 0], full[[0, 1], [39, 17]], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("switch", ["smear", "value_embeds", "backout", "skip_lambdas"])
@torch.no_grad()
def test_kv_cache_matches_with_each_feature_off(switch):
    model = tiny_model(windows=[6, 64, 64], **{switch: False})
    idx = torch.randint(0, VOCAB, (1, 30), generator=torch.Generator().manual_seed(2))
    assert torch.allclose(cached_logits(model, idx, [11]), model(idx), atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_expanded_cache_rows_continue_like_the_prompt():
    model = tiny_model(windows=[5, 64, 64])
    idx = torch.randint(0, VOCAB, (1, 25), generator=torch.Generator().manual_seed(3))
    prefill = KVCache(model.config, 1, 20, torch.float32, "cpu")
    model(idx[:, :20], kv_cache=prefill)
    cache = prefill.expand(3, 30)
    rows = torch.stack([idx[0, 20:]] * 3)
    got = torch.cat([model(rows[:, t:t + 1], kv_cache=cache) for t in range(5)], dim=1)
    assert torch.allclose(got, model(idx)[:, 20:].expand(3, -1, -1), atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------------------------------------------------
# Sampling and generation on a real (random, tiny) model

@pytest.fixture(scope="module")
def engine():
    tok = byte_tokenizer()
    return Engine(tiny_model(n_layer=2, vocab_size=tok.vocab_size), tok)


PROMPT = [256, 72, 105, 32]  # <|bos|>"Hi "


def run(engine, **kwargs):
    return list(engine.generate(PROMPT, **kwargs))


def test_same_seed_same_tokens_other_seed_other_tokens(engine):
    a = run(engine, num_samples=2, max_tokens=12, seed=7)
    assert a == run(engine, num_samples=2, max_tokens=12, seed=7)
    assert a != run(engine, num_samples=2, max_tokens=12, seed=8)


def test_temperature_zero_is_greedy_and_deterministic(engine):
    columns = run(engine, num_samples=3, max_tokens=10, temperature=0, seed=1)
    assert columns == run(engine, num_samples=3, max_tokens=10, temperature=0, seed=2)
    assert all(len(set(column)) == 1 for column, _ in columns)  # every row takes the same argmax
    # the naive full-recompute generator agrees
    reference = list(engine.model.generate(PROMPT, 10, temperature=0))
    assert [column[0] for column, _ in columns] == reference[:len(columns)]


def test_penalties_lower_what_a_row_has_already_written(engine):
    """OpenAI's frequency and presence penalties, checked against the logits they are defined on: with a penalty far
    above the tiny model's logit spread, greedy decoding never writes a token twice; without one it repeats."""
    def written(**penalty):
        return [column[0] for column, _ in run(engine, max_tokens=40, temperature=0, **penalty)]
    plain = written()
    assert len(plain) == 40 and len(set(plain)) < 40  # a random model's greedy loop
    for penalty in ({"presence_penalty": 2.0}, {"frequency_penalty": 2.0}):
        tokens = written(**penalty)
        assert len(set(tokens)) == len(tokens), penalty  # ended early on an end token is fine too
    # a penalty only bites once the token was written: the first step is unchanged
    assert written(frequency_penalty=2.0)[0] == plain[0]
    # a negative penalty favours repeats: the first token again, at once
    assert written(presence_penalty=-2.0)[:2] == [plain[0], plain[0]]


def test_max_tokens_and_masks(engine):
    columns = run(engine, num_samples=2, max_tokens=5, temperature=1.0)
    assert 1 <= len(columns) <= 5
    assert all(masks == [1, 1] for _, masks in columns)


def test_rows_sample_their_first_token_independently(engine):
    columns = run(engine, num_samples=16, max_tokens=1, temperature=1.0, top_k=0)
    assert len(set(columns[0][0])) > 1


def test_top_k_one_is_greedy():
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    rng = torch.Generator().manual_seed(0)
    assert torch.equal(sample_next_token(logits, rng, 1.0, top_k=1), logits.argmax(-1))
    assert torch.equal(sample_next_token(logits, rng, 1.0, top_p=1e-6), logits.argmax(-1))
    assert sample_next_token(logits, rng, 1.0, top_k=0).shape == (4,)


def test_the_context_bounds_prompt_and_reply(engine):
    assert engine.context == engine.model.cos.size(1) == 640
    assert len(list(engine.generate([256] + [72] * (engine.context - 2), max_tokens=5, top_k=1))) == 1
    # no room at all: nothing, not an error (the callers that tell someone check the length first)
    assert list(engine.generate([256] + [72] * (engine.context - 1), max_tokens=5)) == []


def test_a_generation_stopped_part_way_leaves_the_engine_as_it_was(engine):
    expected = run(engine, num_samples=2, max_tokens=12, seed=5)
    steps = engine.generate(PROMPT, num_samples=2, max_tokens=12, seed=5)
    next(steps), next(steps)
    with pytest.raises(KeyboardInterrupt):
        steps.throw(KeyboardInterrupt)  # Ctrl-C while the model runs
    assert run(engine, num_samples=2, max_tokens=12, seed=5) == expected


def test_generate_batch_drops_terminal_tokens(engine):
    results, masks = engine.generate_batch(PROMPT, num_samples=2, max_tokens=8, seed=3)
    for row, mask in zip(results, masks):
        assert row[:len(PROMPT)] == PROMPT and len(row) == len(mask) <= len(PROMPT) + 8
        assert not set(row[len(PROMPT):]) & engine.ends
        assert mask[:len(PROMPT)] == [0] * len(PROMPT)


# --------------------------------------------------------------------------------------------------------------------
# Tool calls, with a fake model that writes a script

class ScriptedModel(torch.nn.Module):
    """Stands in for GPT: whatever it is fed, its next-token logits put all mass on the script's next token."""

    def __init__(self, script: list[int], vocab: int):
        super().__init__()
        self.script, self.vocab, self.calls = script, vocab, 0
        self.config = GPTConfig(sequence_len=64, vocab_size=vocab, n_layer=1, n_head=1, n_kv_head=1, n_embd=2)
        self.lm_head = torch.nn.Linear(1, 1)
        self.cos = torch.zeros(1, 640, 1, 1)
        self.fed = []

    def activation_dtype(self, device):
        return torch.float32

    def forward(self, idx, kv_cache=None, at=None):
        if self.calls:
            self.fed.append(idx[:, -1].tolist())
        kv_cache.pos += idx.size(1)
        target = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        logits = torch.full((idx.size(0), idx.size(1), self.vocab), -100.0)
        logits[..., target] = 100.0
        return logits


def test_tool_call_output_is_forced_with_mask_zero():
    tok = byte_tokenizer()
    s = tok.encode_special
    call = [s("<|python_start|>"), *tok.encode("12*(3+4)"), s("<|python_end|>")]
    injected = [s("<|output_start|>"), *tok.encode("84"), s("<|output_end|>")]
    # while the output is forced, the model's own samples ("x") are discarded
    script = call + tok.encode("x" * len(injected)) + tok.encode("ok") + [s("<|assistant_end|>")] * 3
    model = ScriptedModel(script, tok.vocab_size)
    (row,), (mask,) = Engine(model, tok).generate_batch([tok.bos_id], max_tokens=40, temperature=1.0)
    assert row[1:] == call + injected + tok.encode("ok")
    assert mask[1:1 + len(call)] == [1] * len(call)
    assert mask[1 + len(call):1 + len(call) + len(injected)] == [0] * len(injected)
    # the forced tokens, not the model's samples, were fed back to it
    assert [fed[0] for fed in model.fed[len(call):len(call) + len(injected)]] == injected


def test_bad_tool_call_injects_nothing():
    tok = byte_tokenizer()
    s = tok.encode_special
    call = [s("<|python_start|>"), *tok.encode("__import__('os')"), s("<|python_end|>")]
    model = ScriptedModel(call + [s("<|assistant_end|>")], tok.vocab_size)
    (row,), _ = Engine(model, tok).generate_batch([tok.bos_id], max_tokens=40)
    assert row[1:] == call


@pytest.mark.parametrize("expression,value", [
    ("1 + 2", 3), ("12*(3+4)", 84), ("7/2", 3.5), ("-3 - -4", 1), ("1,234 * 2", 2468), ("2.5*4", 10.0),
    ("'strawberry'.count('r')", 3), ("'a,b,c'.count(',')", 2), ("  ( 1 + 1 )  ", 2),
])
def test_calculator_evaluates_arithmetic_and_count(expression, value):
    assert calculator(expression) == value


def test_tool_output_is_written_as_in_the_training_data():
    from primechat.tasks.gsm8k import solution_parts
    parts = solution_parts("Half of 48 is <<48/2=24>>24.\n#### 24")
    call = next(p["text"] for p in parts if p["type"] == "python")
    written = next(p["text"] for p in parts if p["type"] == "python_output")
    assert tool_output(calculator(call)) == written == "24"
    assert tool_output(calculator("5/2")) == "2.5" and tool_output(3) == "3"


@pytest.mark.parametrize("expression", [
    "2**10", "__import__('os').system('echo hi')", "x + 1", "'abc'.upper()", "'abc'.count", "(1).real",
    "open('f')", "[1, 2]", "1 if 1 else 2", "1 / 0", "'a'.count('a', 0)", "'a'.count(x)", "True + 1", "9 % 4",
    "lambda: 1", "", "1 +", "'abc'.__class__", "1" * 2000, "1 +\x00 2", "-" * 999 + "1",
])
def test_calculator_rejects_everything_else(expression):
    assert calculator(expression) is None


# --------------------------------------------------------------------------------------------------------------------
# Streaming

def test_stream_decoder_never_splits_a_character():
    tok = byte_tokenizer()
    text = "héllo 你好 🚀!"
    decoder = StreamDecoder(tok)
    pieces = [decoder.push(b) for b in text.encode("utf-8")]  # one byte per token: characters span tokens
    assert "".join(pieces) + decoder.flush() == text
    assert all("\ufffd" not in piece for piece in pieces)
    assert pieces[text.encode().index("🚀".encode())] == ""  # the first byte of the rocket is held back


def test_stream_decoder_shows_specials_as_asked_and_flushes_broken_tails():
    tok = byte_tokenizer()
    start = tok.encode_special(SPECIAL_TOKENS[5])
    decoder = StreamDecoder(tok, {start: "«"})
    assert decoder.push(0xE4) == ""
    assert decoder.push(start) == "\ufffd«"  # a character cut off by a special token is shown as broken
    assert decoder.push(tok.bos_id) == ""
    assert decoder.push(ord("a")) + decoder.flush() == "a"


def test_tool_calls_show_as_expression_equals_result():
    tok = byte_tokenizer()
    special = tok.encode_special
    tokens = [special("<|python_start|>"), *b"2+3", special("<|python_end|>"), special("<|output_start|>"), *b"5",
              special("<|output_end|>"), special("<|assistant_end|>")]
    decoder = StreamDecoder(tok, tool_call_specials(tok))
    assert "".join(decoder.push(t) for t in tokens) + decoder.flush() == "«2+3 = 5»"


# --------------------------------------------------------------------------------------------------------------------
# The benchmark

def test_bench_infer_on_a_random_model_ends_with_json(cli):
    result = cli("bench", "infer", "--depth", "1", "--sequence-len", "64", "--prompt-tokens", "8",
                 "--decode-tokens", "3", "--batch-sizes", "1,2", "--device-type", "cpu")
    assert result.code == 0, result.err
    report = json.loads(result.out.strip().splitlines()[-1])
    assert [row["batch"] for row in report["sweep"]] == [1, 2]
    assert all(row["steps"] == 3 and row["tok_per_s"] > 0 for row in report["sweep"])
    assert report["sweep"][1]["bytes_per_step"] > report["sweep"][0]["bytes_per_step"]  # one more row's KV cache
    assert report["peak_bandwidth"] is None  # no known peak on a CPU


def test_bench_infer_rejects_bad_batch_sizes(cli):
    result = cli("bench", "infer", "--depth", "1", "--batch-sizes", "1,x")
    assert result.code == 2 and "--batch-sizes" in result.err
