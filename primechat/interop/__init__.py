"""Models in and out of primechat: nanochat checkpoints in, Hugging Face `transformers` folders and Hub repos out and in.

    nanochat.py   `primechat import nanochat DIR`   a nanochat checkpoint (Oct 2025 or 2026 layout) becomes a primechat one
    hf.py         `primechat export hf OUT`         a folder transformers loads (remote code for 2026 models)
    modeling_primechat.py                           that remote code: primechat's model for transformers, standalone
    push.py       `primechat push REPO_ID`          that folder plus a model card, uploaded to the Hub
    pull.py       `primechat pull REPO_ID`          a pushed model downloaded and installed as a primechat checkpoint

Whatever comes in is written in primechat's own checkpoint layout, with its tokenizer beside it, so chat, serve, eval
and further training use it like a model trained here. `install_checkpoint` below is that one way in.
"""

import shutil

import torch

from primechat.common import UserError
from primechat.train.checkpoint import STAGE_DIRS, checkpoint_dir, lock_for_writing, save_checkpoint, saved_steps


def check_state(config, state: dict, source: str) -> None:
    """Raise a UserError unless `state` has exactly the tensors, and shapes, that primechat's GPT(config) expects."""
    from primechat.model import GPT

    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in GPT(config).state_dict().items()}
    unknown = sorted(set(state) - set(expected))
    missing = sorted(set(expected) - set(state))
    if unknown:
        raise UserError(f"{source} has weights primechat's model does not know: {', '.join(unknown[:5])}"
                        f"{' …' if len(unknown) > 5 else ''} (a newer or modified architecture; nothing was imported)")
    if missing:
        raise UserError(f"{source} lacks the weights {', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}: "
                        f"the checkpoint is incomplete or its config does not match its weights")
    for name, shape in expected.items():
        if tuple(state[name].shape) != shape:
            raise UserError(f"{source}: {name} has shape {tuple(state[name].shape)} but the config "
                            f"implies {shape}; the config and the weights do not match")


def install_checkpoint(config, state: dict, tokenizer, stage: str, tag: str, step: int, meta_extra: dict,
                       force: bool = False, same_run=None):
    """Write a model as <home>/<stage>_checkpoints/<tag>/model_<step>.pt + meta_<step>.json, its tokenizer beside it.

    The folder must hold no checkpoint yet (force: it is emptied first), so the imported model is the one that
    `-i <stage> -g <tag>` finds; unless same_run(folder) says its checkpoints are other steps of this same run, which
    the step then joins (force replaces that step only). Returns the folder."""
    if stage not in STAGE_DIRS:
        raise UserError(f"stage {stage!r} is not one of {', '.join(STAGE_DIRS)}")
    if not tag or "/" in tag or tag in (".", ".."):
        raise UserError(f"bad tag {tag!r}: use a plain folder name such as d20")
    if tokenizer.vocab_size != config.vocab_size:
        raise UserError(f"the model has a {config.vocab_size:,}-token vocabulary but the tokenizer has "
                        f"{tokenizer.vocab_size:,}: give the tokenizer the model was trained with")
    check_state(config, state, "the checkpoint")
    folder = checkpoint_dir(stage, tag)
    lock = lock_for_writing(folder, rank=0, device="cpu")  # not while a training run (or another import) writes there
    try:
        steps = saved_steps(folder)  # read under the lock: another import may have written there since
        if steps and same_run is not None and same_run(folder):
            if step in steps:
                if not force:
                    raise UserError(f"{folder} already holds step {step} of this run: pass --force to replace "
                                    f"that step (the other steps stay)")
                (folder / f"meta_{step:06d}.json").unlink()  # not counted as saved while it is rewritten
        elif steps:
            if not force:
                raise UserError(f"{folder} already holds checkpoints (steps "
                                f"{', '.join(map(str, steps))}): choose another --tag, or pass --force "
                                f"to replace them")
            for path in folder.iterdir():  # all but the lock we hold
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.name != ".lock":
                    path.unlink()
        state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}  # fp32 master weights
        tokenizer.save(folder)
        save_checkpoint(folder, step, state, {"step": step, "model_config": config.to_dict(), **meta_extra})
    finally:
        lock.release()
    return folder
