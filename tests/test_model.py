"""The GPT: shapes and losses, parameter and FLOP accounting, causality, sliding windows, config switches.

Expectations are derived from the architecture's formulas or from independent computations in this file, never
copied from the code under test.
"""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

import primechat.attention as attention_module
from primechat.attention import attention, load_fa3, use_backend
from primechat.common import UserError
from primechat.model import GPT, GPTConfig, config_for_depth

VOCAB = 300  # not a multiple of 64, so the padded vocabulary (320) differs from the real one


def tiny_config(**overrides) -> GPTConfig:
    fields = dict(sequence_len=64, vocab_size=VOCAB, n_layer=2, n_head=4, n_kv_head=2, n_embd=64)
    fields.update(overrides)
    return GPTConfig(**fields)


def build(config: GPTConfig, seed: int = 0, randomize_zero_init: bool = True) -> GPT:
    """A model on the CPU, initialised; zero-initialised weights (output projections, zero lambdas) are given small
    random values so that every path (attention, MLP, value embeds, smear, backout) influences the output."""
    torch.manual_seed(seed)
    model = GPT(config)
    model.init_weights()
    if randomize_zero_init:
        with torch.no_grad():
            for p in model.parameters():
                if not p.any():
                    p.normal_(0, 0.05)
    return model


def tokens(B, T, vocab=VOCAB, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (B, T), generator=g)


def expected_window_sizes(seq_len: int, pattern: str, n_layer: int) -> list[int]:
    """Independent statement of the documented rule: S = a quarter of the context rounded up to a multiple of 128
    (at most the context), L = the full context, pattern tiled over layers, the last layer always full."""
    short = min(seq_len, 128 * math.ceil(seq_len / 4 / 128))
    sizes = [short if pattern[i % len(pattern)] == "S" else seq_len for i in range(n_layer)]
    sizes[-1] = seq_len
    return sizes


def value_embed_layers(n_layer: int) -> list[int]:
    """Alternate layers, always including the last one."""
    return [i for i in range(n_layer) if (n_layer - 1 - i) % 2 == 0]


def expected_counts(config: GPTConfig) -> dict:
    d, L, V = config.n_embd, config.n_layer, config.padded_vocab
    kv_dim = config.n_kv_head * (d // config.n_head)
    ve_layers = len(value_embed_layers(L)) if config.value_embeds else 0
    # per layer: c_q and c_proj (d×d), c_k and c_v (kv_dim×d), MLP c_fc and c_proj (4d×d each)
    per_layer = 2 * d * d + 2 * d * kv_dim + 8 * d * d
    matrices = per_layer * L + ve_layers * 12 * config.n_kv_head  # + the small ve_gate (n_kv_head × 12)
    counts = {"matrices": matrices, "wte": V * d, "lm_head": V * d, "value_embeds": ve_layers * V * kv_dim}
    scalars = (2 * L if config.skip_lambdas else 0) + (24 + 1 if config.smear else 0) + (1 if config.backout else 0)
    counts["scaling"] = matrices + V * d
    counts["total"] = matrices + 2 * V * d + counts["value_embeds"] + scalars
    return counts


# ---------------------------------------------------------------------------------------------------------------------
# Shapes and losses

def test_logits_shape_uses_the_real_vocab_and_are_softcapped():
    config = tiny_config()
    assert config.padded_vocab == 320  # ceil(300 / 64) * 64
    model = build(config)
    assert model.lm_head.weight.shape == (320, 64)
    logits = model(tokens(3, 17))
    assert logits.shape == (3, 17, VOCAB)
    assert logits.dtype == torch.float32
    assert logits.abs().max() <= config.softcap


def test_loss_is_a_scalar_and_none_reduction_gives_one_value_per_target():
    model = build(tiny_config())
    x, y = tokens(3, 17, seed=1), tokens(3, 17, seed=2)
    loss = model(x, y)
    assert loss.shape == ()
    per_token = model(x, y, loss_reduction="none")
    assert per_token.shape == (3 * 17,)
    torch.testing.assert_close(per_token.mean(), loss)
    # independently: cross-entropy of the returned logits
    logits = model(x)
    torch.testing.assert_close(F.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1), reduction="none"), per_token)


def test_ignore_index_minus_one_is_left_out_of_the_loss():
    model = build(tiny_config())
    x, y = tokens(2, 20, seed=1), tokens(2, 20, seed=2)
    ignored = torch.zeros_like(y, dtype=torch.bool)
    ignored[0, :7] = True
    ignored[1, 15:] = True
    y_masked = y.masked_fill(ignored, -1)
    per_token = model(x, y_masked, loss_reduction="none").view(2, 20)
    assert torch.all(per_token[ignored] == 0)
    full = model(x, y, loss_reduction="none").view(2, 20)
    torch.testing.assert_close(per_token[~ignored], full[~ignored])
    torch.testing.assert_close(model(x, y_masked), full[~ignored].mean())


def test_loss_at_init_is_about_ln_vocab():
    """The head starts tiny, so the first prediction is nearly uniform: loss ≈ ln(vocab)."""
    torch.manual_seed(0)
    model = GPT(tiny_config())
    model.init_weights()  # the real init, nothing randomised
    loss = model(tokens(4, 64, seed=3), tokens(4, 64, seed=4)).item()
    assert abs(loss - math.log(VOCAB)) < 0.1


# ---------------------------------------------------------------------------------------------------------------------
# Parameter counts and FLOPs

@pytest.mark.parametrize("config", [
    tiny_config(),  # GQA, 2 layers
    tiny_config(n_layer=3, n_head=2, n_kv_head=2, n_embd=32),
    config_for_depth(2, 512, 128, aspect_ratio=32, head_dim=16),
    tiny_config(smear=False, backout=False, skip_lambdas=False, value_embeds=False),
], ids=["gqa-d2", "d3", "depth-dial", "plain"])
def test_parameter_counts_follow_the_formulas(config):
    model = build(config, randomize_zero_init=False)
    counts = model.num_params()
    expected = expected_counts(config)
    for key, value in expected.items():
        assert counts[key] == value, key
    assert counts["total"] == sum(p.numel() for p in model.parameters())


def test_depth_dial_derives_width_and_heads():
    config = config_for_depth(20, 32768)
    assert (config.n_layer, config.n_embd, config.n_head, config.n_kv_head) == (20, 1280, 10, 10)
    # the width is depth × aspect ratio rounded up to whole heads
    config = config_for_depth(3, 300, 64, aspect_ratio=10, head_dim=8)
    assert config.n_embd == 32 and config.n_head == 4


@pytest.mark.parametrize("depth,total_m,scaling_m", [(12, 286.3, 110.1), (20, 896.5, 435.2), (24, 1384.1, 729.8)])
def test_published_nanochat_parameter_counts(depth, total_m, scaling_m):
    """nanochat's published sizes for vocab 32768: exact counts from the formulas, which round to the figures."""
    config = config_for_depth(depth, 32768)
    d = 64 * depth
    L = depth
    n_ve = len(value_embed_layers(L))
    matrices = 12 * d * d * L + n_ve * 12 * config.n_head
    scaling = matrices + 32768 * d
    total = matrices + 2 * 32768 * d + n_ve * 32768 * d + 2 * L + 25 + 1
    with torch.device("meta"):
        model = GPT(config)
    counts = model.num_params()
    assert counts["scaling"] == scaling
    assert counts["total"] == total
    assert round(total / 1e6, 1) == total_m
    assert round(scaling / 1e6, 1) == scaling_m


@pytest.mark.parametrize("config", [
    tiny_config(),
    tiny_config(sequence_len=1024, n_layer=5, window_pattern="SSL"),  # short windows of 256 < 1024
    tiny_config(sequence_len=256, value_embeds=False, smear=False),
], ids=["d2", "windows", "switches"])
def test_estimate_flops(config):
    """6 × (weights used in matmuls) + Σ_layers 12 · n_head · head_dim · min(window, seq_len)."""
    with torch.device("meta"):
        model = GPT(config)
    d, L, V = config.n_embd, config.n_layer, config.padded_vocab
    hd = d // config.n_head
    kv_dim = config.n_kv_head * hd
    n_ve = len(value_embed_layers(L)) if config.value_embeds else 0
    linear = (2 * d * d + 2 * d * kv_dim + 8 * d * d) * L + V * d + n_ve * 12 * config.n_kv_head \
        + (24 if config.smear else 0)
    windows = expected_window_sizes(config.sequence_len, config.window_pattern, L)
    assert model.windows == windows
    attn = sum(12 * config.n_head * hd * min(w, config.sequence_len) for w in windows)
    assert model.estimate_flops() == 6 * linear + attn


def test_window_sizes():
    assert tiny_config(sequence_len=2048, n_layer=6).window_sizes() == [512, 512, 512, 2048, 512, 2048]
    assert tiny_config(sequence_len=256, n_layer=3, window_pattern="SL").window_sizes() == [128, 256, 256]
    assert tiny_config(sequence_len=64, n_layer=2).window_sizes() == [64, 64]  # a quarter rounds up to the context
    assert tiny_config(sequence_len=2048, n_layer=3, window_pattern="L").window_sizes() == [2048] * 3
    unbounded = tiny_config(sequence_len=256, n_layer=3, window_pattern="F").window_sizes()
    assert all(w > 256 * 100 for w in unbounded)  # nanochat's Oct 2025 model: the whole prefix at any length
    assert tiny_config(sequence_len=256, n_layer=3, window_pattern="SF").window_sizes() == [128, unbounded[0], 256]


# ---------------------------------------------------------------------------------------------------------------------
# Causality and sliding windows

def test_causal_with_sliding_windows():
    """Changing tokens after position t leaves the logits at positions ≤ t unchanged (short windows active)."""
    config = tiny_config(sequence_len=256, window_pattern="SL", n_layer=2)
    model = build(config)
    assert model.windows == [128, 256]
    T = 256
    x = tokens(2, T, seed=5)
    base = model(x)
    for t in (0, 100, 130, 200, 254):
        changed = x.clone()
        changed[:, t + 1:] = (changed[:, t + 1:] + 1 + tokens(2, T - t - 1, VOCAB - 1, seed=t)) % VOCAB
        assert torch.all(changed[:, t + 1:] != x[:, t + 1:])
        out = model(changed)
        torch.testing.assert_close(out[:, :t + 1], base[:, :t + 1], atol=1e-5, rtol=1e-5)
        assert (out[:, t + 1:] - base[:, t + 1:]).abs().max() > 1e-3  # the change does reach later positions


def reference_attention(q, k, v, window):
    """Plain softmax attention in float64 with an explicit mask: query i sees keys j with i - window <= j <= i.
    q: (B, T, H, D); k, v: (B, T, Hkv, D), query head h using kv head h // (H / Hkv)."""
    B, T, H, D = q.shape
    group = H // k.size(2)
    k = k.repeat_interleave(group, dim=2).double()
    v = v.repeat_interleave(group, dim=2).double()
    scores = torch.einsum("bihd,bjhd->bhij", q.double(), k) / math.sqrt(D)
    i = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    mask = (j <= i) & (j >= i - window)
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.einsum("bhij,bjhd->bihd", scores.softmax(dim=-1), v).to(q.dtype)


class FlashAttention3StandIn:
    """FlashAttention-3's documented contract in plain math, standing in for the kernel the Hub serves to GPUs:
    q, k, v as (B, T, H, D), causal=True, window_size=(left, right) with -1 for unlimited, and (out, lse) back."""

    def __init__(self):
        self.window_sizes = []

    def flash_attn_func(self, q, k, v, causal=False, window_size=(-1, -1)):
        assert causal and window_size[1] == 0
        self.window_sizes.append(window_size)
        left = window_size[0] if window_size[0] >= 0 else q.size(1)
        return reference_attention(q, k, v, left), None


@pytest.fixture(params=["sdpa", "flex", "fa3"])
def backend(request, monkeypatch):
    """Each training attention implementation; FlexAttention runs here without gradients (it has no CPU backward)."""
    monkeypatch.setattr(attention_module, "_backend", request.param)
    if request.param == "flex":  # eager here: CPUs have no FlexAttention kernel to compile, nor a backward
        monkeypatch.setattr(attention_module, "is_compiling", lambda: True)
    if request.param == "fa3":
        monkeypatch.setattr(attention_module, "_fa3", FlashAttention3StandIn())
    return request.param


EAGER_FLEX = "ignore:flex_attention called without torch.compile"  # on purpose here: CPUs have no fused kernel


@pytest.mark.filterwarnings(EAGER_FLEX)
@pytest.mark.parametrize("n_kv_head", [4, 2, 1], ids=["mha", "gqa", "mqa"])
def test_sliding_window_attention_matches_explicit_mask(n_kv_head, backend):
    B, T, H, D = 2, 40, 4, 8
    g = torch.Generator().manual_seed(n_kv_head)
    q = torch.randn(B, T, H, D, generator=g)
    k = torch.randn(B, T, n_kv_head, D, generator=g)
    v = torch.randn(B, T, n_kv_head, D, generator=g)
    causal = reference_attention(q, k, v, T)
    for window in (0, 1, 5, 16, T - 2):
        expected = reference_attention(q, k, v, window)
        assert (expected - causal).abs().max() > 1e-3  # the window really cuts something off
        torch.testing.assert_close(attention(q, k, v, window), expected, atol=1e-5, rtol=1e-5)
    for window in (T - 1, T, 10 * T):
        torch.testing.assert_close(attention(q, k, v, window), causal, atol=1e-5, rtol=1e-5)
    if backend == "fa3":  # short windows go to the kernel as windows, full ones as plain causal attention
        assert attention_module._fa3.window_sizes == [(w, 0) for w in (0, 1, 5, 16, T - 2)] + [(-1, 0)] * 3


@pytest.mark.filterwarnings(EAGER_FLEX)
@pytest.mark.parametrize("backend", ["flex", "fa3"], indirect=True)
def test_model_forward_matches_sdpa_with_the_other_backends(backend):
    model = build(tiny_config(sequence_len=256, window_pattern="SSL", n_layer=3))
    x = tokens(2, 256, seed=3)
    with torch.no_grad():
        out = model(x)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(attention_module, "_backend", "sdpa")
        with torch.no_grad():
            torch.testing.assert_close(out, model(x), atol=1e-4, rtol=1e-4)


def test_flex_attention_compiles_into_one_graph(monkeypatch):
    """How GPUs train with FlexAttention: inside torch.compile, block masks and all, with no graph break; the same
    model run eagerly (task accuracies during mid/SFT) takes SDPA instead of an eager FlexAttention."""
    model = build(tiny_config(sequence_len=256, window_pattern="SSL", n_layer=3))
    x = tokens(2, 256, seed=3)
    graphs = []

    def recording_inductor(graph, example_inputs):
        graphs.append(graph.code)
        return torch._inductor.compile(graph, example_inputs)

    with torch.no_grad():
        monkeypatch.setattr(attention_module, "_backend", "sdpa")
        expected = model(x)
        monkeypatch.setattr(attention_module, "_backend", "flex")
        compiled = torch.compile(model, fullgraph=True, dynamic=False, backend=recording_inductor)
        torch.testing.assert_close(compiled(x), expected, atol=1e-4, rtol=1e-4)
        assert len(graphs) == 1 and graphs[0].count("higher_order.flex_attention(") == 2  # the two short-window layers
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # "flex_attention called without torch.compile"
            torch.testing.assert_close(model(x), expected, atol=0, rtol=0)


def test_backend_choice(monkeypatch, capsys):
    monkeypatch.setattr(attention_module, "_backend", "sdpa")
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert use_backend("auto", cpu, torch.float32, compiled=False) == "sdpa"
    assert use_backend("auto", cpu, torch.float32, compiled=True) == "sdpa"
    for choice in ("fa3", "flex"):
        with pytest.raises(UserError, match=f"--attention {choice} needs a CUDA GPU"):
            use_backend(choice, cpu, torch.float32, compiled=True)

    # On a GPU: FlashAttention-3 when the kernel loads (bf16); else FlexAttention in a compiled model, saying why;
    # FlexAttention never without torch.compile, where it would materialise the whole score matrix.
    monkeypatch.setattr(attention_module, "load_fa3", FlashAttention3StandIn)
    assert use_backend("auto", cuda, torch.bfloat16, compiled=True) == "fa3"
    assert use_backend("auto", cuda, torch.bfloat16, compiled=False) == "fa3"
    assert use_backend("auto", cuda, torch.float32, compiled=True) == "flex"
    assert "needs bf16 or fp16, not float32): using flex" in capsys.readouterr().out
    assert use_backend("sdpa", cuda, torch.bfloat16, compiled=True) == "sdpa"
    assert use_backend("flex", cuda, torch.bfloat16, compiled=True) == "flex"
    with pytest.raises(UserError, match="only fast inside torch.compile"):
        use_backend("flex", cuda, torch.bfloat16, compiled=False)

    def offline():
        raise RuntimeError("kernels-community/flash-attn3 did not load: no network")
    monkeypatch.setattr(attention_module, "load_fa3", offline)
    assert use_backend("auto", cuda, torch.bfloat16, compiled=True) == "flex"
    assert use_backend("auto", cuda, torch.bfloat16, compiled=False) == "sdpa"
    assert "FlashAttention-3 is unavailable (kernels-community/flash-attn3 did not load: no network)" in \
        capsys.readouterr().out
    with pytest.raises(UserError, match="--attention fa3: .*no network; use --attention auto"):
        use_backend("fa3", cuda, torch.bfloat16, compiled=True)


def _choose_attention_with_one_rank_offline(rank, world, init_file, out_dir, choice):
    """One torchrun-like process: every rank but the last loads the kernel."""
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    if rank == world - 1:
        def offline():
            raise RuntimeError("kernels-community/flash-attn3 did not load: no network")
        attention_module.load_fa3 = offline
    else:
        attention_module.load_fa3 = FlashAttention3StandIn
    try:
        outcome = use_backend(choice, torch.device("cuda"), torch.bfloat16, compiled=True)
    except UserError as e:
        outcome = f"error: {e}"
    (out_dir / f"rank{rank}").write_text(outcome)
    dist.destroy_process_group()


@pytest.mark.parametrize("choice", ["auto", "fa3"])
def test_every_process_trains_with_the_same_attention(tmp_path, choice):
    """A node that cannot fetch the kernel makes every process fall back (auto) or every process stop (fa3): the
    processes must never train with different attention, or hang in a collective the others never reach."""
    import torch.multiprocessing as mp
    mp.start_processes(_choose_attention_with_one_rank_offline, args=(2, tmp_path / "init", tmp_path, choice),
                       nprocs=2, start_method="fork")
    outcomes = [(tmp_path / f"rank{rank}").read_text() for rank in range(2)]
    if choice == "auto":
        assert outcomes == ["flex", "flex"]
    else:
        assert outcomes[0] == outcomes[1] and outcomes[0].startswith("error: --attention fa3: rank 1: ")


def test_fa3_that_cannot_load_is_a_reason_not_a_crash(home, monkeypatch):
    """Here (no GPU, no Hub) the kernel cannot load, whether or not the kernels package is installed."""
    monkeypatch.setattr(attention_module, "_fa3", None)
    with pytest.raises(RuntimeError, match="kernels package is not installed|flash-attn3 did not load"):
        load_fa3()


def test_forward_is_independent_of_the_batch():
    model = build(tiny_config(sequence_len=256, window_pattern="SL"))
    x = tokens(3, 200, seed=7)
    batched = model(x)
    for row in range(3):
        torch.testing.assert_close(model(x[row:row + 1])[0], batched[row], atol=1e-5, rtol=1e-5)


def test_generate_greedy_follows_the_argmax():
    model = build(tiny_config())
    prompt = [5, 17, 42]
    out = list(model.generate(prompt, 6, temperature=0))
    assert len(out) == 6
    ids = list(prompt)
    for _ in range(6):
        ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    assert out == ids[len(prompt):]


# ---------------------------------------------------------------------------------------------------------------------
# Config switches and bad configs

def test_nanochat_oct_2025_model_via_switches():
    """All 2026 extras off, full windows, RoPE base 10k, no QK scale, no vocab padding: 12·d²·L + 2·V·d params."""
    config = GPTConfig(sequence_len=64, vocab_size=VOCAB, n_layer=2, n_head=4, n_kv_head=4, n_embd=64,
                       window_pattern="L", rope_base=10000, qk_scale=1.0, value_embeds=False, smear=False,
                       backout=False, skip_lambdas=False, vocab_pad_to=1)
    model = build(config)
    d, L = 64, 2
    assert sum(p.numel() for p in model.parameters()) == 12 * d * d * L + 2 * VOCAB * d
    assert model.num_params()["total"] == 12 * d * d * L + 2 * VOCAB * d
    assert model.lm_head.weight.shape == (VOCAB, d)
    assert model.windows == [64, 64]
    assert len(model.value_embeds) == 0
    for name in ("resid_lambdas", "x0_lambdas", "smear_lambda", "backout_lambda"):
        assert not hasattr(model, name)
    x, y = tokens(2, 64, seed=1), tokens(2, 64, seed=2)
    assert model(x).shape == (2, 64, VOCAB)
    loss = model(x, y)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters())
    # the RoPE base is used: a different base gives different tables
    other = GPT(GPTConfig(**{**config.to_dict(), "rope_base": 100_000.0}))
    other.init_weights()
    assert not torch.allclose(model.sin, other.sin)


@pytest.mark.parametrize("fields", [
    dict(n_embd=100, n_head=3),  # heads do not divide the width
    dict(n_embd=96, n_head=32, n_kv_head=32),  # head size 3 is odd (RoPE rotates pairs)
    dict(n_head=4, n_kv_head=3),  # query heads not shared evenly among kv heads
    dict(window_pattern="SXL"),
    dict(window_pattern=""),
], ids=["width", "odd-head", "kv-heads", "pattern-letters", "pattern-empty"])
def test_bad_configs_raise_user_error(fields):
    with pytest.raises(UserError):
        tiny_config(**fields)


def test_bad_depth_dial_raises_user_error():
    with pytest.raises(UserError):
        config_for_depth(0, VOCAB)
    with pytest.raises(UserError):
        config_for_depth(2, VOCAB, aspect_ratio=0)


def test_a_weight_init_weights_does_not_know_is_refused_not_left_as_garbage():
    """Models are built on the meta device and materialised with to_empty: a weight added to the model without an
    init of its own would train from whatever memory held."""
    model = GPT(tiny_config())
    model.transformer.h[0].mlp.c_gate = torch.nn.Linear(64, 256, bias=False)  # e.g. a SwiGLU gate
    with pytest.raises(AssertionError, match=r"h\.0\.mlp\.c_gate\.weight"):
        model.init_weights()


def test_inference_weights_are_cast_once_to_the_compute_dtype():
    model = build(tiny_config())
    x = tokens(1, 16, seed=1)
    model.compute_dtype = torch.bfloat16
    with torch.no_grad():
        master = model(x)  # fp32 master weights, cast at every matmul
        model.prepare_for_inference()
        assert not model.training and {p.dtype for p in model.parameters()} == {torch.bfloat16}
        torch.testing.assert_close(model(x), master, atol=0, rtol=0)  # the same numbers, without the casts
