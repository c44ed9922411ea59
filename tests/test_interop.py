"""Models in and out: nanochat checkpoints imported, transformers export, push and pull through a fake Hub.

The nanochat checkpoints are written here the way nanochat writes them (its meta JSON holds only the sizes, weights
may carry torch.compile's `_orig_mod.` prefix, 2026 embeddings are bf16), and the Oct 2025 model's logits are checked
against an independent float64 forward written from nanochat's spec, not against primechat's model code.
"""

import argparse
import inspect
import json
import math
import random

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from primechat.cli import run_guarded
from primechat.interop import hf, nanochat, pull, push
from primechat.model import GPT, GPTConfig
from primechat.tokenizer import ROUND_TRIP_SAMPLE, train_tokenizer
from primechat.train.checkpoint import (checkpoint_dir, load_meta, load_model, lock_for_writing, save_checkpoint,
                                        saved_steps)

torch.set_num_threads(1)  # tiny models: threads cost more than they give on shared CI cores

SIZES = dict(sequence_len=256, n_layer=3, n_head=4, n_kv_head=2, n_embd=32)
OCT = dict(window_pattern="F", rope_base=10_000.0, qk_scale=1.0, value_embeds=False, smear=False, backout=False,
           skip_lambdas=False, softcap=15.0, vocab_pad_to=1)  # nanochat Oct 2025, from the catalog (A4)
NEW = dict(window_pattern="SL", rope_base=100_000.0, qk_scale=1.2, value_embeds=True, smear=True, backout=True,
           skip_lambdas=True, softcap=15.0, vocab_pad_to=64)  # nanochat 2026 (B4), with a sliding window


@pytest.fixture(scope="module")
def tokenizer():
    text = inspect.getdoc(json) + inspect.getdoc(random) + inspect.getdoc(argparse)
    docs = [text[i:i + 400] for i in range(0, len(text), 200)] + [ROUND_TRIP_SAMPLE] * 3
    return train_tokenizer(iter(docs), 700)  # 700: not a multiple of 64, so the 2026 layout pads the vocab


def random_state(config: GPTConfig, seed: int) -> dict:
    """Weights with every path active: matrices ~ 1/sqrt(fan_in), embeddings ~ 1, lambdas near their roles."""
    g = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in GPT(config).state_dict().items()}
    state = {}
    for name, shape in shapes.items():
        if len(shape) == 2 and "wte" not in name and "value_embeds" not in name:
            state[name] = torch.randn(shape, generator=g) / math.sqrt(shape[1])
        elif "resid_lambdas" in name:
            state[name] = 1 + 0.1 * torch.randn(shape, generator=g)
        else:
            state[name] = (torch.randn(shape, generator=g) if len(shape) == 2 else 0.3 * torch.randn(shape, generator=g))
    return state


def write_nanochat(root, stage_dir: str, config: GPTConfig, tokenizer, step=1234, compiled=False, bf16_embeds=False,
                   with_window_pattern=False, seed=0) -> dict:
    """A nanochat base dir: <root>/<stage_dir>/d2/{model,meta}_<step>.* and <root>/tokenizer/. Returns the weights
    as fp32 (the bf16 ones rounded as saved)."""
    state = random_state(config, seed)
    if bf16_embeds:
        state = {k: v.to(torch.bfloat16) if "wte" in k or "value_embeds" in k else v for k, v in state.items()}
    saved = {("_orig_mod." if compiled else "") + k: v for k, v in state.items()}
    folder = root / stage_dir / "d2"
    folder.mkdir(parents=True)
    torch.save(saved, folder / f"model_{step:06d}.pt")
    model_config = {k: getattr(config, k) for k in ("sequence_len", "vocab_size", "n_layer", "n_head", "n_kv_head",
                                                    "n_embd")}
    if with_window_pattern:
        model_config["window_pattern"] = config.window_pattern
    meta = {"step": step, "val_bpb": 1.25, "model_config": model_config, "user_config": {"depth": 2}}
    (folder / f"meta_{step:06d}.json").write_text(json.dumps(meta, indent=2))
    tokenizer.save(root / "tokenizer")
    return {k: v.float() for k, v in state.items()}


def oct2025_logits(state: dict, c: GPTConfig, idx: torch.Tensor) -> torch.Tensor:
    """nanochat's Oct 2025 forward in float64, from the catalog: norm(wte); pre-norm blocks of attention (RoPE base
    10k, half-split rotation, then QK RMSNorm, causal, kv heads shared) and relu² MLP; norm; untied head; 15·tanh(z/15)."""
    W = {k: v.double() for k, v in state.items()}
    B, T = idx.shape
    H, Hkv, hd = c.n_head, c.n_kv_head, c.n_embd // c.n_head
    eps = torch.finfo(torch.float32).eps

    def rms(x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)

    freqs = torch.outer(torch.arange(T, dtype=torch.float64),
                        1.0 / 10_000 ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    cos, sin = freqs.cos()[None, :, None, :], freqs.sin()[None, :, None, :]

    def rope(x):
        x1, x2 = x[..., :hd // 2], x[..., hd // 2:]
        return torch.cat([x1 * cos + x2 * sin, -x1 * sin + x2 * cos], dim=-1)

    causal = torch.ones(T, T, dtype=torch.bool).tril()
    x = rms(W["transformer.wte.weight"][idx])
    for i in range(c.n_layer):
        p = f"transformer.h.{i}."
        h = rms(x)
        q = (h @ W[p + "attn.c_q.weight"].T).view(B, T, H, hd)
        k = (h @ W[p + "attn.c_k.weight"].T).view(B, T, Hkv, hd).repeat_interleave(H // Hkv, dim=2)
        v = (h @ W[p + "attn.c_v.weight"].T).view(B, T, Hkv, hd).repeat_interleave(H // Hkv, dim=2)
        q, k = rms(rope(q)), rms(rope(k))
        scores = torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(hd)
        att = scores.masked_fill(~causal, float("-inf")).softmax(-1)
        y = torch.einsum("bhij,bjhd->bihd", att, v).reshape(B, T, -1)
        x = x + y @ W[p + "attn.c_proj.weight"].T
        x = x + F.relu(rms(x) @ W[p + "mlp.c_fc.weight"].T).square() @ W[p + "mlp.c_proj.weight"].T
    logits = rms(x) @ W["lm_head.weight"].T
    return 15 * torch.tanh(logits / 15)


def run(module, *argv):
    """Parse argv with the module's own add_arguments and run its main as the CLI would: the exit code."""
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return run_guarded(module.main, parser.parse_args([str(a) for a in argv]))


def ids(n, vocab, seed=3):
    return torch.randint(0, vocab, (2, n), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------------------------------
# import nanochat

def test_import_oct2025_checkpoint_gives_nanochats_logits(home, tmp_path, tokenizer, capsys):
    config = GPTConfig(vocab_size=tokenizer.vocab_size, **SIZES, **OCT)
    state = write_nanochat(tmp_path / "nanochat", "chatsft_checkpoints", config, tokenizer, compiled=True)
    assert run(nanochat, tmp_path / "nanochat" / "chatsft_checkpoints" / "d2") == 0
    assert "sft d2" in capsys.readouterr().out

    folder = checkpoint_dir("sft", "d2")  # stage from the folder name, tag from the folder, tokenizer from ../../
    assert (folder / "tokenizer.pkl").is_file() and (folder / "token_bytes.pt").is_file()
    meta = load_meta(folder, 1234)
    assert meta["imported_from"]["layout"] == "oct2025" and meta["val_bpb"] == 1.25
    model, tok, _ = load_model("sft", "d2")
    assert model.config == config
    assert tok.encode(ROUND_TRIP_SAMPLE) == tokenizer.encode(ROUND_TRIP_SAMPLE)
    x = ids(200, config.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(model(x).double(), oct2025_logits(state, config, x), atol=2e-4, rtol=1e-4)
        # past the context it was trained on (evaluation, serving), nanochat's Oct model still attends to everything
        x = ids(config.sequence_len + 150, config.vocab_size)
        torch.testing.assert_close(model(x).double(), oct2025_logits(state, config, x), atol=2e-4, rtol=1e-4)


def test_import_2026_checkpoint_matches_primechats_model(home, tmp_path, tokenizer):
    config = GPTConfig(vocab_size=tokenizer.vocab_size, **SIZES, **NEW)
    assert config.window_sizes() == [128, 256, 256]  # a short window that the 200-token input below exceeds
    state = write_nanochat(tmp_path / "nanochat", "base_checkpoints", config, tokenizer, bf16_embeds=True,
                           with_window_pattern=True)
    assert run(nanochat, tmp_path / "nanochat" / "base_checkpoints" / "d2", "--tag", "new") == 0

    model, _, meta = load_model("base", "new")
    assert model.config == config and meta["imported_from"]["layout"] == "2026"
    reference = GPT(config)
    reference.init_weights()
    reference.load_state_dict(state)
    x = ids(200, config.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), atol=1e-5, rtol=1e-5)


def test_import_keeps_nanochats_training_settings_for_mid_and_sft(home, tmp_path, tokenizer):
    """`train mid` from an imported base inherits its batch sizes and learning rates, as from a model trained here."""
    from primechat.train import chat

    config = GPTConfig(vocab_size=tokenizer.vocab_size, **SIZES, **OCT)
    write_nanochat(tmp_path / "nanochat", "base_checkpoints", config, tokenizer)
    path = tmp_path / "nanochat" / "base_checkpoints" / "d2" / "meta_001234.json"
    meta = json.loads(path.read_text())  # an Oct 2025 base_train meta: all its flags, and the sizes it used
    meta["user_config"] = {"depth": 2, "device_batch_size": 4, "max_seq_len": 256, "total_batch_size": 8192,
                           "embedding_lr": 0.2, "unembedding_lr": 0.004, "matrix_lr": 0.02, "run": "dummy",
                           "model_tag": None}
    meta.update(device_batch_size=4, max_seq_len=256)
    path.write_text(json.dumps(meta))
    assert run(nanochat, path.parent) == 0

    imported = load_meta(checkpoint_dir("base", "d2"), 1234)
    assert imported["user_config"] == {k: v for k, v in meta["user_config"].items() if v is not None}
    assert (imported["device_batch_size"], imported["max_seq_len"], imported["total_batch_size"]) == (4, 256, 8192)
    parser = argparse.ArgumentParser()
    chat.add_arguments(parser, "mid")
    settings = chat.inherit(parser.parse_args([]), imported, world=1)
    assert {k: settings[k] for k in ("device_batch_size", "max_seq_len", "total_batch_size", "embedding_lr",
                                     "unembedding_lr", "matrix_lr")} == \
           dict(device_batch_size=4, max_seq_len=256, total_batch_size=8192, embedding_lr=0.2, unembedding_lr=0.004,
                matrix_lr=0.02)


def test_import_several_steps_of_one_run_into_one_tag(home, tmp_path, tokenizer, capsys):
    """nanochat keeps a run's steps in one folder (`chat -i sft -s 650`): --step adds a step beside the imported
    ones, --force replaces only that step, --all-steps brings them all; another run is not mixed in."""
    config = GPTConfig(vocab_size=tokenizer.vocab_size, **SIZES, **OCT)
    write_nanochat(tmp_path / "nc", "chatsft_checkpoints", config, tokenizer, step=1000)
    source = tmp_path / "nc" / "chatsft_checkpoints" / "d2"
    earlier = random_state(config, seed=5)
    torch.save(earlier, source / "model_000650.pt")
    meta = json.loads((source / "meta_001000.json").read_text())
    (source / "meta_000650.json").write_text(json.dumps({**meta, "step": 650}))

    folder = checkpoint_dir("sft", "d2")
    assert run(nanochat, source) == 0 and run(nanochat, source, "--step", 650) == 0
    assert saved_steps(folder) == [650, 1000] and "-s STEP" in capsys.readouterr().out
    model, _, _ = load_model("sft", "d2", step=650, train=True)
    assert torch.equal(model.state_dict()["lm_head.weight"], earlier["lm_head.weight"])

    assert run(nanochat, source, "--step", 650) == 2
    assert "already holds step 650 of this run: pass --force" in capsys.readouterr().err
    lock = lock_for_writing(folder, 0, "cpu")  # a training run (or another import) writing the tag
    assert run(nanochat, source, "--step", 650, "--force") == 2
    assert "another run is writing" in capsys.readouterr().err
    lock.release()
    assert run(nanochat, source, "--step", 650, "--force") == 0 and saved_steps(folder) == [650, 1000]

    write_nanochat(tmp_path / "other", "chatsft_checkpoints", config, tokenizer, step=650)  # another run, same model
    capsys.readouterr()
    assert run(nanochat, tmp_path / "other" / "chatsft_checkpoints" / "d2") == 2
    assert "already holds checkpoints (steps 650, 1000)" in capsys.readouterr().err
    assert run(nanochat, source, "--all-steps", "--tag", "all") == 0
    assert saved_steps(checkpoint_dir("sft", "all")) == [650, 1000]
    # an --all-steps killed before its last step: the rerun imports what is missing and keeps the rest
    (checkpoint_dir("sft", "all") / "meta_001000.json").unlink()
    kept = (checkpoint_dir("sft", "all") / "model_000650.pt").stat().st_mtime_ns
    capsys.readouterr()
    assert run(nanochat, source, "--all-steps", "--tag", "all") == 0
    assert "already imported, kept: step 650" in capsys.readouterr().out
    assert saved_steps(checkpoint_dir("sft", "all")) == [650, 1000]
    assert (checkpoint_dir("sft", "all") / "model_000650.pt").stat().st_mtime_ns == kept
    assert run(nanochat, source, "--all-steps", "--tag", "all") == 0  # nothing left to do
    assert not list(folder.glob(".*.tmp*")) and not list(checkpoint_dir("sft", "all").glob(".*.tmp*"))


@pytest.mark.parametrize("meta,stage", [  # the fields each of nanochat's Oct 2025 stages writes (A1)
    ({"val_bpb": 1.2, "user_config": {"depth": 2}, "device_batch_size": 4, "max_seq_len": 256}, "base"),
    ({"val_bpb": 1.2, "user_config": {"device_batch_size": 4}}, "mid"),
    ({"val_loss": 1.1, "mmlu_acc": 0.3, "arc_easy_acc": 0.4}, "sft"),
    ({}, "rl"),
    ({"val_loss": 1.1, "user_config": {"depth": 2}, "device_batch_size": 4}, "sft"),  # sft's accuracies win
])
def test_import_from_another_folder_tells_the_stage_from_the_meta_and_says_so(home, tmp_path, tokenizer, capsys,
                                                                              meta, stage):
    config = GPTConfig(vocab_size=tokenizer.vocab_size, **SIZES, **OCT)
    write_nanochat(tmp_path / "nanochat", "downloads", config, tokenizer)
    path = tmp_path / "nanochat" / "downloads" / "d2" / "meta_001234.json"
    path.write_text(json.dumps({"step": 1234, "model_config": json.loads(path.read_text())["model_config"], **meta}))
    assert run(nanochat, path.parent) == 0
    out = capsys.readouterr().out
    assert f"as {stage} d2" in out and f"filed as {stage} from its meta" in out and "--stage changes it" in out
    assert checkpoint_dir(stage, "d2").is_dir()
    # --stage, or a folder of nanochat's layout, decides without a note
    assert run(nanochat, path.parent, "--stage", "mid", "--tag", "m") == 0
    assert "filed as" not in capsys.readouterr().out and checkpoint_dir("mid", "m").is_dir()


@pytest.mark.parametrize("problem,message", [
    ("no-meta", "meta_001234.json is missing"),
    ("unknown-key", "does not know: transformer.h.0.attn.bias"),
    ("wrong-tokenizer", "has 300 tokens but the model was trained with 700"),
    ("no-tokenizer", "pass --tokenizer"),
    ("already-there", "--force"),
    ("not-a-folder", "not a folder"),
    ("base-dir", "no model_<step>.pt in {root}, but in mid_checkpoints/d2 below it: give one of them"),
    ("stage-dir", "but in d2 below it: give one of them"),
    ("primechat", "this is a primechat checkpoint, which chat and serve use as it is"),
])
def test_import_problems_are_one_line_errors(home, tmp_path, tokenizer, capsys, problem, message):
    config = GPTConfig(vocab_size=tokenizer.vocab_size, **SIZES, **OCT)
    root = tmp_path / "nanochat"
    write_nanochat(root, "mid_checkpoints", config, tokenizer)
    folder = root / "mid_checkpoints" / "d2"
    argv = [folder]
    if problem == "no-meta":
        (folder / "meta_001234.json").unlink()
    elif problem == "unknown-key":
        state = torch.load(folder / "model_001234.pt")
        state["transformer.h.0.attn.bias"] = torch.zeros(3)
        torch.save(state, folder / "model_001234.pt")
    elif problem == "wrong-tokenizer":
        train_tokenizer(iter([inspect.getdoc(json)]), 300).save(tmp_path / "small")
        argv += ["--tokenizer", tmp_path / "small"]
    elif problem == "no-tokenizer":
        for f in (root / "tokenizer").iterdir():
            f.unlink()
    elif problem == "already-there":
        assert run(nanochat, folder) == 0
    elif problem == "not-a-folder":
        argv = [tmp_path / "nope"]
    elif problem == "primechat":  # a checkpoint folder of another primechat home, laid out like nanochat's
        meta = json.loads((folder / "meta_001234.json").read_text())
        (folder / "meta_001234.json").write_text(json.dumps({**meta, "model_config": config.to_dict()}))
    elif problem in ("base-dir", "stage-dir"):  # nanochat's base dir, or a stage's folder, instead of a checkpoint's
        argv = [root if problem == "base-dir" else folder.parent]
        message = message.format(root=root.resolve())
    capsys.readouterr()
    assert run(nanochat, *argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    if problem == "already-there":
        assert run(nanochat, folder, "--force") == 0
    else:
        assert not checkpoint_dir("mid", "d2").exists()


# ---------------------------------------------------------------------------------------------------------------------
# export hf

CONVERSATIONS = [
    [{"role": "user", "content": "Hello there!"}, {"role": "assistant", "content": "Hi! How can I help you today?"}],
    [{"role": "system", "content": "You are terse."},
     {"role": "user", "content": "What is 12 + 7?"},
     {"role": "assistant", "content": [{"type": "text", "text": "Let me compute. "},
                                       {"type": "python", "text": "12 + 7"},
                                       {"type": "python_output", "text": "19"},
                                       {"type": "text", "text": " It is 19."}]},
     {"role": "user", "content": "thanks\n\n  and 2 + 2?"}, {"role": "assistant", "content": "4."}],
]


def test_export_loads_in_transformers_with_the_same_logits_and_chat_ids(home, tmp_path, tokenizer, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = GPTConfig(vocab_size=tokenizer.vocab_size, **SIZES, **{**OCT, "vocab_pad_to": 64, "rope_base": 50_000.0})
    save_checkpoint(checkpoint_dir("sft", "d2"), 7, random_state(config, seed=1),
                    {"step": 7, "model_config": config.to_dict()})
    tokenizer.save(checkpoint_dir("sft", "d2"))
    out = tmp_path / "hf"
    assert run(hf, out, "--dtype", "float32") == 0
    assert (out / "model.safetensors").is_file()

    ours, tok, _ = load_model("sft", "d2")
    theirs = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert type(theirs).__name__ == "NanoChatForCausalLM"
    x = ids(100, config.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(theirs(x).logits, ours(x), atol=1e-4, rtol=1e-4)

    hf_tok = AutoTokenizer.from_pretrained(out)
    for text in (ROUND_TRIP_SAMPLE.replace("<|bos|>", ""), inspect.getdoc(math), "  x  = 1234567\n\n\tend "):
        assert hf_tok.encode(text, add_special_tokens=False) == tok.encode(text)
        assert hf_tok.decode(tok.encode(text)) == text
    for conversation in CONVERSATIONS:
        rendered = hf_tok.apply_chat_template(conversation, tokenize=True, return_dict=True)["input_ids"]
        assert rendered == tok.render_conversation(conversation)[0]
        prompt = hf_tok.apply_chat_template(conversation[:-1], add_generation_prompt=True, tokenize=True,
                                            return_dict=True)["input_ids"]
        assert prompt == tok.render_for_completion(conversation)
    with pytest.raises(Exception, match="roles alternate"):
        hf_tok.apply_chat_template([{"role": "assistant", "content": "hi"}], tokenize=False)


def test_2026_model_exports_as_remote_code_that_generates_like_primechat(home, tmp_path, tokenizer, capsys):
    """primechat's own models (sliding windows, value embeddings, smear, …) load with trust_remote_code=True and give
    primechat's logits, its loss, and its greedy continuations: past the sliding window, and in a left-padded batch."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = GPTConfig(vocab_size=tokenizer.vocab_size, **SIZES, **NEW)
    save_checkpoint(checkpoint_dir("sft", "d2"), 7, random_state(config, seed=1),
                    {"step": 7, "model_config": config.to_dict()})
    tokenizer.save(checkpoint_dir("sft", "d2"))
    out = tmp_path / "hf"
    assert run(hf, out, "--dtype", "float32") == 0
    assert "trust_remote_code=True" in capsys.readouterr().out
    assert (out / "modeling_primechat.py").is_file()

    ours, _, _ = load_model("sft", "d2")
    theirs = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True, dtype=torch.float32)
    assert type(theirs).__name__ == "PrimechatForCausalLM"
    x = ids(200, config.vocab_size)  # longer than the short window (128 tokens)
    with torch.no_grad():
        torch.testing.assert_close(theirs(x).logits, ours(x), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(theirs(x, labels=x).loss, ours(x[:, :-1], targets=x[:, 1:]), atol=1e-5, rtol=1e-5)

    def greedy(prompt, n):
        return list(ours.generate(prompt.tolist(), n, temperature=0))

    with pytest.raises(ValueError, match="DynamicCache"):  # a static cache would need masks it does not build
        theirs.generate(x[:1, :10], max_new_tokens=2, do_sample=False, cache_implementation="static")
    prompt = x[0, :120]  # decoding crosses the window: the cache is masked, not cropped
    assert theirs.generate(prompt[None], max_new_tokens=20, do_sample=False)[0, 120:].tolist() == greedy(prompt, 20)
    hf_tok = AutoTokenizer.from_pretrained(out, trust_remote_code=True)
    for conversation in CONVERSATIONS:
        rendered = hf_tok.apply_chat_template(conversation, tokenize=True, return_dict=True)["input_ids"]
        assert rendered == tokenizer.render_conversation(conversation)[0]

    short, long = x[1, :9], x[1, 50:190]  # the long one decodes past the 128-token window, beside 131 pads
    batch = torch.zeros(2, 140, dtype=torch.long)
    mask = torch.zeros(2, 140, dtype=torch.long)
    batch[0, 131:], mask[0, 131:], batch[1], mask[1] = short, 1, long, 1
    both = theirs.generate(input_ids=batch, attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0)
    assert both[0, 140:].tolist() == greedy(short, 12) and both[1, 140:].tolist() == greedy(long, 12)


def test_nanochat_export_carries_no_remote_code(home, tmp_path, tokenizer):
    """Exporting an Oct-2025 model over an earlier 2026 export leaves no modeling file that would shadow NanoChat."""
    new = GPTConfig(vocab_size=tokenizer.vocab_size, **SIZES, **NEW)
    old = GPTConfig(vocab_size=tokenizer.vocab_size, **SIZES, **OCT)
    for tag, config in (("new", new), ("old", old)):
        save_checkpoint(checkpoint_dir("sft", tag), 7, random_state(config, seed=1),
                        {"step": 7, "model_config": config.to_dict()})
        tokenizer.save(checkpoint_dir("sft", tag))
    out = tmp_path / "hf"
    assert run(hf, out, "-g", "new") == 0 and (out / "modeling_primechat.py").is_file()
    assert run(hf, out, "-g", "old") == 0
    assert not (out / "modeling_primechat.py").exists()
    assert json.loads((out / "config.json").read_text())["model_type"] == "nanochat"


def test_an_interrupted_export_leaves_the_earlier_export_whole(home, tmp_path, tokenizer, monkeypatch):
    """Ctrl-C after the weights are written: OUT still holds the earlier model, every file of it, and no leftovers."""
    for tag, depth in (("small", 1), ("big", 2)):
        config = GPTConfig(vocab_size=tokenizer.vocab_size, **{**SIZES, "n_layer": depth}, **OCT)
        save_checkpoint(checkpoint_dir("sft", tag), 7, random_state(config, seed=1),
                        {"step": 7, "model_config": config.to_dict()})
        tokenizer.save(checkpoint_dir("sft", tag))
    out = tmp_path / "exports" / "hf"
    assert run(hf, out, "-g", "small") == 0
    before = {f.name: f.read_bytes() for f in out.iterdir()}

    def interrupted(*args):
        raise KeyboardInterrupt
    with monkeypatch.context() as m:
        m.setattr(hf, "_write_json", interrupted)
        with pytest.raises(KeyboardInterrupt):
            hf.export_hf(out, tag="big")
        assert {f.name: f.read_bytes() for f in out.iterdir()} == before
        assert [p.name for p in out.parent.iterdir()] == ["hf"]
        with pytest.raises(KeyboardInterrupt):
            hf.export_hf(out.parent / "fresh", tag="big")
        assert not (out.parent / "fresh").exists()
    assert run(hf, out, "-g", "big") == 0  # the complete new export replaces it
    assert json.loads((out / "primechat.json").read_text())["tag"] == "big"
    assert [p.name for p in out.parent.iterdir()] == ["hf"]
    (out / "notes.txt").write_text("mine")  # a folder with other things in it: the export joins them
    assert run(hf, out, "-g", "small") == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / "primechat.json").read_text())["tag"] == "small"
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("where,message", [
    ("file", "is a file: give a folder"),
    ("under-file", "give a folder you can write to"),  # any OSError of the write, as a read-only parent's
])
def test_export_to_a_bad_folder_is_a_one_line_error(home, tmp_path, tokenizer, capsys, where, message):
    config = GPTConfig(vocab_size=tokenizer.vocab_size, **SIZES, **OCT)
    save_checkpoint(checkpoint_dir("sft", "d2"), 7, random_state(config, seed=1),
                    {"step": 7, "model_config": config.to_dict()})
    tokenizer.save(checkpoint_dir("sft", "d2"))
    (tmp_path / "a-file").write_text("x")
    out = {"file": tmp_path / "a-file", "under-file": tmp_path / "a-file" / "hf"}[where]
    capsys.readouterr()
    assert run(hf, out) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and err.startswith("primechat: error:")


def test_export_of_an_imported_model_names_no_local_folder(home, tmp_path, tokenizer):
    """primechat.json says where an imported model came from by folder name, not by this machine's path."""
    config = GPTConfig(vocab_size=tokenizer.vocab_size, **SIZES, **OCT)
    write_nanochat(tmp_path / "someones-home", "mid_checkpoints", config, tokenizer)
    assert run(nanochat, tmp_path / "someones-home" / "mid_checkpoints" / "d2") == 0
    hf.export_hf(tmp_path / "hf", "mid", "d2")
    text = (tmp_path / "hf" / "primechat.json").read_text()
    assert json.loads(text)["imported_from"]["path"] == "d2" and "someones-home" not in text


def test_export_counts_the_parameters_it_exports(home, tmp_path, tokenizer):
    """A 700-token vocab is padded to 704 rows inside primechat; the export drops those rows, and so does its count
    (the model card's parameters)."""

    config = GPTConfig(vocab_size=tokenizer.vocab_size, **SIZES, **NEW)
    save_checkpoint(checkpoint_dir("sft", "d2"), 7, random_state(config, seed=1),
                    {"step": 7, "model_config": config.to_dict()})
    tokenizer.save(checkpoint_dir("sft", "d2"))
    done = hf.export_hf(tmp_path / "hf")
    exported = sum(t.numel() for t in load_file(tmp_path / "hf" / "model.safetensors").values())
    with torch.device("meta"):
        padded = GPT(config).num_params()["total"]
    assert done["params"] == exported < padded


# ---------------------------------------------------------------------------------------------------------------------
# push and pull

def test_push_then_pull_round_trips_through_the_hub(home, fake_hub, tokenizer, capsys):
    from primechat import report

    config = GPTConfig(vocab_size=tokenizer.vocab_size, **SIZES, **OCT)
    save_checkpoint(checkpoint_dir("sft", "d2"), 42, random_state(config, seed=2),
                    {"step": 42, "val_bpb": 0.987654, "model_config": config.to_dict(),
                     "source": {"stage": "base", "tag": "d2", "step": 300}})
    tokenizer.save(checkpoint_dir("sft", "d2"))
    # the home's card: sections about the pushed model and the base model it grew from, and about other models
    report.log_section("Base model training", {"model tag": "d2", "depth": 2, "parameters": 123_456})
    report.log_section("Base model evaluation", {"model": "base_d2_000300", "CORE metric": 0.0567})
    report.log_section("Chat SFT", {"model tag": "d2", "source": "base d2 step 300",
                                    "mixture": "/home/someone/configs/my-mix.yaml"})
    report.log_section("Chat evaluation sft", {"model": "sft_d2_000042", "ARC-Easy": 0.4321, "ChatCORE": 0.1234})
    report.log_section("Midtraining", {"model tag": "d2", "source": "base d2 step 300", "parameters": 999_999})
    report.log_section("Chat evaluation mid", {"model": "mid_d2_000010", "ARC-Easy": 0.1111})
    report.log_section("Chat RL", {"model tag": "d2", "source": "sft d2 step 42", "task": "gsm8k"})
    report.log_section("Chat evaluation rl", {"model": "rl_d2_000005", "ARC-Easy": 0.7777})

    assert run(push, "me/tiny-chat", "--dtype", "float32") == 0
    repo = fake_hub.root / "models" / "me" / "tiny-chat"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "chat_template.jinja", "primechat.json", "README.md"):
        assert (repo / name).is_file(), name
    card = (repo / "README.md").read_text()
    assert "library_name: transformers" in card and "primechat pull me/tiny-chat" in card
    assert "ARC-Easy: 0.4321" in card and "0.9877" in card
    assert "| Metric | BASE | MID | SFT | RL |" in card  # the report card's summary table
    assert any(line.startswith("| ARC-Easy ") and "0.4321" in line for line in card.splitlines())
    assert "- CORE metric: 0.0567" in card and "123,456" in card  # the base model it grew from
    assert "- mixture: my-mix.yaml" in card and "/home/someone" not in card
    for other in ("0.1111", "0.7777", "999,999", "Chat RL", "Midtraining"):  # other models' sections stay out
        assert other not in card, other
    pushed = sum(t.numel() for t in load_file(repo / "model.safetensors").values())
    assert f"| parameters | {pushed:,} |" in card  # what the repo holds: no padded vocab rows
    assert run(push, "me/tiny-chat", "--dtype", "float32") == 0  # pushing again updates the existing repo

    assert run(pull, "me/tiny-chat") == 0
    pulled, tok, meta = load_model("sft", "tiny-chat")  # stage from the repo, tag from its name
    original, _, _ = load_model("sft", "d2")
    assert meta["imported_from"]["repo_id"] == "me/tiny-chat" and meta["step"] == 42
    assert pulled.config == original.config
    assert tok.encode(ROUND_TRIP_SAMPLE) == tokenizer.encode(ROUND_TRIP_SAMPLE)
    x = ids(64, config.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(pulled(x), original(x), atol=0, rtol=0)

    # a transformers NanoChat repo without primechat.json: the config comes from config.json
    (repo / "primechat.json").unlink()
    assert run(pull, "me/tiny-chat", "--tag", "plain", "--stage", "base") == 0
    plain, _, _ = load_model("base", "plain")
    with torch.no_grad():
        torch.testing.assert_close(plain(x), original(x), atol=0, rtol=0)

    capsys.readouterr()
    assert run(pull, "me/tiny-chat") == 2  # already installed under that tag
    assert "--force" in capsys.readouterr().err
    assert run(pull, "me/missing") == 2
    assert "no model repo me/missing" in capsys.readouterr().err


def test_a_model_trained_here_pushes_with_its_code_and_pulls_back_exactly(home, fake_hub, tokenizer, capsys):
    """transformers loads it from the Hub with its remote code; `primechat pull` installs it without running that code."""
    from transformers import AutoModelForCausalLM

    config = GPTConfig(vocab_size=tokenizer.vocab_size, **SIZES, **NEW)
    save_checkpoint(checkpoint_dir("rl", "d2"), 5, random_state(config, seed=4),
                    {"step": 5, "model_config": config.to_dict(), "user_config": {"task": "arithmetic"}})
    tokenizer.save(checkpoint_dir("rl", "d2"))

    assert run(push, "me/my-rl", "-i", "rl", "--dtype", "float32") == 0
    repo = fake_hub.root / "models" / "me" / "my-rl"
    assert (repo / "modeling_primechat.py").is_file()
    card = (repo / "README.md").read_text()
    assert "| stage | chat model (SFT + RL on arithmetic) |" in card and "GSM8K" not in card  # what RL trained on
    assert 'AutoModelForCausalLM.from_pretrained("me/my-rl", trust_remote_code=True)' in card
    assert 'AutoTokenizer.from_pretrained("me/my-rl", trust_remote_code=True)' in card
    assert "sliding-window attention" in card
    from_hub = AutoModelForCausalLM.from_pretrained("me/my-rl", trust_remote_code=True, dtype=torch.float32)

    assert run(pull, "me/my-rl") == 0
    pulled, _, meta = load_model("rl", "my-rl")
    original, _, _ = load_model("rl", "d2")
    assert pulled.config == original.config and meta["step"] == 5
    x = ids(64, config.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(pulled(x), original(x), atol=0, rtol=0)
        torch.testing.assert_close(from_hub(x).logits, original(x), atol=1e-4, rtol=1e-4)

    (repo / "primechat.json").unlink()
    capsys.readouterr()
    assert run(pull, "me/my-rl", "--tag", "again") == 2
    assert "primechat.json" in capsys.readouterr().err
