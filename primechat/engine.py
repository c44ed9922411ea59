"""Inference: a KV cache, sampling, the calculator tool and UTF-8-safe streaming, for every stage that generates text
(chat CLI, chat eval, RL, the web server).

The Engine prefills the prompt once at batch 1, copies that cache into num_samples rows and then decodes all rows in
lockstep, one token per step. Each row runs a small state machine: it ends at <|assistant_end|> or <|bos|>, and a
<|python_start|>expr<|python_end|> call is answered by the calculator, whose result is forced back into the row as
<|output_start|>result<|output_end|> (mask 0: the model did not choose those tokens).

The calculator never runs `eval`: it parses the expression with `ast` and evaluates a whitelist of node types
(numbers, + - * /, unary signs, parentheses, and 'text'.count('x')); anything else gives None.
"""

import ast
import codecs
import operator
from collections import deque

import torch
import torch.nn.functional as F


class KVCache:
    """Keys and values of every layer for `batch` rows, preallocated and grown on demand, plus the last token's
    embedding (smear mixes it into the next token). All rows share one position: they decode in lockstep."""

    def __init__(self, config, batch: int, length: int, dtype: torch.dtype, device):
        self.config = config
        shape = (config.n_layer, batch, length, config.n_kv_head, config.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.pos = 0  # tokens held; the model advances it after its last layer
        self.prev_embed = None  # (batch, 1, n_embd)

    def insert(self, layer: int, k, v):
        """Store the new keys and values at pos.., return everything cached for this layer up to them."""
        end = self.pos + k.size(1)
        if end > self.k.size(2):
            self._grow(end)
        self.k[layer, :, self.pos:end] = k
        self.v[layer, :, self.pos:end] = v
        return self.k[layer, :, :end], self.v[layer, :, :end]

    def _grow(self, needed: int):
        # generous steps, so that an unbounded generation reallocates a handful of times, not every token
        length = max(needed, 2 * self.k.size(2))
        pad = (0, 0, 0, 0, 0, length - self.k.size(2))
        self.k, self.v = F.pad(self.k, pad), F.pad(self.v, pad)

    def expand(self, batch: int, length: int) -> "KVCache":
        """A new cache of `batch` rows and room for `length` tokens, each row a copy of this (batch 1) cache."""
        new = KVCache(self.config, batch, max(length, self.pos), self.k.dtype, self.k.device)
        new.k[:, :, :self.pos] = self.k[:, :, :self.pos]
        new.v[:, :, :self.pos] = self.v[:, :, :self.pos]
        new.pos = self.pos
        new.prev_embed = None if self.prev_embed is None else self.prev_embed.expand(batch, -1, -1).clone()
        return new


def sample_next_token(logits, rng: torch.Generator, temperature: float = 1.0, top_k: int | None = None,
                      top_p: float | None = None):
    """One token id per row of logits (B, V): argmax at temperature 0, else a draw from the tempered distribution
    cut to its top_k tokens (0/None: all) and to the smallest set holding top_p of the probability (None: all)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -float("inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = F.softmax(sorted_logits, dim=-1)
        outside = probs.cumsum(dim=-1) - probs > top_p  # the mass before a token already reaches top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(outside, -float("inf")))
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=rng).squeeze(-1)


# --------------------------------------------------------------------------------------------------------------------
# The calculator tool

_ARITHMETIC = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
_SIGNS = {ast.UAdd: operator.pos, ast.USub: operator.neg}
MAX_EXPRESSION_CHARS = 1000  # a tool call longer than this is not arithmetic a chat model should be doing


def _arithmetic(node):
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):  # not bool, str or complex
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _ARITHMETIC:
        return _ARITHMETIC[type(node.op)](_arithmetic(node.left), _arithmetic(node.right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _SIGNS:
        return _SIGNS[type(node.op)](_arithmetic(node.operand))
    raise ValueError(f"not allowed: {ast.dump(node)}")


def _count(node):
    """'text'.count('x') with literal strings and nothing else; None if node is not that."""
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "count"
            and isinstance(node.func.value, ast.Constant) and isinstance(node.func.value.value, str)
            and len(node.args) == 1 and not node.keywords
            and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
        return node.func.value.value.count(node.args[0].value)
    return None


def calculator(expression: str):
    """The value of an arithmetic expression (commas in numbers allowed) or of 'text'.count('x'); None otherwise."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        return None
    try:
        count = _count(ast.parse(expression.strip(), mode="eval").body)
        if count is not None:
            return count
    except (SyntaxError, ValueError, RecursionError):  # ValueError: e.g. a NUL byte in the text
        pass
    try:  # commas are thousands separators here ("1,234 * 5"); removing them first also keeps tuples out
        return _arithmetic(ast.parse(expression.replace(",", "").strip(), mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError, RecursionError):
        return None


def tool_output(value) -> str:
    """How a tool result is written back: whole numbers without a trailing .0 ("48/2" gives "24"), the way GSM8K's
    <<48/2=24>> annotations, which the model is trained on, write them."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


# --------------------------------------------------------------------------------------------------------------------
# Streaming text

class StreamDecoder:
    """Turns token ids into text as they arrive without ever splitting a UTF-8 character: bytes of an unfinished
    character are held back until the token that completes it. Special tokens print as given in `specials`
    (id -> text), default nothing."""

    def __init__(self, tokenizer, specials: dict[int, str] | None = None):
        self.tokenizer = tokenizer
        self.specials = specials or {}
        self.special_ids = set(tokenizer.encode_special(name) for name in tokenizer.get_special_tokens())
        self.utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        if token_id in self.special_ids:
            return self.utf8.decode(b"", final=True) + self.specials.get(token_id, "")
        return self.utf8.decode(self.tokenizer.token_bytes(token_id))

    def flush(self) -> str:
        """What is still held back (an unfinished character shows as U+FFFD); the decoder starts afresh."""
        return self.utf8.decode(b"", final=True)


def tool_call_specials(tokenizer) -> dict[int, str]:
    """StreamDecoder's specials that show a tool call and its result as «expression = result», for people reading
    a reply (`primechat chat`, the web server); the other special tokens print nothing."""
    special = tokenizer.encode_special
    return {special("<|python_start|>"): "«", special("<|python_end|>"): " = ", special("<|output_end|>"): "»"}


# --------------------------------------------------------------------------------------------------------------------
# The Engine

class _Row:
    """Per-row generation state: done, forced tokens waiting to be emitted, the tool expression being written."""

    def __init__(self):
        self.done = False
        self.forced = deque()
        self.expression = None  # token ids between <|python_start|> and <|python_end|>, None outside a call


class Engine:
    def __init__(self, model, tokenizer):
        self.model = model
        self.tokenizer = tokenizer
        special = tokenizer.encode_special
        self.ends = {special("<|assistant_end|>"), tokenizer.bos_id}
        self.python_start, self.python_end = special("<|python_start|>"), special("<|python_end|>")
        self.output_start, self.output_end = special("<|output_start|>"), special("<|output_end|>")

    @property
    def context(self) -> int:
        """The most tokens one sequence, prompt and reply together, can hold: the length of the RoPE tables."""
        return self.model.cos.size(1)

    def _step_row(self, row: _Row, token: int) -> None:
        if token in self.ends:
            row.done = True
        elif token == self.python_start:
            row.expression = []
        elif token == self.python_end and row.expression is not None:
            result = calculator(self.tokenizer.decode(row.expression))
            row.expression = None
            if result is not None:
                row.forced.extend([self.output_start, *self.tokenizer.encode(tool_output(result)), self.output_end])
        elif row.expression is not None:
            row.expression.append(token)

    @torch.inference_mode()
    def generate(self, tokens: list[int], num_samples: int = 1, max_tokens: int | None = None,
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None, seed: int = 42,
                 frequency_penalty: float = 0.0, presence_penalty: float = 0.0):
        """Yield (token_column, token_masks) per step: one token per row, mask 1 where sampled and 0 where forced.
        Stops when every row has ended or after max_tokens steps (None: up to the end of the RoPE tables).
        The penalties are OpenAI's: a token's logit is lowered by frequency_penalty per time the row has already
        written it, and by presence_penalty once it has written it at all (the prompt does not count).

        A prompt that leaves no room (len(tokens) >= self.context) yields nothing rather than raising, so that one
        overlong RL prompt scores an empty rollout instead of stopping the training run. Callers that must tell
        someone check the length first, as the server and `primechat chat` do. Closing the generator part-way
        (a client gone, Ctrl-C) leaves the engine ready for the next call: every call has its own cache."""
        model = self.model
        device = model.lm_head.weight.device
        dtype = model.activation_dtype(device)
        room = self.context - len(tokens)
        max_tokens = room if max_tokens is None else min(max_tokens, room)
        if max_tokens <= 0:
            return
        rng = torch.Generator(device=device).manual_seed(seed)

        prefill = KVCache(model.config, 1, len(tokens), dtype, device)
        logits = model(torch.tensor([tokens], dtype=torch.long, device=device), kv_cache=prefill, at=-1)[:, -1, :]
        # max_tokens can be a whole RoPE table: start the decode cache smaller and let it grow if a reply runs long
        cache = prefill.expand(num_samples, len(tokens) + min(max_tokens, 1024))
        logits = logits.expand(num_samples, -1)  # every row samples its own first token
        rows = [_Row() for _ in range(num_samples)]
        penalised = frequency_penalty != 0 or presence_penalty != 0
        written = torch.zeros(num_samples, logits.size(-1), device=device) if penalised else None
        for step in range(max_tokens):
            if penalised:
                logits = logits - frequency_penalty * written - presence_penalty * (written > 0)
            ids = sample_next_token(logits, rng, temperature, top_k, top_p)
            sampled = ids.tolist()  # the one host sync per step
            column, masks = [], []
            for row, token in zip(rows, sampled):
                forced = bool(row.forced)
                if forced:
                    token = row.forced.popleft()
                column.append(token)
                masks.append(0 if forced else 1)
                if not row.done:
                    self._step_row(row, token)
            yield column, masks
            if all(row.done for row in rows) or step + 1 == max_tokens:
                return
            if column != sampled:  # a forced token replaced a sample: feed what was emitted
                ids = torch.tensor(column, dtype=torch.long, device=device)
            if penalised:
                written[torch.arange(num_samples, device=device), ids] += 1
            logits = model(ids[:, None], kv_cache=cache)[:, -1, :]

    def generate_batch(self, tokens: list[int], num_samples: int = 1, **kwargs):
        """(results, masks): per row the prompt plus its generated tokens, without the terminal token, and masks
        (0 for the prompt and forced tokens, 1 for sampled ones)."""
        results = [list(tokens) for _ in range(num_samples)]
        masks = [[0] * len(tokens) for _ in range(num_samples)]
        done = [False] * num_samples
        for column, column_masks in self.generate(tokens, num_samples, **kwargs):
            for i, (token, mask) in enumerate(zip(column, column_masks)):
                if done[i]:
                    continue
                if token in self.ends:
                    done[i] = True
                else:
                    results[i].append(token)
                    masks[i].append(mask)
            if all(done):
                break
        return results, masks
