"""Export a model for Hugging Face `transformers`: `primechat export hf OUT [-i sft]`.

OUT then loads with `AutoModelForCausalLM.from_pretrained(OUT)` and `AutoTokenizer.from_pretrained(OUT)`. Where
transformers' own NanoChat architecture can express the model (nanochat's Oct 2025 design, e.g. an imported nanochat
model), it is written in that architecture and needs no remote code, so anything that reads the format runs it. What
NanoChat cannot express is nanochat's 2026 design, which every model primechat trains has: QK scale (its attention
scale is fixed at 1/sqrt(head_dim)), sliding windows, value embeddings, smear, backout and the per-layer resid/x0
lambdas. Those models are written with primechat's own model as remote code (modeling_primechat.py, torch and
transformers only): model and tokenizer load with `trust_remote_code=True` (AutoTokenizer reads the config too);
other runtimes (vLLM, llama.cpp, MLX) do not run them.

    config.json, generation_config.json   NanoChatConfig, or PrimechatConfig with auto_map for the remote code
    model.safetensors                     the weights (transformers' names for NanoChat, primechat's own otherwise),
                                          the padded vocab rows dropped
    modeling_primechat.py                 the remote code (only when NanoChat cannot express the model)
    tokenizer.json, tokenizer_config.json the same BPE as tokenizer.pkl (byte-level, same split regex, same merges)
    chat_template.jinja                   renders conversations into exactly the ids primechat's chat format gives
    primechat.json                        what `primechat pull` needs to install it back: config, stage, tag, step

The tokenizer converts tiktoken's merges into a `tokenizers` BPE model: each token's two halves are found by
re-running BPE on its bytes with the merges ranked before it. One difference remains: primechat never reads special
tokens out of text, while a Hugging Face tokenizer turns "<|bos|>" written in a message into the special id.
"""

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from primechat.common import UserError, atomic_path
from primechat.tokenizer import SPECIAL_TOKENS, SPLIT_PATTERN
from primechat.train.checkpoint import STAGE_DIRS, checkpoint_dir, default_tag, load_meta, resolve_step

REMOTE_CODE = Path(__file__).with_name("modeling_primechat.py")
EXPORT_FILES = {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
                "tokenizer_config.json", "chat_template.jinja", REMOTE_CODE.name, "primechat.json"}
RMS_EPS = torch.finfo(torch.float32).eps  # F.rms_norm's default for fp32, which primechat's norm uses

# Jinja rendering of Tokenizer._render: BOS; a system message folded into the first user turn; user and assistant
# turns alternating; assistant content as text or as text / python / python_output parts.
CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- set ns = namespace(system='', offset=0) -%}"
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] == 'system' -%}"
    "{%- set ns.system = message['content'] + '\\n\\n' -%}{%- set ns.offset = 1 -%}"
    "{%- else -%}"
    "{%- set expected = 'user' if (loop.index0 - ns.offset) % 2 == 0 else 'assistant' -%}"
    "{%- if message['role'] != expected -%}"
    "{{- raise_exception('message ' ~ loop.index0 ~ ' has role ' ~ message['role'] ~ ', expected ' ~ expected ~ "
    "': roles alternate user/assistant, starting with user (after an optional system)') -}}"
    "{%- endif -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{- '<|user_start|>' + ns.system + message['content'] + '<|user_end|>' -}}{%- set ns.system = '' -%}"
    "{%- else -%}"
    "{{- '<|assistant_start|>' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'text' -%}{{- part['text'] -}}"
    "{%- elif part['type'] == 'python' -%}{{- '<|python_start|>' + part['text'] + '<|python_end|>' -}}"
    "{%- elif part['type'] == 'python_output' -%}{{- '<|output_start|>' + part['text'] + '<|output_end|>' -}}"
    "{%- else -%}{{- raise_exception('unknown part type ' ~ part['type']) -}}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{- '<|assistant_end|>' -}}"
    "{%- endif -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant_start|>' -}}{%- endif -%}"
)


def unsupported_features(config) -> list[str]:
    """The model's features that transformers' NanoChat architecture cannot express (empty: it exports as NanoChat).
    NanoChat scales attention by 1/sqrt(head_dim) only and attends to the whole context in every layer."""
    features = []
    if config.qk_scale != 1.0:
        features.append(f"QK scale {config.qk_scale:g}")
    if any(w < config.sequence_len for w in config.window_sizes()):
        features.append(f"sliding-window attention ({config.window_pattern})")
    for switch, name in (("value_embeds", "value embeddings"), ("smear", "smear"), ("backout", "backout"),
                         ("skip_lambdas", "resid/x0 lambdas")):
        if getattr(config, switch):
            features.append(name)
    return features


def hf_config(config, tokenizer, dtype: str) -> dict:
    """config.json: transformers' NanoChatConfig where it can express the model, else PrimechatConfig (remote code)."""
    special = tokenizer.encode_special
    common = {"vocab_size": config.vocab_size, "hidden_size": config.n_embd, "num_hidden_layers": config.n_layer,
              "num_attention_heads": config.n_head, "num_key_value_heads": config.n_kv_head,
              "max_position_embeddings": config.sequence_len, "final_logit_softcapping": float(config.softcap),
              "tie_word_embeddings": False, "bos_token_id": special("<|bos|>"),
              "eos_token_id": special("<|assistant_end|>"), "pad_token_id": None, "use_cache": True, "dtype": dtype}
    if unsupported_features(config):
        return {
            "architectures": ["PrimechatForCausalLM"],
            "model_type": "primechat",
            "auto_map": {"AutoConfig": "modeling_primechat.PrimechatConfig",
                         "AutoModelForCausalLM": "modeling_primechat.PrimechatForCausalLM"},
            **common,
            "window_sizes": config.window_sizes(),
            "rope_theta": float(config.rope_base),
            "qk_scale": float(config.qk_scale),
            "value_embed_layers": [i for i in range(config.n_layer) if config.has_value_embed(i)],
            "smear": config.smear, "backout": config.backout, "skip_lambdas": config.skip_lambdas,
        }
    return {
        "architectures": ["NanoChatForCausalLM"],
        "model_type": "nanochat",
        **common,
        "intermediate_size": 4 * config.n_embd,
        "hidden_act": "relu2",
        "rms_norm_eps": RMS_EPS,
        "rope_parameters": {"rope_type": "default", "rope_theta": float(config.rope_base)},
        "attention_bias": False,
        "attention_dropout": 0.0,
    }


# primechat's weight names → transformers NanoChat's, for the ones a NanoChat model has
NANOCHAT_NAMES = {"attn.c_q": "self_attn.q_proj", "attn.c_k": "self_attn.k_proj", "attn.c_v": "self_attn.v_proj",
                  "attn.c_proj": "self_attn.o_proj", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}


def is_vocab_table(name: str) -> bool:
    """Whether a weight (primechat's name) has one row per token, so padding rows are dropped and restored."""
    return name in ("transformer.wte.weight", "lm_head.weight") or name.startswith("value_embeds.")


def hf_state(state: dict, config, dtype: torch.dtype) -> dict:
    """The weights to export, rows of the padded vocabulary dropped: under transformers' NanoChat names where it can
    express the model, else under primechat's own (which modeling_primechat.py uses)."""
    V = config.vocab_size
    out = {k: v[:V] if is_vocab_table(k) else v for k, v in state.items()}
    if not unsupported_features(config):
        out = {"model.embed_tokens.weight": out["transformer.wte.weight"], "lm_head.weight": out["lm_head.weight"],
               **{f"model.layers.{i}.{theirs}.weight": out[f"transformer.h.{i}.{ours}.weight"]
                  for i in range(config.n_layer) for ours, theirs in NANOCHAT_NAMES.items()}}
    return {k: v.detach().to("cpu", dtype).contiguous() for k, v in out.items()}


def primechat_state(tensors: dict, config) -> dict:
    """The inverse of hf_state: primechat's names (NanoChat's translated back), the vocab padded again (zeros)."""
    names = {theirs: ours for ours, theirs in NANOCHAT_NAMES.items()}
    state = {}
    for key, value in tensors.items():
        ours = key
        if key == "model.embed_tokens.weight":
            ours = "transformer.wte.weight"
        elif key.startswith("model.layers.") and key.endswith(".weight"):
            layer, _, module = key.removeprefix("model.layers.").removesuffix(".weight").partition(".")
            if module not in names:
                raise UserError(f"the weights hold {key}, which primechat's model has no place for")
            ours = f"transformer.h.{layer}.{names[module]}.weight"
        elif key.startswith("model."):
            raise UserError(f"the weights hold {key}, which primechat's model has no place for")
        value = value.float()
        if is_vocab_table(ours) and value.shape[0] < config.padded_vocab:
            value = torch.cat([value, value.new_zeros(config.padded_vocab - value.shape[0], value.shape[1])])
        state[ours] = value
    return state


# --------------------------------------------------------------------------------------------------------------------
# The tokenizer as tokenizers' JSON

def _byte_to_unicode() -> dict[int, str]:
    """Byte-level BPE's printable stand-in for each byte: printable Latin-1 bytes stand for themselves, the others
    (controls, space, …) take the code points from 256 upwards in byte order."""
    keep = [b for b in range(256) if 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255]
    table, extra = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _split_token(token: bytes, rank: int, ranks: dict[bytes, int]) -> list[bytes]:
    """BPE on a token's bytes using only merges ranked before it: for a learned token, the two parts merged into it."""
    parts = [token[i:i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best = None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < rank and (best is None or r < best[0]):
                best = (r, i)
        if best is None:
            break
        i = best[1]
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    return parts


def tokenizer_json(tokenizer) -> dict:
    specials = {tokenizer.encode_special(name): name for name in SPECIAL_TOKENS}
    ranks = {tokenizer.token_bytes(i): i for i in range(tokenizer.vocab_size) if i not in specials}
    if sorted(ranks.values()) != list(range(len(ranks))) or sorted(specials) != list(range(len(ranks), tokenizer.vocab_size)):
        raise UserError("the tokenizer's ids are not merges followed by the special tokens: it cannot be converted")
    u = _byte_to_unicode()
    text = {token: "".join(u[b] for b in token) for token in ranks}
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) > 1:
            parts = _split_token(token, rank, ranks)
            if len(parts) != 2:
                raise UserError(f"token {rank} ({token!r}) is not the merge of two earlier tokens: not a BPE vocabulary")
            merges.append([text[parts[0]], text[parts[1]]])
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [{"id": i, "content": name, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for i, name in sorted(specials.items())],
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": SPLIT_PATTERN}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        ]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": True,  # like tiktoken: a piece that is itself a token is taken whole
                  "vocab": {text[token]: rank for token, rank in ranks.items()}, "merges": merges},
    }


def tokenizer_from_json(path: Path):
    """primechat's Tokenizer from a tokenizer.json written by tokenizer_json (no pickle is read)."""
    from primechat.tokenizer import Tokenizer

    data = json.loads(Path(path).read_text())
    try:
        model, pre = data["model"], data["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"]
        specials = {t["content"]: t["id"] for t in data["added_tokens"] if t.get("special")}
    except (KeyError, IndexError, TypeError):
        raise UserError(f"{path} is not a byte-level BPE tokenizer primechat can use (written by primechat export)")
    if model.get("type") != "BPE" or pre != SPLIT_PATTERN:
        raise UserError(f"{path} splits text differently from primechat's tokenizer: it cannot be used here")
    back = {c: b for b, c in _byte_to_unicode().items()}
    ranks = {bytes(back[c] for c in token): rank for token, rank in model["vocab"].items()}
    expected = {name: len(ranks) + i for i, name in enumerate(SPECIAL_TOKENS)}
    if {name: specials.get(name) for name in SPECIAL_TOKENS} != expected:
        raise UserError(f"{path} does not have primechat's 9 special tokens right after its merges")
    return Tokenizer.from_ranks(ranks)


# --------------------------------------------------------------------------------------------------------------------

def _write_json(path: Path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def _staging_dir(out: Path) -> Path:
    """An empty folder to build the export in, so OUT never holds half an export: beside OUT, renamed onto it at
    the end; inside OUT when OUT is a folder of other things, whose files are then moved in one by one."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file: give a folder to write the model into")
    try:
        if out.is_dir() and not _replaceable(out):
            return Path(tempfile.mkdtemp(prefix=".primechat-export-", dir=out))
        out.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as e:
        raise UserError(f"cannot write the export to {out} ({e.strerror}): give a folder you can write to") from None


def _replaceable(out: Path) -> bool:
    """Empty, or an earlier export and nothing else: replaced as a whole."""
    return {p.name for p in out.iterdir()} <= EXPORT_FILES


def _move_into_place(staging: Path, out: Path) -> None:
    if not out.exists():
        staging.rename(out)
    elif staging.parent != out:  # an earlier export: swapped for the complete new one
        old = staging.with_name(staging.name + "-old")
        out.rename(old)
        staging.rename(out)
        shutil.rmtree(old)
    else:  # a folder of other things: the export's files join them, config.json last
        for name in EXPORT_FILES - {p.name for p in staging.iterdir()}:
            (out / name).unlink(missing_ok=True)  # e.g. modeling_primechat.py of an earlier 2026 model
        for f in sorted(staging.iterdir(), key=lambda f: f.name == "config.json"):
            os.replace(f, out / f.name)


def _write_export(out: Path, folder: Path, step: int, meta: dict, config, tokenizer, stage: str, tag: str,
                  dtype: str, torch_dtype) -> dict:
    """Every file of the export into the empty folder `out`; returns the tensors written."""
    from safetensors.torch import save_file

    from primechat.train.checkpoint import load_model_state

    tensors = hf_state(load_model_state(folder, step), config, torch_dtype)
    with atomic_path(out / "model.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    _write_json(out / "config.json", hf_config(config, tokenizer, dtype))
    special = tokenizer.encode_special
    _write_json(out / "generation_config.json", {"bos_token_id": special("<|bos|>"),
                                                 "eos_token_id": [special("<|assistant_end|>"), special("<|bos|>")]})
    _write_json(out / "tokenizer.json", tokenizer_json(tokenizer))
    _write_json(out / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|bos|>", "eos_token": "<|assistant_end|>",
        "pad_token": "<|bos|>", "model_max_length": config.sequence_len, "clean_up_tokenization_spaces": False,
        "add_bos_token": False, "add_eos_token": False,
    })
    with atomic_path(out / "chat_template.jinja") as tmp:
        tmp.write_text(CHAT_TEMPLATE)
    if unsupported_features(config):
        with atomic_path(out / REMOTE_CODE.name) as tmp:
            shutil.copyfile(REMOTE_CODE, tmp)
    kept = {k: meta[k] for k in ("val_bpb", "imported_from") if k in meta}
    if "path" in kept.get("imported_from", {}):  # the folder it came from, on this machine: its name is enough
        kept["imported_from"] = {**kept["imported_from"], "path": Path(kept["imported_from"]["path"]).name}
    _write_json(out / "primechat.json", {"format": "primechat", "stage": stage, "tag": tag, "step": step,
                                         "model_config": config.to_dict(), **kept})
    return tensors


def export_hf(out, stage: str = "sft", tag: str | None = None, step: int | None = None,
              dtype: str = "bfloat16") -> dict:
    """Write the transformers folder; returns {"out", "stage", "tag", "step", "config", "meta", "remote_code",
    "params"}: params counts the exported weights, which lack the padded vocab rows that primechat's model holds.
    OUT gets the whole export or is left as it was."""
    from primechat.model import GPTConfig
    from primechat.tokenizer import load_tokenizer

    tag = tag or default_tag(stage)
    folder = checkpoint_dir(stage, tag)
    step = resolve_step(folder, step)
    meta = load_meta(folder, step)
    config = GPTConfig(**meta["model_config"])
    tokenizer = load_tokenizer(folder if (folder / "tokenizer.pkl").exists() else None)
    if tokenizer.vocab_size != config.vocab_size:
        raise UserError(f"{stage} {tag} has a {config.vocab_size:,}-token vocabulary but its tokenizer has "
                        f"{tokenizer.vocab_size:,}: restore the tokenizer it was trained with")
    torch_dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}[dtype]
    out = Path(out).expanduser()
    staging = _staging_dir(out)
    try:
        tensors = _write_export(staging, folder, step, meta, config, tokenizer, stage, tag, dtype, torch_dtype)
        _move_into_place(staging, out)
    finally:  # interrupted or failed: OUT is as it was, and the half-built export goes
        shutil.rmtree(staging, ignore_errors=True)
    remote_code = bool(unsupported_features(config))
    return {"out": out, "stage": stage, "tag": tag, "step": step, "config": config, "meta": meta,
            "remote_code": remote_code, "params": sum(t.numel() for t in tensors.values())}


def add_arguments(p) -> None:
    p.add_argument("out", help="folder to write (created if missing; an earlier export there is replaced "
                                "only once the new one is complete)")
    add_model_arguments(p)


def add_model_arguments(p) -> None:
    """Which checkpoint to export, and in which dtype (shared with `primechat push`)."""
    p.add_argument("-i", "--source", choices=list(STAGE_DIRS), default="sft", help="which stage's model")
    p.add_argument("-g", "--model-tag", help="checkpoint tag (default: the stage's deepest d<N>)")
    p.add_argument("-s", "--step", type=int, help="checkpoint step (default: the latest)")
    p.add_argument("--dtype", choices=["bfloat16", "float32", "float16"], default="bfloat16",
                   help="dtype of the saved weights (primechat keeps fp32 master weights)")


def main(args) -> None:
    done = export_hf(args.out, args.source, args.model_tag, args.step, args.dtype)
    architecture = ("PrimechatForCausalLM as remote code (modeling_primechat.py)" if done["remote_code"]
                    else "transformers NanoChatForCausalLM")
    print(f"exported {done['stage']} {done['tag']} step {done['step']} to {done['out']} "
          f"({architecture}, {args.dtype} safetensors, chat template)")
    remote = ", trust_remote_code=True" if done["remote_code"] else ""
    print(f"load it: AutoModelForCausalLM.from_pretrained({str(done['out'])!r}{remote}) and "
          f"AutoTokenizer.from_pretrained(…{remote})")


if __name__ == "__main__":
    from primechat.cli import run_module
    run_module(add_arguments, main)
