"""Checkpoints: save, find and load them, crash-safe, in nanochat's layout.

<home>/<stage>_checkpoints/<tag>/ holds per step S (6 digits):
    model_S.pt             model state_dict (rank 0)
    optim_S_rank<r>.pt     each rank's optimizer shard (ZeRO-2 splits the state)
    loader_S_rank<r>.pt    each rank's data loader state (exact resume)
    meta_S.json            model config, user config, step, val bpb (and the step it was measured at), loop
                           state: written LAST
Every file is written to a temporary name and renamed, and meta is written only once every rank's files are on
disk, so a step counts as saved exactly when its meta file exists; a crash mid-save leaves the previous one intact.
A run resumed from an earlier step moves the steps after it into replaced_<S>_<time>/ (set_aside_later_steps):
they belong to the run being replaced, and subfolders are never read as steps. A training run holds <tag>/.lock
while it writes (lock_for_writing), so a second run into the same tag is refused rather than mixed in.
"""

import json
import re
import shutil
import time
from pathlib import Path

import torch
import torch.distributed as dist

from primechat.common import UserError, atomic_path, home_dir, print0

STAGE_DIRS = {"base": "base_checkpoints", "mid": "mid_checkpoints", "sft": "chatsft_checkpoints",
              "rl": "chatrl_checkpoints"}


TAG_PATTERN = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9_.\-]*")
STEP_FILE = re.compile(r"[a-z]+_(\d+)(_rank\d+)?\.[a-z]+")  # model_S.pt, optim_S_rank0.pt, meta_S.json, ...


def checkpoint_dir(stage: str, tag: str) -> Path:
    return home_dir() / STAGE_DIRS[stage] / tag


def check_tag(tag: str | None, flag: str = "--model-tag"):
    """A tag names one folder beside the others: `a/b` or `..` would write where listing and lookup never look."""
    if tag is not None and not TAG_PATTERN.fullmatch(tag):
        raise UserError(f"{flag} {tag!r} is not a plain name: use letters, digits, '-', '_' and '.' (not first), "
                        f"e.g. {flag} d20-long")


def check_model_tag(stage: str, tag: str | None) -> None:
    """A --model-tag without checkpoints, named with the tags that have some, before any model is loaded."""
    if tag is None:
        return
    check_tag(tag)
    root = home_dir() / STAGE_DIRS[stage]
    if not saved_steps(root / tag):
        tags = sorted(p.name for p in root.glob("*/") if saved_steps(p)) if root.exists() else []
        have = f"tags with checkpoints: {', '.join(tags)}" if tags else f"run `primechat train {stage}` first"
        raise UserError(f"--model-tag {tag}: no {stage} checkpoint in {root / tag} ({have})")


def _save(obj, path: Path):
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_checkpoint(folder: Path, step: int, model_state: dict, meta: dict, optimizer_state=None,
                    loader_state=None, rank: int = 0):
    if rank == 0:
        _save(model_state, folder / f"model_{step:06d}.pt")
    if optimizer_state is not None:
        _save(optimizer_state, folder / f"optim_{step:06d}_rank{rank}.pt")
    if loader_state is not None:
        _save(loader_state, folder / f"loader_{step:06d}_rank{rank}.pt")
    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # every rank's shards exist before meta marks the step complete
    if rank == 0:
        with atomic_path(folder / f"meta_{step:06d}.json") as tmp:
            tmp.write_text(json.dumps(meta, indent=2) + "\n")


def saved_steps(folder: Path) -> list[int]:
    """Steps whose checkpoint is complete (its meta file exists)."""
    return sorted(int(m.group(1)) for p in folder.glob("meta_*.json") if (m := re.fullmatch(r"meta_(\d+)\.json", p.name)))


def resolve_step(folder: Path, step: int | None) -> int:
    """The given step (checked) or the latest complete one."""
    steps = saved_steps(folder)
    if not steps:
        raise UserError(f"no checkpoint in {folder}: train this stage first (or pick another --model-tag)")
    if step is None or step < 0:
        return steps[-1]
    if step not in steps:
        raise UserError(f"no checkpoint at step {step} in {folder}; saved steps: {', '.join(map(str, steps))}")
    return step


def resume_point(folder: Path, resume: bool, resume_from_step: int, fresh_start: str, rank: int, device,
                 tag_flag: str = "--model-tag") -> int | None:
    """The saved step a training run continues from: --resume-from-step S, else the latest with --resume. None
    starts a new run, which must not write over an existing one (fresh_start says where it starts from). The run
    takes the folder's lock first, so what it sees here stays true while it runs."""
    _training_locks.append(lock_for_writing(folder, rank, device))
    steps = saved_steps(folder)
    if dist.is_available() and dist.is_initialized():  # all ranks must continue from one step, or none
        seen = [None] * dist.get_world_size()
        dist.all_gather_object(seen, steps)
        if any(other != steps for other in seen):
            raise UserError(f"the processes see different checkpoints in {folder}: a run on several nodes needs "
                            f"PRIMECHAT_HOME on a filesystem that every node shares")
    has_steps = bool(steps)
    if resume_from_step >= 0 or (resume and has_steps):
        return resolve_step(folder, resume_from_step if resume_from_step >= 0 else None)
    if resume:
        print0(f"--resume: no checkpoint in {folder} yet, starting {fresh_start}")
    elif has_steps:
        raise UserError(f"{folder} already holds checkpoints: pass --resume to continue it, or pick a new "
                        f"{tag_flag}")
    return None


_training_locks = []  # a training run holds its folder's lock until the process ends (however it ends: the OS frees it)


def lock_for_writing(folder: Path, rank: int, device):
    """One run at a time writes a checkpoint folder: rank 0 takes <folder>/.lock, then deletes the temporary files
    of saves that a killed run left half written (no run but this one writes here now). Every rank gets the same
    error when another run holds the lock. Returns the lock held (None on the other ranks)."""
    from filelock import FileLock, Timeout

    folder.mkdir(parents=True, exist_ok=True)
    free = torch.ones((), device=device)
    if rank == 0:
        lock = FileLock(folder / ".lock")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            free.zero_()
        else:
            for leftover in folder.glob(".*.tmp*"):  # atomic_path's temporary names
                leftover.unlink(missing_ok=True)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(free, op=dist.ReduceOp.MIN)
    if not free.item():
        raise UserError(f"another run is writing {folder}: wait for it to end (or stop it), or pick another tag")
    return lock if rank == 0 else None


def set_aside_later_steps(folder: Path, step: int, rank: int):
    """Resuming from `step` replaces the run that went on from it: its later steps move into a subfolder (kept, but
    no longer the latest that eval, the next stage, chat and export pick up). Meta goes first, so a crash midway
    leaves no later step counted as saved. Rank 0 moves; the others wait for it."""
    later = [s for s in saved_steps(folder) if s > step]  # complete steps: a crashed save's files are overwritten
    if later and rank == 0:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = folder / f"replaced_{step}_{stamp}"
        for n in range(2, 1000):  # two resumes within one second get their own folders
            if not target.exists():
                break
            target = folder / f"replaced_{step}_{stamp}-{n}"
        target.mkdir()
        files = [p for p in folder.iterdir() if (m := STEP_FILE.fullmatch(p.name)) and int(m.group(1)) in later]
        for p in sorted(files, key=lambda p: not p.name.startswith("meta_")):
            p.rename(target / p.name)
        if (folder / "metrics.jsonl").exists():  # the replaced run's log, before this run cuts it back
            shutil.copy2(folder / "metrics.jsonl", target / "metrics.jsonl")
        print0(f"step{'s' if len(later) > 1 else ''} {', '.join(map(str, later))} came from the run being replaced "
               f"(resuming from step {step}): moved to {target}")
    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # no rank reads or writes the folder before the move is done


# Flags that do not change what is trained, or have their own note on a resume (the horizon: loop.check_horizon):
# the folder's name, and when to save, evaluate, sample or log (evaluations are greedy or seeded and leave no trace in
# the weights, the optimizer or the data order).
BENIGN_ON_RESUME = {"resume", "resume_from_step", "num_iterations", "model_tag", "output_tag", "wandb", "run",
                    "save_every", "eval_every", "sample_every", "metrics_every", "core_metric_every", "bundle_url"}


# Flags that say how to resume, not what the run is: never taken from the saved run.
NOT_INHERITED = {"resume", "resume_from_step", "output_tag", "typed_flags"}


def inherit_saved_flags(args, folder: Path) -> None:
    """--resume / --resume-from-step with a --model-tag (or mid/SFT/RL's --output-tag) continue that run: every flag
    not typed takes the saved run's value (its meta's user_config; with --output-tag alone, the tag read too), so a
    run resumes without its flags typed again; typed ones win (and the "flags changed" note names them). Without a
    tag nothing is taken: the folder itself derives from the flags."""
    typed = getattr(args, "typed_flags", None)
    resuming = args.resume or args.resume_from_step >= 0
    if typed is None or not {"model_tag", "output_tag"}.intersection(typed) or not resuming:
        return
    steps = saved_steps(folder) if folder.exists() else []
    step = args.resume_from_step if args.resume_from_step >= 0 else (steps[-1] if steps else None)
    if step not in steps:
        return  # nothing to continue from: resume_point says so (or starts the run)
    meta = load_meta(folder, step)
    refuse_imported(meta, folder, step)  # before its flags (nanochat's, say) are taken, a bundle download among them
    saved = meta.get("user_config", {})
    if saved.get("output_tag") == folder.name and "output_tag" not in typed:  # its --model-tag named the source
        raise UserError(f"{folder} was written with --output-tag {folder.name}: resume it with --output-tag "
                        f"{folder.name} --resume")
    taken = []
    for key, value in saved.items():
        if hasattr(args, key) and key not in typed and key not in NOT_INHERITED and getattr(args, key) != value:
            setattr(args, key, value)
            taken.append(f"--{key.replace('_', '-')} {value}")
    if taken:
        print0(f"continuing {folder.name} with its flags from step {step} where not typed: {' '.join(taken)}")


def user_config(args) -> dict:
    """The flags as saved in meta (what a resume compares against and takes back)."""
    return {k: v for k, v in vars(args).items() if not callable(v) and k != "typed_flags"}


def changed_flags(saved: dict, current: dict) -> list[str]:
    """Flags given now with another value than the saved run's (None: not given, inherited)."""
    return [f"--{k.replace('_', '-')} {saved[k]} → {v}" for k, v in current.items()
            if k in saved and v is not None and saved[k] != v and k not in BENIGN_ON_RESUME]


def refuse_other_source(meta: dict, stage: str, tag: str, folder: Path, step: int) -> None:
    """A resumed mid/SFT/RL run continues from its own checkpoint, so a --source or --model-tag naming another model
    than the one it started from would only relabel it: refused."""
    saved = meta.get("source")
    if saved and (saved["stage"], saved["tag"]) != (stage, tag):
        raise UserError(f"{folder} step {step} was trained from {saved['stage']} {saved['tag']}, not {stage} {tag}: "
                        f"resume it with --source {saved['stage']} --model-tag {saved['tag']}")


def refuse_imported(meta: dict, folder: Path, step: int) -> None:
    if "imported_from" in meta:
        raise UserError(f"{folder} step {step} was imported (from {meta['imported_from'].get('format', 'elsewhere')}) "
                        f"without optimizer or data-loader state, so its training cannot be resumed: train the next "
                        f"stage from it, or train this one anew under another --model-tag")


def resume_training(folder: Path, step: int, model_config: dict, model, optimizer, rank: int, world: int, device,
                    user_config: dict | None = None) -> dict:
    """Load a saved step's model and this rank's optimizer shard into a run built for model_config; its meta.
    Flags that differ from the saved run's (user_config) are pointed out: the run no longer replays the original."""
    meta = load_meta(folder, step)
    refuse_imported(meta, folder, step)
    saved_world = meta.get("world_size", world)
    if saved_world != world:  # the optimizer state is split across the processes (ZeRO-2), one shard per rank
        how = "without torchrun" if saved_world == 1 else f"under torchrun with {saved_world} processes in all"
        raise UserError(f"step {step} in {folder} was saved by {saved_world} process(es), this run has {world}: "
                        f"resume it {how}")
    if meta["model_config"] != model_config:
        changed = [k for k, v in model_config.items() if meta["model_config"].get(k) != v]
        flags = changed_flags(meta.get("user_config", {}), user_config or {})  # the flags behind it, where known
        because = f": flags {', '.join(flags)}" if flags else ""
        raise UserError(f"checkpoint {folder} step {step} has another model config ({', '.join(changed)} differ"
                        f"{because}): use the settings it was trained with, or another --model-tag")
    model.load_state_dict(load_model_state(folder, step, device))
    optimizer.load_state_dict(load_rank_state(folder, step, "optim", rank, device))
    print0(f"resuming {folder} from step {step}")
    if changed := changed_flags(meta.get("user_config", {}), user_config or {}):
        print0(f"note: flags changed since step {step} was saved: {', '.join(changed)}; the run continues with the "
               f"new values, so it will differ from an uninterrupted run")
    return meta


def default_tag(stage: str) -> str:
    """The deepest d<N> tag of a stage, else the most recently written one (nanochat's rule)."""
    root = home_dir() / STAGE_DIRS[stage]
    tags = [p for p in root.glob("*/") if saved_steps(p)] if root.exists() else []
    if not tags:
        raise UserError(f"no {stage} checkpoints under {root}: run `primechat train {stage}` first")
    depth_tags = [(int(m.group(1)), p.name) for p in tags if (m := re.fullmatch(r"d(\d+)", p.name))]
    if depth_tags:
        return max(depth_tags)[1]
    return max(tags, key=lambda p: p.stat().st_mtime).name


def load_meta(folder: Path, step: int) -> dict:
    return json.loads((folder / f"meta_{step:06d}.json").read_text())


def load_rank_state(folder: Path, step: int, kind: str, rank: int, device="cpu"):
    path = folder / f"{kind}_{step:06d}_rank{rank}.pt"
    if not path.exists():
        raise UserError(f"{path.name} is missing in {folder}: the checkpoint was saved by fewer processes; "
                        f"resume with the same number of GPUs")
    return torch.load(path, map_location=device, weights_only=False)


def load_model_state(folder: Path, step: int, device="cpu") -> dict:
    state = torch.load(folder / f"model_{step:06d}.pt", map_location=device, weights_only=True)
    return {k.removeprefix("_orig_mod."): v for k, v in state.items()}  # saved from a torch.compile'd model


def load_model(stage: str, tag: str | None = None, step: int | None = None, device="cpu", train: bool = False):
    """(model, tokenizer, meta) of a saved checkpoint: the stage's deepest tag and latest step unless given. Ready
    for inference (weights in the compute dtype, eval mode), or with train=True for further training (fp32 master
    weights). The tokenizer is the one saved beside the checkpoint if any (imported models), else the home one."""
    from primechat.common import compute_dtype
    from primechat.model import GPT, GPTConfig
    from primechat.tokenizer import load_tokenizer

    tag = tag or default_tag(stage)
    folder = checkpoint_dir(stage, tag)
    step = resolve_step(folder, step)
    meta = load_meta(folder, step)
    if "imported_from" not in meta and "softcap" not in meta["model_config"]:
        # nanochat's meta names only the sizes (and the window pattern): the import tells its architecture apart
        raise UserError(f"{folder} holds a nanochat checkpoint, not a primechat one: bring it in with `primechat "
                        f"import nanochat {folder}` (PRIMECHAT_HOME cannot point at a nanochat home)")
    config = GPTConfig(**meta["model_config"])
    tokenizer = load_tokenizer(folder if (folder / "tokenizer.pkl").exists() else None)
    if tokenizer.vocab_size != config.vocab_size:
        raise UserError(f"{stage} {tag} step {step} was trained with a {config.vocab_size:,}-token vocabulary but the "
                        f"tokenizer has {tokenizer.vocab_size:,}: restore the tokenizer it was trained with")
    device = torch.device(device)
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device=device)
    model.init_weights()  # RoPE tables (not saved); the weights are overwritten below
    model.load_state_dict(load_model_state(folder, step, device))
    model.compute_dtype = compute_dtype(device.type)
    if train:
        return model, tokenizer, meta
    return model.prepare_for_inference(), tokenizer, meta
