"""Import a nanochat checkpoint: `primechat import nanochat ~/.cache/nanochat/chatsft_checkpoints/d20`.

A nanochat checkpoint folder holds model_<step>.pt (a state_dict) and meta_<step>.json (its "model_config" has only
the sizes: sequence_len, vocab_size, n_layer, n_head, n_kv_head, n_embd, and from 2026 on window_pattern); the
tokenizer (tokenizer.pkl, token_bytes.pt) lives in the nanochat base dir's tokenizer/ folder. The weights' names are
primechat's names (primechat's GPT follows nanochat's), so importing is: read, strip torch.compile's `_orig_mod.`
prefix, work out the architecture switches, check every shape, write a primechat checkpoint with the tokenizer beside
it. Chat, serve, eval and further training then use it like a model trained here. Steps of one nanochat run share a
tag as they share nanochat's folder: `--step S` adds one beside those imported before, `--all-steps` brings them all.

Two layouts are recognised from the weights themselves:
- Oct 2025: no per-layer lambdas, no value embeddings, no smear or backout; full attention at any length (window
  pattern F), RoPE base 10,000, QK-norm without scale, logits softcapped at 15, untied head, vocab not padded.
- 2026: resid/x0 lambdas, value embeddings, smear, backout (each switched on if its weights are present), the
  meta's window_pattern (SSSL if absent), RoPE base 100,000, QK-norm ×1.2, softcap 15, vocab padded to ×64.
Checkpoints from between those (nanochat changed RoPE base and QK scale along the way) can set --rope-base and
--qk-scale by hand; the weights cannot tell them.
"""

import dataclasses
import json
import re
from pathlib import Path

import torch

from primechat.common import UserError, home_dir
from primechat.interop import install_checkpoint
from primechat.train.checkpoint import STAGE_DIRS, checkpoint_dir, load_meta, saved_steps

SIZE_FIELDS = ("sequence_len", "vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd")
KNOWN_FIELDS = set(SIZE_FIELDS) | {"window_pattern"}
FOLDER_STAGES = {folder: stage for stage, folder in STAGE_DIRS.items()}  # chatsft_checkpoints -> sft, …


def model_steps(folder: Path) -> list[int]:
    return sorted(int(m.group(1)) for p in folder.glob("model_*.pt") if (m := re.fullmatch(r"model_(\d+)\.pt", p.name)))


def read_checkpoint(folder: Path, step: int | None = None) -> tuple[dict, dict, int]:
    """(state_dict, meta, step) of a nanochat checkpoint folder; the latest step unless given."""
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder: give a nanochat checkpoint folder such as "
                        f"~/.cache/nanochat/chatsft_checkpoints/d20")
    steps = model_steps(folder)
    if not steps:  # often nanochat's base dir or a stage folder: name the checkpoint folders below it
        below = sorted({p.parent.relative_to(folder).as_posix() for pattern in ("*/model_*.pt", "*/*/model_*.pt")
                        for p in folder.glob(pattern)})
        hint = f", but in {', '.join(below)} below it: give one of them" if below else \
            ": give the folder that holds nanochat's model and meta files"
        raise UserError(f"no model_<step>.pt in {folder}{hint}")
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise UserError(f"no model_{step:06d}.pt in {folder}; its steps: {', '.join(map(str, steps))}")
    meta_path = folder / f"meta_{step:06d}.json"
    if not meta_path.is_file():
        raise UserError(f"{meta_path.name} is missing beside model_{step:06d}.pt: nanochat writes both; copy the "
                        f"meta file too (it holds the model's sizes)")
    meta = json.loads(meta_path.read_text())
    state = torch.load(folder / f"model_{step:06d}.pt", map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise UserError(f"model_{step:06d}.pt holds a {type(state).__name__}, not a state_dict")
    state = {k.removeprefix("_orig_mod."): v for k, v in state.items()}
    for buffer in ("cos", "sin"):  # RoPE tables: recomputed, never loaded
        state.pop(buffer, None)
    return state, meta, step


def detect_layout(state: dict, model_config: dict) -> str:
    markers = ("resid_lambdas", "x0_lambdas", "smear_lambda", "backout_lambda")
    if any(k in state for k in markers) or any(k.startswith("value_embeds.") for k in state) \
            or "window_pattern" in model_config:
        return "2026"
    return "oct2025"


def convert_config(state: dict, model_config: dict, layout: str | None = None, rope_base: float | None = None,
                   qk_scale: float | None = None):
    """primechat's GPTConfig for a nanochat checkpoint: sizes from its meta, switches from its weights and layout."""
    from primechat.model import LAYOUTS, GPTConfig

    missing = [f for f in SIZE_FIELDS if f not in model_config]
    if missing:
        raise UserError(f"the meta file's model_config lacks {', '.join(missing)}: not a nanochat checkpoint")
    unknown = sorted(set(model_config) - KNOWN_FIELDS)
    if unknown and set(unknown) <= {f.name for f in dataclasses.fields(GPTConfig)}:  # primechat's own meta
        raise UserError(f"this is a primechat checkpoint, which chat and serve use as it is: copy its folder into "
                        f"{home_dir()}/<stage>_checkpoints/ (with the tokenizer.pkl it was trained with), or point "
                        f"PRIMECHAT_HOME at the home it is in; nothing was imported")
    if unknown:
        raise UserError(f"the meta file's model_config has fields primechat does not know ({', '.join(unknown)}): "
                        f"a newer nanochat; nothing was imported")
    layout = layout or detect_layout(state, model_config)
    fields = {f: model_config[f] for f in SIZE_FIELDS}
    if "transformer.wte.weight" not in state:
        raise UserError("the checkpoint has no transformer.wte.weight: not a nanochat model state_dict")
    rows, vocab = state["transformer.wte.weight"].shape[0], fields["vocab_size"]
    if rows == vocab:
        pad_to = 1
    elif rows == -(-vocab // 64) * 64:
        pad_to = 64
    else:
        raise UserError(f"the embedding has {rows} rows for a vocabulary of {vocab}: the meta file does not "
                        f"belong to these weights")
    switches = dict(LAYOUTS[layout])
    if rope_base is not None:
        switches["rope_base"] = rope_base
    if qk_scale is not None:
        switches["qk_scale"] = qk_scale
    return GPTConfig(
        **fields, **switches, vocab_pad_to=pad_to,
        window_pattern=model_config.get("window_pattern", "SSSL") if layout == "2026" else "F",
        value_embeds=any(k.startswith("value_embeds.") for k in state),
        smear="smear_lambda" in state, backout="backout_lambda" in state, skip_lambdas="resid_lambdas" in state,
    ), layout


def find_tokenizer(folder: Path, explicit: str | None) -> Path:
    """The tokenizer folder: --tokenizer, else one beside the checkpoint, else nanochat's base dir tokenizer/."""
    if explicit:
        path = Path(explicit).expanduser()
        if not (path / "tokenizer.pkl").is_file() and not (path.suffix == ".pkl" and path.is_file()):
            raise UserError(f"no tokenizer.pkl in {path}: give the folder holding nanochat's tokenizer.pkl")
        return path
    candidates = [folder, folder.parent.parent / "tokenizer"]
    for path in candidates:
        if (path / "tokenizer.pkl").is_file():
            return path
    raise UserError(f"no tokenizer.pkl in {candidates[0]} or {candidates[1]}: pass --tokenizer with the folder that "
                    f"holds the tokenizer this model was trained with (nanochat's <base dir>/tokenizer)")


def training_settings(meta: dict) -> dict:
    """nanochat's training settings in the form of primechat's meta, so that mid/SFT from the import inherit its batch
    sizes and learning rates as from a model trained here (nanochat's chat_sft does the same, B7): its flags as
    user_config, and the batch sizes at the top level too. The sizes base_train wrote beside its flags win over them:
    a flag may be None (2026 chat_sft: "inherit") or -1 (2026 base_train's total batch: "from depth")."""
    flags = {k: v for k, v in meta.get("user_config", {}).items() if v is not None}
    sizes = {k: v for k in ("device_batch_size", "max_seq_len", "total_batch_size")
             if isinstance(v := meta.get(k, flags.get(k)), int) and v > 0}
    return {**sizes, "user_config": {**flags, **sizes}} if flags or sizes else {}


def guess_stage(folder: Path, meta: dict, layout: str) -> tuple[str, str | None]:
    """The stage to file a checkpoint under, and how it was told when not by its parent folder (base_checkpoints →
    base, …): by the fields each nanochat stage writes in its meta (A1), else sft."""
    if folder.parent.name in FOLDER_STAGES:
        return FOLDER_STAGES[folder.parent.name], None
    if {"val_loss", "mmlu_acc", "arc_easy_acc"} & meta.keys():
        return "sft", "from its meta (chat_sft's accuracies)"
    if {"device_batch_size", "max_seq_len", "total_batch_size"} & meta.keys():
        return "base", "from its meta (base_train's batch sizes)"
    if "user_config" in meta:  # mid_train's flags; from 2026 on chat_sft's, which replaced mid training
        return ("mid", "from its meta (mid_train's flags)") if layout == "oct2025" else \
            ("sft", "from its meta (chat_sft's flags)")
    if set(meta) <= {"step", "model_config"}:
        return "rl", "from its meta (chat_rl's: the model's sizes alone)"
    return "sft", "by default (its meta does not tell either)"


def holds_this_run(out: Path, source: Path, config) -> bool:
    """Whether a tag's folder holds only imports of this nanochat run: every step from the same source folder, as
    the same model (sizes, layout and overrides). Then another step of the run may join them, as in nanochat's own
    folder; anything else in the tag (a model trained here, another import) must not be mixed with it."""
    metas = [load_meta(out, s) for s in saved_steps(out)]
    return bool(metas) and all(m.get("imported_from", {}).get("format") == "nanochat"
                               and m["imported_from"].get("path") == str(source)
                               and m.get("model_config") == config.to_dict() for m in metas)


def import_nanochat(folder, stage: str | None = None, tag: str | None = None, step: int | None = None,
                    tokenizer_dir: str | None = None, rope_base: float | None = None, qk_scale: float | None = None,
                    force: bool = False) -> dict:
    """Import one nanochat checkpoint; returns what was done (stage, tag, step, layout, folder)."""
    from primechat.tokenizer import load_tokenizer

    folder = Path(folder).expanduser().resolve()
    state, meta, step = read_checkpoint(folder, step)
    config, layout = convert_config(state, meta.get("model_config") or {}, rope_base=rope_base, qk_scale=qk_scale)
    tokenizer_path = find_tokenizer(folder, tokenizer_dir)
    tokenizer = load_tokenizer(tokenizer_path)
    if tokenizer.vocab_size != config.vocab_size:
        raise UserError(f"the tokenizer at {tokenizer_path} has {tokenizer.vocab_size:,} tokens but the model was "
                        f"trained with {config.vocab_size:,}: pass --tokenizer with the one it was trained with")
    guessed = None
    if stage is None:
        stage, guessed = guess_stage(folder, meta, layout)
    tag = tag or folder.name
    kept = {k: meta[k] for k in ("val_bpb", "val_loss", "mmlu_acc", "arc_easy_acc") if k in meta}
    imported_from = {"format": "nanochat", "layout": layout, "path": str(folder), "step": step,
                     "model_config": meta["model_config"]}
    extra = {**kept, **training_settings(meta), "imported_from": imported_from}
    out = install_checkpoint(config, state, tokenizer, stage, tag, step, extra, force=force,
                             same_run=lambda out: holds_this_run(out, folder, config))
    return {"stage": stage, "tag": tag, "step": step, "layout": layout, "folder": out, "config": config,
            "guessed": guessed}


def add_arguments(p) -> None:
    p.add_argument("dir", help="nanochat checkpoint folder (holds model_<step>.pt and meta_<step>.json)")
    p.add_argument("--stage", choices=list(STAGE_DIRS),
                   help="stage to file it under (default: from the folder's parent, base_checkpoints → base, "
                        "mid_checkpoints → mid, chatsft_checkpoints → sft, chatrl_checkpoints → rl; else from the "
                        "fields of its meta file, or sft)")
    p.add_argument("--tag", help="tag to file it under (default: the folder's name, e.g. d20)")
    p.add_argument("--step", type=int, help="step to import (default: the latest); added to a tag that holds other "
                                            "steps of the same run")
    p.add_argument("--all-steps", action="store_true", help="import every step in DIR into the one tag")
    p.add_argument("--tokenizer", help="folder with the model's tokenizer.pkl (default: beside the checkpoint, else "
                                       "the nanochat base dir's tokenizer/, i.e. DIR/../../tokenizer)")
    p.add_argument("--rope-base", type=float, help="override the layout's RoPE base (Oct 2025: 10000, 2026: 100000)")
    p.add_argument("--qk-scale", type=float, help="override the layout's QK scale (Oct 2025: 1.0, 2026: 1.2)")
    p.add_argument("--force", action="store_true",
                   help="replace what this stage and tag hold: the same step of the same run, else all of it")


def imported_steps(source: Path, stage: str | None, tag: str) -> list[int]:
    """The steps of this nanochat run already imported under the tag (in the given stage, or any), so that a rerun of
    an interrupted --all-steps goes on where it stopped."""
    found = []
    for name in [stage] if stage else STAGE_DIRS:
        folder = checkpoint_dir(name, tag)
        for step in saved_steps(folder):
            imported = load_meta(folder, step).get("imported_from", {})
            if imported.get("format") == "nanochat" and imported.get("path") == str(source):
                found.append(imported["step"])
    return found


def main(args) -> None:
    if args.all_steps and args.step is not None:
        raise UserError("give --step or --all-steps, not both")
    source = Path(args.dir).expanduser().resolve()
    steps = (model_steps(source) if args.all_steps else []) or [args.step]
    if args.all_steps and not args.force:
        present = imported_steps(source, args.stage, args.tag or source.name)
        if kept := [step for step in steps if step in present]:
            print(f"already imported, kept: step {', '.join(map(str, kept))} (--force imports them again)")
            steps = [step for step in steps if step not in present]
            if not steps:
                return
    for step in steps:
        done = import_nanochat(source, args.stage, args.tag, step, args.tokenizer, args.rope_base, args.qk_scale,
                               args.force)
        c = done["config"]
        print(f"imported nanochat {done['layout']} checkpoint step {done['step']} ({c.n_layer} layers, width "
              f"{c.n_embd}, vocab {c.vocab_size:,}) as {done['stage']} {done['tag']} → {done['folder']}")
    if done["guessed"]:  # not filed by a folder of nanochat's layout: say so, a wrong stage misleads chat and serve
        print(f"filed as {done['stage']} {done['guessed']}: its parent folder is not one of nanochat's "
              f"({', '.join(FOLDER_STAGES)}); --stage changes it")
    print(f"talk to it: primechat chat -i {done['stage']} -g {done['tag']}"
          + (f" (-s STEP for another of its steps: {', '.join(map(str, saved_steps(done['folder'])))})"
             if len(saved_steps(done["folder"])) > 1 else ""))


if __name__ == "__main__":
    from primechat.cli import run_module
    run_module(add_arguments, main)
