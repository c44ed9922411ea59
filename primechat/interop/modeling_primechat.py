"""primechat's model for Hugging Face transformers, loaded as remote code (`trust_remote_code=True`).

`primechat export hf` copies this file into the folder it writes when the model uses what transformers' own NanoChat
architecture cannot express: nanochat's 2026 design (sliding windows, value embeddings, smear, backout, resid/x0
lambdas, QK scale), which every model primechat trains has. It must run where primechat is not installed, so it
imports only torch and transformers and restates the forward of primechat/model.py; tests/test_interop.py checks that
both give the same logits. The weights keep primechat's names, minus the rows of the padded vocabulary.

Generation keeps keys and values in transformers' DynamicCache (every position; the sliding windows are a mask over
it) and takes left padding through the attention mask. Smear mixes each token with the one before it, so a forward
that continues a cached sequence needs the last token of the previous call as `previous_token` (B, 1):
prepare_inputs_for_generation passes it, and a hand-written decoding loop must too.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

VE_GATE_CHANNELS, SMEAR_GATE_CHANNELS = 12, 24  # the gates read only the first channels of their input


class PrimechatConfig(PretrainedConfig):
    model_type = "primechat"

    def __init__(self, vocab_size=32768, hidden_size=768, num_hidden_layers=12, num_attention_heads=6,
                 num_key_value_heads=6, max_position_embeddings=2048, window_sizes=None, rope_theta=100_000.0,
                 qk_scale=1.2, value_embed_layers=(), smear=True, backout=True, skip_lambdas=True,
                 final_logit_softcapping=15.0, use_cache=True, **kwargs):
        self.vocab_size, self.hidden_size, self.num_hidden_layers = vocab_size, hidden_size, num_hidden_layers
        self.num_attention_heads, self.num_key_value_heads = num_attention_heads, num_key_value_heads
        self.max_position_embeddings = max_position_embeddings
        # each layer's left context in tokens (primechat's GPTConfig.window_sizes())
        self.window_sizes = list(window_sizes or [max_position_embeddings] * num_hidden_layers)
        self.rope_theta, self.qk_scale, self.final_logit_softcapping = rope_theta, qk_scale, final_logit_softcapping
        self.value_embed_layers = list(value_embed_layers)
        self.smear, self.backout, self.skip_lambdas = smear, backout, skip_lambdas
        self.use_cache = use_cache
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)


def norm(x):
    return F.rms_norm(x, (x.size(-1),))


def apply_rotary(x, cos, sin):
    d = x.shape[-1] // 2
    x1, x2 = x[..., :d], x[..., d:]
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)


class Attention(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        self.layer, self.qk_scale = layer, config.qk_scale
        self.n_head, self.n_kv_head = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        d, kv = config.hidden_size, self.n_kv_head * self.head_dim
        self.c_q, self.c_proj = nn.Linear(d, d, bias=False), nn.Linear(d, d, bias=False)
        self.c_k, self.c_v = nn.Linear(d, kv, bias=False), nn.Linear(d, kv, bias=False)
        has_ve = layer in config.value_embed_layers
        self.ve_gate = nn.Linear(VE_GATE_CHANNELS, self.n_kv_head, bias=False) if has_ve else None

    def forward(self, x, ve, cos, sin, mask, cache):
        B, T, _ = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_kv_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_kv_head, self.head_dim)
        if ve is not None:
            gate = 3 * torch.sigmoid(self.ve_gate(x[..., :VE_GATE_CHANNELS])).unsqueeze(-1)
            v = v + gate * ve.view(B, T, self.n_kv_head, self.head_dim)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        q, k = norm(q) * self.qk_scale, norm(k) * self.qk_scale
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, D)
        if cache is not None:
            k, v = cache.update(k, v, self.layer)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=self.n_head != self.n_kv_head)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.hidden_size, 4 * config.hidden_size, bias=False)
        self.c_proj = nn.Linear(4 * config.hidden_size, config.hidden_size, bias=False)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())


class Block(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        self.attn, self.mlp = Attention(config, layer), MLP(config)

    def forward(self, x, ve, cos, sin, mask, cache):
        x = x + self.attn(norm(x), ve, cos, sin, mask, cache)
        return x + self.mlp(norm(x))


class PrimechatForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = PrimechatConfig
    base_model_prefix = "transformer"
    _no_split_modules = ["Block"]

    def __init__(self, config):
        super().__init__(config)
        V, d, L = config.vocab_size, config.hidden_size, config.num_hidden_layers
        self.transformer = nn.ModuleDict({"wte": nn.Embedding(V, d),
                                          "h": nn.ModuleList([Block(config, i) for i in range(L)])})
        self.lm_head = nn.Linear(d, V, bias=False)
        kv_dim = config.num_key_value_heads * (d // config.num_attention_heads)
        self.value_embeds = nn.ModuleDict({str(i): nn.Embedding(V, kv_dim) for i in config.value_embed_layers})
        if config.skip_lambdas:
            self.resid_lambdas, self.x0_lambdas = nn.Parameter(torch.ones(L)), nn.Parameter(torch.zeros(L))
        if config.smear:
            self.smear_gate = nn.Linear(SMEAR_GATE_CHANNELS, 1, bias=False)
            self.smear_lambda = nn.Parameter(torch.zeros(1))
        if config.backout:
            self.backout_lambda = nn.Parameter(torch.zeros(1))
        self.post_init()

    def get_input_embeddings(self):
        return self.transformer.wte

    def _rotary(self, position_ids, dtype):
        hd = self.config.hidden_size // self.config.num_attention_heads
        inv_freq = 1.0 / (self.config.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float32,
                                                                  device=position_ids.device) / hd))
        freqs = position_ids.float()[..., None] * inv_freq  # (B, T, hd/2)
        return freqs.cos()[:, :, None, :].to(dtype), freqs.sin()[:, :, None, :].to(dtype)

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, past_key_values=None,
                labels=None, use_cache=None, previous_token=None, logits_to_keep=0, **kwargs):
        c = self.config
        B, T = input_ids.shape
        cache = cache if cache is not None else past_key_values
        if cache is None and (use_cache if use_cache is not None else c.use_cache):
            cache = DynamicCache()
        dynamic = cache is None or type(cache) is DynamicCache  # every position kept: the windows are a mask
        if not dynamic or (attention_mask is not None and attention_mask.dim() != 2):
            raise ValueError("primechat's model takes transformers' DynamicCache (the default of generate) and a 2D "
                             "attention mask: not cache_implementation='static' or other caches")
        past = cache.get_seq_length() if cache is not None else 0
        if past and c.smear and previous_token is None:
            raise ValueError("continuing a cached sequence needs previous_token (B, 1): the last token of the "
                             "previous call, which smear mixes into the first new one")
        # which key positions hold real tokens (left padding is 0 in attention_mask), and where each token sits
        valid = (attention_mask.bool() if attention_mask is not None
                 else torch.ones(B, past + T, dtype=torch.bool, device=input_ids.device))
        if position_ids is None:
            position_ids = (valid.long().cumsum(-1) - 1).clamp(min=0)[:, past:]
        dtype = self.transformer.wte.weight.dtype
        cos, sin = self._rotary(position_ids, dtype)

        x = norm(self.transformer.wte(input_ids))
        if c.smear:  # a gated share of the previous token's embedding, none for a sequence's first token
            first = norm(self.transformer.wte(previous_token)) if past else torch.zeros_like(x[:, :1])
            prev = torch.cat([first, x[:, :-1]], dim=1)
            # whether the position before each token holds a real one (not padding, not before the start)
            has_prev = torch.cat([torch.zeros_like(valid[:, :1]), valid], dim=1)[:, past:past + T]
            gate = torch.sigmoid(self.smear_gate(x[..., :SMEAR_GATE_CHANNELS]))
            x = x + self.smear_lambda * gate * prev * has_prev[..., None]

        # causal, within each layer's window, real keys only; a query may always see itself (padding rows stay finite)
        i = torch.arange(past, past + T, device=x.device)[:, None]
        j = torch.arange(past + T, device=x.device)[None, :]
        masks = {w: (((j <= i) & (j >= i - w))[None] & valid[:, None, :] | (i == j))[:, None]
                 for w in set(c.window_sizes)}
        x0, x_mid = x, None
        for layer, block in enumerate(self.transformer.h):
            if c.skip_lambdas:
                x = self.resid_lambdas[layer] * x + self.x0_lambdas[layer] * x0
            ve = self.value_embeds[str(layer)](input_ids) if str(layer) in self.value_embeds else None
            x = block(x, ve, cos, sin, masks[c.window_sizes[layer]], cache)
            if layer == c.num_hidden_layers // 2:
                x_mid = x
        if c.backout:
            x = x - self.backout_lambda * x_mid
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        logits = self.lm_head(norm(x)).float()
        logits = c.final_logit_softcapping * torch.tanh(logits / c.final_logit_softcapping)
        loss = None
        if labels is not None:  # transformers' convention: labels are the inputs, shifted here; -100 is ignored
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
        return CausalLMOutputWithPast(loss, logits, cache)  # by position: the cache field's name changed in v5

    def prepare_inputs_for_generation(self, input_ids, **kwargs):
        inputs = super().prepare_inputs_for_generation(input_ids, **kwargs)
        new = inputs["input_ids"].shape[1]
        if input_ids.shape[1] > new:
            inputs["previous_token"] = input_ids[:, -new - 1:-new]
        return inputs
