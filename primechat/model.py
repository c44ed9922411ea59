"""The GPT: one depth dial, everything else derived.

nanochat's 2026 design (reference B4): RMSNorm without weights, RoPE, QK-norm, relu² MLP, untied head, logit
softcap, vocab padded to a multiple of 64, plus the tricks its log measured as wins: sliding-window attention in an
SSSL pattern (last layer always full), value embeddings on alternating layers, smear (a gated copy of the previous
token's embedding), per-layer residual/x0 lambdas and backout (subtract part of the middle layer's output).
Each of those is a config switch, so the same code also expresses nanochat's Oct 2025 model (for imports) and
serves researchers as ablations.

Weights are kept in fp32 (master weights); each matmul casts them to the activation dtype, which is bf16 on
modern GPUs and fp32 elsewhere (no autocast).

For inference, forward takes a KV cache (primechat.engine.KVCache): the new tokens sit at absolute positions
cache.pos.., attend to everything cached before them, and leave their keys, values and last embedding (for smear)
in the cache. Without a cache, forward is the training computation, untouched.
"""

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from primechat.attention import attention, cached_attention
from primechat.common import UserError
from primechat.fp8 import fp8_linear


UNBOUNDED = 2**31 - 1  # an F layer's window: longer than any text
ARCHES = ("primechat", "nanochat-2025")  # nanochat's 2026 design (B4), and its Oct 2025 model (A4)
LAYOUTS = {  # the constants nanochat's two designs differ in, by its checkpoint layout's name
    "oct2025": dict(rope_base=10_000.0, qk_scale=1.0, softcap=15.0),
    "2026": dict(rope_base=100_000.0, qk_scale=1.2, softcap=15.0),
}


@dataclass
class GPTConfig:
    sequence_len: int = 2048
    vocab_size: int = 32768
    n_layer: int = 12
    n_head: int = 6
    n_kv_head: int = 6
    n_embd: int = 768
    window_pattern: str = "SSSL"  # tiled over the layers, the last never S: S = a quarter of the context, L = the
    # context (longer text at inference slides through it, as nanochat's 2026 model), F = the whole prefix at any
    # length (nanochat's Oct 2025 model, which has no windows)
    rope_base: float = 100_000.0
    qk_scale: float = 1.2  # q and k are multiplied by this after their RMSNorm (sharper attention)
    value_embeds: bool = True
    smear: bool = True
    backout: bool = True
    skip_lambdas: bool = True  # learned per-layer scales of the residual stream and of the first layer's input x0
    softcap: float = 15.0
    vocab_pad_to: int = 64

    def __post_init__(self):
        if self.n_embd % self.n_head or (self.n_embd // self.n_head) % 2:
            raise UserError(f"model width {self.n_embd} is not divisible into {self.n_head} heads of even size: "
                            f"change --depth, --aspect-ratio or --head-dim")
        if self.n_head % self.n_kv_head:
            raise UserError(f"{self.n_head} query heads cannot be shared among {self.n_kv_head} kv heads")
        if not self.window_pattern or set(self.window_pattern.upper()) - set("SLF"):
            raise UserError(f"--window-pattern {self.window_pattern!r} must be letters S, L (and F), e.g. SSSL or L")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def padded_vocab(self) -> int:
        return math.ceil(self.vocab_size / self.vocab_pad_to) * self.vocab_pad_to

    def window_sizes(self) -> list[int]:
        """Left context of each layer in tokens: short = a quarter of the context rounded up to 128."""
        short = min(self.sequence_len, math.ceil(self.sequence_len / 4 / 128) * 128)
        size = {"S": short, "L": self.sequence_len, "F": UNBOUNDED}
        pattern = self.window_pattern.upper()
        sizes = [size[pattern[i % len(pattern)]] for i in range(self.n_layer)]
        sizes[-1] = max(sizes[-1], self.sequence_len)
        return sizes

    def has_value_embed(self, layer: int) -> bool:
        return self.value_embeds and layer % 2 == (self.n_layer - 1) % 2  # alternate layers, always the last

    def to_dict(self) -> dict:
        return asdict(self)


def config_for_depth(depth: int, vocab_size: int, sequence_len: int = 2048, aspect_ratio: int = 64,
                     head_dim: int = 128, window_pattern: str = "SSSL", arch: str = "primechat") -> GPTConfig:
    """The depth dial: width = depth × aspect ratio rounded up to whole heads.

    arch "nanochat-2025" gives nanochat's Oct 2025 model at that depth instead (reference A4): width exactly depth ×
    aspect ratio in heads of about head_dim, the whole prefix attended in every layer, none of the 2026 additions,
    the vocab unpadded; its RoPE base and QK scale. Everything else (optimizer, schedules) stays primechat's."""
    if depth < 1 or aspect_ratio < 1 or head_dim < 2:
        raise UserError(f"--depth {depth}, --aspect-ratio {aspect_ratio}, --head-dim {head_dim} must be positive")
    if arch == "nanochat-2025":
        width = depth * aspect_ratio
        heads = max(1, math.ceil(width / head_dim))
        return GPTConfig(sequence_len=sequence_len, vocab_size=vocab_size, n_layer=depth, n_head=heads,
                         n_kv_head=heads, n_embd=width, window_pattern="F", value_embeds=False, smear=False,
                         backout=False, skip_lambdas=False, vocab_pad_to=1, **LAYOUTS["oct2025"])
    width = math.ceil(depth * aspect_ratio / head_dim) * head_dim
    heads = width // head_dim
    return GPTConfig(sequence_len=sequence_len, vocab_size=vocab_size, n_layer=depth, n_head=heads, n_kv_head=heads,
                     n_embd=width, window_pattern=window_pattern)


def norm(x):
    return F.rms_norm(x, (x.size(-1),))


class Linear(nn.Linear):
    """fp32 master weight, cast to the activation dtype at use; fp8 matmuls in training once enable_fp8 marks it."""
    fp8 = False

    def forward(self, x):
        if self.fp8 and torch.is_grad_enabled():
            return fp8_linear(x, self.weight)
        return F.linear(x, self.weight.to(x.dtype))


def apply_rotary(x, cos, sin):
    d = x.shape[-1] // 2
    x1, x2 = x[..., :d], x[..., d:]
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)


# The value-embedding and smear gates read only the first channels of their input (nanochat 2026, reference B4):
# enough to decide how much to let through, at a negligible cost in parameters.
VE_GATE_CHANNELS, SMEAR_GATE_CHANNELS = 12, 24


class Attention(nn.Module):
    """Causal self-attention with RoPE, QK-norm and this layer's window. The Hub's remote-code copy
    (interop/modeling_primechat.py) restates it; tests/test_interop.py compares the two."""

    def __init__(self, config: GPTConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        self.qk_scale = config.qk_scale
        d, kv = config.n_embd, config.n_kv_head * config.head_dim
        self.c_q, self.c_k, self.c_v = Linear(d, d, bias=False), Linear(d, kv, bias=False), Linear(d, kv, bias=False)
        self.c_proj = Linear(d, d, bias=False)
        self.ve_gate = Linear(VE_GATE_CHANNELS, config.n_kv_head, bias=False) if config.has_value_embed(layer) else None

    def forward(self, x, ve, cos, sin, window, kv_cache=None):
        B, T, _ = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_kv_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_kv_head, self.head_dim)
        if ve is not None:  # value embedding: a per-token vector added to v, gated per kv head by the input
            gate = 3 * torch.sigmoid(self.ve_gate(x[..., :VE_GATE_CHANNELS])).unsqueeze(-1)  # in (0, 3)
            v = v + gate * ve.view(B, T, self.n_kv_head, self.head_dim)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        q, k = norm(q) * self.qk_scale, norm(k) * self.qk_scale
        if kv_cache is None:
            y = attention(q, k, v, window)
        else:
            k, v = kv_cache.insert(self.layer, k, v)
            y = cached_attention(q, k, v, kv_cache.pos, window)
        return self.c_proj(y.reshape(B, T, -1))


class MLP(nn.Module):
    """relu² at 4× width. Restated outside this file, so change them with it: interop/modeling_primechat.py (the
    Hub's remote-code copy), interop/hf.py and interop/pull.py (transformers' NanoChat config: hidden_act,
    intermediate_size) and plan.saved_values (activation memory); tests/test_interop.py compares the copies."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.c_proj = Linear(4 * config.n_embd, config.n_embd, bias=False)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer: int):
        super().__init__()
        self.attn = Attention(config, layer)
        self.mlp = MLP(config)

    def forward(self, x, ve, cos, sin, window, kv_cache=None):
        x = x + self.attn(norm(x), ve, cos, sin, window, kv_cache)
        return x + self.mlp(norm(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        V, d, L = config.padded_vocab, config.n_embd, config.n_layer
        self.transformer = nn.ModuleDict({
            "wte": nn.Embedding(V, d),
            "h": nn.ModuleList([Block(config, i) for i in range(L)]),
        })
        self.lm_head = Linear(d, V, bias=False)
        kv_dim = config.n_kv_head * config.head_dim
        self.value_embeds = nn.ModuleDict({str(i): nn.Embedding(V, kv_dim) for i in range(L)
                                           if config.has_value_embed(i)})
        if config.skip_lambdas:
            self.resid_lambdas = nn.Parameter(torch.ones(L))
            self.x0_lambdas = nn.Parameter(torch.zeros(L))
        if config.smear:
            self.smear_gate = Linear(SMEAR_GATE_CHANNELS, 1, bias=False)
            self.smear_lambda = nn.Parameter(torch.zeros(1))
        if config.backout:
            self.backout_lambda = nn.Parameter(torch.zeros(1))
        self.windows = config.window_sizes()
        self.compute_dtype = None  # None: bf16 on CUDA GPUs that support it, else fp32 (see common.compute_dtype)
        # RoPE tables for 10× the training context, so generation can run past it; rebuilt by init_weights.
        self.register_buffer("cos", torch.empty(0), persistent=False)
        self.register_buffer("sin", torch.empty(0), persistent=False)

    @torch.no_grad()
    def init_weights(self):
        """Initialise all weights (nanochat's 2026 recipe) and the RoPE tables; call after construction or to_empty.
        Models are built on the meta device and to_empty leaves garbage, so a weight added to the model must get its
        init here: one that does not is caught at the end."""
        c = self.config
        for p in self.parameters():
            p.fill_(float("nan"))
        L, d = c.n_layer, c.n_embd
        bound = math.sqrt(3) / math.sqrt(d)  # uniform with std 1/sqrt(d)
        nn.init.normal_(self.transformer.wte.weight, std=0.8)
        nn.init.normal_(self.lm_head.weight, std=0.001)
        for block in self.transformer.h:
            for lin in (block.attn.c_q, block.attn.c_k, block.attn.c_v):
                nn.init.uniform_(lin.weight, -bound, bound)
            nn.init.uniform_(block.mlp.c_fc.weight, -0.4 * bound, 0.4 * bound)
            nn.init.zeros_(block.attn.c_proj.weight)
            nn.init.zeros_(block.mlp.c_proj.weight)
            if block.attn.ve_gate is not None:
                nn.init.uniform_(block.attn.ve_gate.weight, 0, 0.02)
        for emb in self.value_embeds.values():
            nn.init.uniform_(emb.weight, -bound, bound)
        if c.skip_lambdas:
            frac = torch.arange(L, dtype=torch.float32) / max(L - 1, 1)
            self.resid_lambdas.copy_(1.15 - 0.10 * frac)
            self.x0_lambdas.copy_(0.20 - 0.15 * frac)
        if c.smear:
            nn.init.uniform_(self.smear_gate.weight, 0, 0.02)
            self.smear_lambda.zero_()
        if c.backout:
            self.backout_lambda.fill_(0.2)
        self.cos, self.sin = self._rotary_tables(10 * c.sequence_len, self.lm_head.weight.device)
        missed = [name for name, p in self.named_parameters() if p.isnan().any()]
        assert not missed, f"init_weights does not initialise {missed}: add their init to GPT.init_weights"

    def prepare_for_inference(self):
        """Eval mode, weights in the compute dtype: inference needs no fp32 master copy, so cast once, not at every
        matmul."""
        if self.compute_dtype not in (None, torch.float32):
            for p in self.parameters():
                p.data = p.data.to(self.compute_dtype)
        return self.eval()

    def _rotary_tables(self, length, device):
        hd = self.config.head_dim
        inv_freq = 1.0 / (self.config.rope_base ** (torch.arange(0, hd, 2, dtype=torch.float32, device=device) / hd))
        freqs = torch.outer(torch.arange(length, dtype=torch.float32, device=device), inv_freq)
        return freqs.cos()[None, :, None, :], freqs.sin()[None, :, None, :]  # (1, T, 1, hd/2)

    def activation_dtype(self, device: torch.device) -> torch.dtype:
        """Of activations and KV caches: compute_dtype if set, else bf16 on CUDA GPUs that have it, fp32 elsewhere."""
        if self.compute_dtype:
            return self.compute_dtype
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32

    def forward(self, idx, targets=None, loss_reduction="mean", kv_cache=None, at=None):
        """Logits (B, T, vocab) or, with targets (-1 = ignore), the cross-entropy loss. With a kv_cache, idx continues
        the sequences held in it. at: logits of one position per row only, (B, 1, vocab): an int for every row (-1
        after a prefill, all sampling needs) or a (B,) tensor (each right-padded prompt's end, for multiple choice).
        A long prompt's full logits would be T × vocab floats."""
        c = self.config
        B, T = idx.shape
        dtype = self.activation_dtype(idx.device)
        pos = 0 if kv_cache is None else kv_cache.pos
        cos, sin = self.cos[:, pos:pos + T].to(dtype), self.sin[:, pos:pos + T].to(dtype)
        x = norm(self.transformer.wte(idx).to(dtype))
        if c.smear:  # mix a gated share of the previous token's embedding into each position
            if pos == 0:
                gate = torch.sigmoid(self.smear_gate(x[:, 1:, :SMEAR_GATE_CHANNELS]))
                smeared = torch.cat([x[:, :1], x[:, 1:] + self.smear_lambda.to(dtype) * gate * x[:, :-1]], dim=1)
            else:  # the first new token's predecessor was in an earlier call: the cache kept its embedding
                gate = torch.sigmoid(self.smear_gate(x[..., :SMEAR_GATE_CHANNELS]))
                prev = torch.cat([kv_cache.prev_embed, x[:, :-1]], dim=1)
                smeared = x + self.smear_lambda.to(dtype) * gate * prev
            if kv_cache is not None:
                kv_cache.prev_embed = x[:, -1:]
            x = smeared
        x0, x_mid = x, None
        for i, block in enumerate(self.transformer.h):
            if c.skip_lambdas:
                x = self.resid_lambdas[i].to(dtype) * x + self.x0_lambdas[i].to(dtype) * x0
            ve = self.value_embeds[str(i)](idx).to(dtype) if str(i) in self.value_embeds else None
            x = block(x, ve, cos, sin, self.windows[i], kv_cache)
            if i == c.n_layer // 2:
                x_mid = x
        if kv_cache is not None:
            kv_cache.pos += T
        if c.backout:
            x = x - self.backout_lambda.to(dtype) * x_mid
        if at is not None:
            rows = torch.arange(B, device=x.device)
            x = x[rows, torch.as_tensor(at, device=x.device).expand(B) % T].unsqueeze(1)
        logits = self.lm_head(norm(x))[..., :c.vocab_size].float()
        logits = c.softcap * torch.tanh(logits / c.softcap)
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1,
                               reduction=loss_reduction)

    # ----------------------------------------------------------------------------------------------------------------
    # Accounting: parameter groups, counts and FLOPs (used by the optimizer, the start-up table and the planner).

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by optimizer role; every parameter appears in exactly one group."""
        groups = {
            "matrices": [p for p in self.transformer.h.parameters()],
            "wte": [self.transformer.wte.weight],
            "lm_head": [self.lm_head.weight],
            "value_embeds": list(self.value_embeds.parameters()),
            "resid_lambdas": [self.resid_lambdas] if self.config.skip_lambdas else [],
            "x0_lambdas": [self.x0_lambdas] if self.config.skip_lambdas else [],
            "scalars": ([self.smear_lambda, self.smear_gate.weight] if self.config.smear else [])
                       + ([self.backout_lambda] if self.config.backout else []),
        }
        assert sum(len(g) for g in groups.values()) == len(list(self.parameters()))
        return groups

    def num_params(self) -> dict[str, int]:
        counts = {name: sum(p.numel() for p in ps) for name, ps in self.param_groups().items()}
        counts["scaling"] = counts["matrices"] + counts["lm_head"]  # what the tokens:params ratio counts
        counts["total"] = sum(p.numel() for p in self.parameters())
        return counts

    def estimate_flops(self) -> float:
        """Training FLOPs per token: 6 × matmul weights (embedding lookups are free) + attention over each window."""
        c = self.config
        matmul = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))
        attn = sum(12 * c.n_head * c.head_dim * min(w, c.sequence_len) for w in self.windows)
        return 6 * matmul + attn

    @torch.no_grad()
    def generate(self, tokens: list[int], max_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 seed: int = 42):
        """Naive generation by full recompute (batch 1), a reference for the Engine and for training samples."""
        device = self.lm_head.weight.device
        rng = torch.Generator(device=device).manual_seed(seed)
        ids = torch.tensor([tokens], dtype=torch.long, device=device)
        for _ in range(max_tokens):
            logits = self(ids[:, -self.config.sequence_len:])[:, -1, :]
            if temperature == 0:
                next_id = logits.argmax(dim=-1, keepdim=True)
            else:
                if top_k:
                    v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                    logits[logits < v[:, [-1]]] = -float("inf")
                probs = F.softmax(logits / temperature, dim=-1)
                next_id = torch.multinomial(probs, 1, generator=rng)
            ids = torch.cat([ids, next_id], dim=1)
            yield next_id.item()
