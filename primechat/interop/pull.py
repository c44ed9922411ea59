"""Fetch a model from the Hugging Face Hub: `primechat pull me/my-chat-d20`, then `primechat chat -g my-chat-d20`.

Downloads the repo (huggingface_hub's snapshot_download: cached, resumable, HF_TOKEN/HF_ENDPOINT honoured) and installs
it as a primechat checkpoint, <home>/<stage>_checkpoints/<tag>/, so chat, serve, eval and training find it. The repo is
one `primechat push` wrote (its primechat.json gives the config, stage and step, whether the weights are in NanoChat's
layout or primechat's own with remote code), or any transformers NanoChat repo whose tokenizer.json is primechat's kind
of BPE (then the config comes from config.json and the stage is sft unless --stage says otherwise). Only safetensors
and JSON are read: nothing from the repo is unpickled or executed, its remote code included.
"""

import json
from pathlib import Path

from primechat.common import UserError
from primechat.interop import install_checkpoint
from primechat.interop.hf import primechat_state, tokenizer_from_json
from primechat.train.checkpoint import STAGE_DIRS

FILES = ["config.json", "primechat.json", "model.safetensors", "tokenizer.json", "README.md"]


def config_from_hf(cfg: dict):
    """primechat's GPTConfig for a transformers NanoChat config (the Oct 2025 architecture plus RoPE base, softcap)."""
    from primechat.model import GPTConfig

    if cfg.get("model_type") == "primechat":
        raise UserError("the repo holds a primechat model but not its primechat.json, which says how to install it: "
                        "push it again with `primechat push`")
    if cfg.get("model_type") != "nanochat":
        raise UserError(f"the repo's model is a {cfg.get('model_type')!r}, not a nanochat one: primechat cannot run it")
    d = cfg["hidden_size"]
    checks = {"hidden_act": (cfg.get("hidden_act", "relu2"), "relu2"),
              "intermediate_size": (cfg.get("intermediate_size"), 4 * d),
              "tie_word_embeddings": (cfg.get("tie_word_embeddings", False), False),
              "attention_bias": (cfg.get("attention_bias", False), False),
              "rope_type": ((cfg.get("rope_parameters") or {}).get("rope_type", "default"), "default")}
    wrong = [f"{k} {got!r} (primechat: {want!r})" for k, (got, want) in checks.items() if got != want]
    if wrong:
        raise UserError(f"the repo's NanoChat config differs from primechat's architecture: {', '.join(wrong)}")
    rope = cfg.get("rope_parameters") or {}
    return GPTConfig(sequence_len=cfg.get("max_position_embeddings", 2048), vocab_size=cfg["vocab_size"],
                     n_layer=cfg["num_hidden_layers"], n_head=cfg["num_attention_heads"],
                     n_kv_head=cfg.get("num_key_value_heads") or cfg["num_attention_heads"], n_embd=d,
                     window_pattern="F", rope_base=float(rope.get("rope_theta", cfg.get("rope_theta", 10_000.0))),
                     qk_scale=1.0, value_embeds=False, smear=False, backout=False, skip_lambdas=False,
                     softcap=float(cfg.get("final_logit_softcapping") or 1e9), vocab_pad_to=1)


def pull(repo_id: str, stage: str | None = None, tag: str | None = None, revision: str | None = None,
         force: bool = False) -> dict:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError
    from safetensors.torch import load_file

    from primechat.model import GPTConfig

    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise UserError(f"repo id {repo_id!r} must be OWNER/NAME")
    try:
        folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=FILES))
    except RepositoryNotFoundError:
        raise UserError(f"no model repo {repo_id} on the Hub (or it is private: set HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise UserError(f"{repo_id} has no revision {revision!r}") from None
    except HfHubHTTPError as e:
        raise UserError(f"downloading {repo_id} failed: {e}") from None
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        if not (folder / name).is_file():
            raise UserError(f"{repo_id} has no {name}: it is not a model primechat can install (push one with "
                            f"`primechat push`)")
    info = json.loads((folder / "primechat.json").read_text()) if (folder / "primechat.json").is_file() else {}
    if info:
        config = GPTConfig(**info["model_config"])
    else:
        config = config_from_hf(json.loads((folder / "config.json").read_text()))
    state = primechat_state(load_file(str(folder / "model.safetensors")), config)
    tokenizer = tokenizer_from_json(folder / "tokenizer.json")
    stage = stage or info.get("stage", "sft")
    tag = tag or repo_id.split("/")[-1]
    step = int(info.get("step", 0))
    source = {"format": "huggingface", "repo_id": repo_id, "revision": folder.name}
    if info.get("imported_from"):
        source["originally"] = info["imported_from"]
    kept = {"val_bpb": info["val_bpb"]} if "val_bpb" in info else {}
    out = install_checkpoint(config, state, tokenizer, stage, tag, step, {**kept, "imported_from": source}, force)
    return {"stage": stage, "tag": tag, "step": step, "folder": out, "revision": folder.name}


def add_arguments(p) -> None:
    p.add_argument("repo_id", help="Hub model repo, OWNER/NAME")
    p.add_argument("--stage", choices=list(STAGE_DIRS),
                   help="stage to file it under (default: the one it was pushed from, else sft)")
    p.add_argument("--tag", help="tag to file it under (default: the repo's name)")
    p.add_argument("--revision", help="branch, tag or commit (default: main)")
    p.add_argument("--force", action="store_true", help="replace checkpoints already filed under this stage and tag")


def main(args) -> None:
    done = pull(args.repo_id, args.stage, args.tag, args.revision, args.force)
    print(f"installed {args.repo_id} (revision {done['revision'][:10]}) as {done['stage']} {done['tag']} "
          f"step {done['step']} → {done['folder']}")
    print(f"talk to it: primechat chat -i {done['stage']} -g {done['tag']}   (or pick it in primechat serve)")


if __name__ == "__main__":
    from primechat.cli import run_module
    run_module(add_arguments, main)
