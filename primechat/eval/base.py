"""Base-model evaluation: `primechat eval base [--eval core,bpb,sample]`, on CPU, one GPU or under torchrun.

- core: the DCLM CORE score (primechat/eval/core.py), per-task accuracy and centered score printed, written to
  <home>/base_eval/<slug>.csv and to the report section "Base model evaluation".
- bpb: bits per byte on the train and val splits of the dataset the model was trained on, with the function training
  uses (primechat/eval/loss.py) and its validation packing, so with equal --split-tokens and --device-batch-size
  the val figure repeats training's last val bpb. Report section "Base model loss".
- sample: the 7 fixed prompts completed greedily (16 tokens) and 8 unconditioned samples at temperature 1.0.

The CORE bundle is downloaded on first use into <home>/eval_bundle/ from nanochat's public address
(https://karpathy-public.s3.us-west-2.amazonaws.com/eval_bundle.zip); point --bundle-url or the environment variable
PRIMECHAT_EVAL_BUNDLE_URL at another copy (a mirror, a file:// URL). If the bundle lacks some tasks' data, the rest
are evaluated and the score is labelled `CORE (partial, N/22 tasks)`; --strict makes that an error.

--hf-model PATH evaluates a Hugging Face transformers causal LM (a saved folder, or a Hub id) with its own tokenizer
through the same CORE code, so a primechat model can be put beside public ones (pip install 'primechat[hf]'). Its
report section is "HF model evaluation <name>", so the card's BASE column keeps the base model's CORE.
"""

import time
from pathlib import Path
from types import SimpleNamespace

import torch

from primechat import report
from primechat.common import UserError, compute_cleanup, compute_init, home_dir, is_master, print0
from primechat.data.loader import PretrainLoader
from primechat.data.shards import list_shards, pick_dataset
from primechat.eval import core
from primechat.eval.loss import evaluate_bpb
from primechat.train.base import SAMPLE_PROMPTS
from primechat.train.checkpoint import check_model_tag, default_tag, load_model
from primechat.train.loop import validation_batches

EVALS = ("core", "bpb", "sample")


def add_arguments(p):
    p.add_argument("--eval", default=None, help="comma-separated subset of core,bpb,sample (default: all three; "
                   "core with --hf-model)")
    p.add_argument("--max-per-task", type=int, default=-1, help="CORE examples per task (-1: all; at least 11, "
                   "since the 10-shot tasks draw their shots from the rest); a quick look, not a comparable score")
    p.add_argument("--model-tag", default=None, help="base checkpoint folder (default: the deepest d<N>)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    p.add_argument("--device-batch-size", type=int, default=32, help="rows per forward pass for bpb")
    p.add_argument("--split-tokens", type=int, default=40 * 524288, help="tokens per split for bpb")
    p.add_argument("--hf-model", default=None, metavar="PATH", help="evaluate this Hugging Face causal LM instead")
    p.add_argument("--bundle-url", default=None, help="where to download the CORE bundle from (default: "
                   "$PRIMECHAT_EVAL_BUNDLE_URL, else nanochat's public copy)")
    p.add_argument("--strict", action="store_true", help="fail if the CORE bundle lacks any task's data")
    p.add_argument("--device-type", default=None, help="cuda|cpu|mps (default: autodetect)")


def parse_evals(text: str | None, hf: bool) -> list[str]:
    if text is None:
        return ["core"] if hf else list(EVALS)
    chosen = [e.strip() for e in text.split(",") if e.strip()]
    unknown = [e for e in chosen if e not in EVALS]
    if unknown or not chosen:
        raise UserError(f"--eval {text!r}: choose from {','.join(EVALS)}")
    if hf and chosen != ["core"]:
        raise UserError("--hf-model supports only --eval core (bpb and samples need a primechat tokenizer and data)")
    return chosen


# --------------------------------------------------------------------------------------------------------------------
# The model under evaluation, as CORE sees it: logits of ids, encode texts, BOS id, longest input

def primechat_subject(model, tokenizer):
    # nanochat does not crop its own models; ours can run up to its RoPE tables (10× the training context)
    return SimpleNamespace(forward=model, encode=tokenizer.encode, bos=tokenizer.bos_id,
                           max_seq_len=model.cos.size(1), trained_context=model.config.sequence_len)


def hf_subject(path: str, device):
    """A transformers causal LM with its tokenizer. BOS is the tokenizer's bos token, else its eos token (GPT-2's
    <|endoftext|> is both), as nanochat's HF wrapper did; prompts are cropped to the model's position limit."""
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        raise UserError("--hf-model needs the transformers package: pip install 'primechat[hf]'") from None
    try:
        model = AutoModelForCausalLM.from_pretrained(path).to(device).eval()
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load a Hugging Face causal LM from {path}: {str(e).splitlines()[0]}") from None
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    if bos is None:
        raise UserError(f"the tokenizer of {path} has neither a BOS nor an EOS token to begin prompts with")
    return SimpleNamespace(forward=lambda ids: model(ids).logits, bos=bos,
                           encode=lambda texts: [tok.encode(t, add_special_tokens=False) for t in texts],
                           max_seq_len=getattr(model.config, "max_position_embeddings", None), trained_context=None)


# --------------------------------------------------------------------------------------------------------------------
# The three evaluations

def run_core(subject, device, args, slug: str, bundle: Path, title: str) -> core.CoreResult:
    result = core.evaluate_core(subject.forward, subject.encode, subject.bos, device, bundle, args.max_per_task,
                                subject.max_seq_len, args.strict, log=print0, trained_context=subject.trained_context)
    width = max([len(result.label)] + [len(r["task"]) for r in result.rows])
    lines = [f"{'Task':<{width}}  {'Accuracy':>8}  {'Centered':>8}  {'Time':>7}"]
    lines += [f"{r['task']:<{width}}  {r['accuracy']:>8.4f}  {r['centered']:>8.4f}  {r['seconds']:>6.1f}s"
              for r in result.rows]
    lines.append(f"{result.label:<{width}}  {'':>8}  {result.core:>8.4f}")
    print0("\n".join(lines))
    if result.missing:
        print0(f"missing tasks ({len(result.missing)}): {', '.join(result.missing)}")
    notes = result.context_notes(subject.trained_context, subject.max_seq_len)
    for note in notes.values():
        print0(f"note: {note}")
    if not is_master():
        return result
    csv_path = home_dir() / "base_eval" / f"{slug}.csv"
    core.write_csv(result, csv_path)
    print0(f"wrote {csv_path}")
    summary = {"model": slug, f"{result.label} metric": result.core, "max per task": args.max_per_task}
    if result.missing:
        summary["missing tasks"] = ", ".join(result.missing)
    summary.update(notes)
    report.log_section(title, summary, core.markdown_table(result))
    return result


def run_bpb(model, tokenizer, meta, device, args, rank: int, world: int) -> dict:
    """bpb on the first --split-tokens of the validation shard and of the first training shard, each packed like
    training's validation (one stream, rank r taking batches r, r+N, …), so the figures do not depend on the
    number of processes."""
    # eval base has no --dataset: bpb is measured on the data the model was trained on (imported models may not say)
    dataset = pick_dataset(meta.get("user_config", {}).get("dataset"), choose=None)
    train_paths, val_path = list_shards(dataset, choose=f"bpb needs the dataset the model was trained on, {dataset}; "
                                                        f"or leave bpb out with --eval core,sample")
    B, T = args.device_batch_size, model.config.sequence_len
    token_bytes = torch.tensor(tokenizer.token_byte_lengths(), dtype=torch.int64, device=device)
    bpb = {}
    for split, path in (("train", train_paths[0]), ("val", val_path)):
        t0 = time.time()
        batches = validation_batches(PretrainLoader(tokenizer, [path], B, T), args.split_tokens, rank, world)
        bpb[split] = evaluate_bpb(model, (tuple(t.to(device) for t in b) for b in batches), len(batches),
                                  token_bytes)
        print0(f"{split} bpb: {bpb[split]:.4f} ({len(batches) * world * B * T:,} tokens, {time.time() - t0:.1f}s)")
    return bpb


def run_samples(model, tokenizer) -> tuple[list[str], list[str]]:
    """Greedy completions of the fixed prompts, and unconditioned samples from BOS (cut at the next BOS)."""
    bos = tokenizer.bos_id
    prompted = []
    for prompt in SAMPLE_PROMPTS:
        ids = tokenizer.encode(prompt, prepend=bos)
        prompted.append(tokenizer.decode(ids[1:] + list(model.generate(ids, 16, temperature=0))))
    unconditioned = []
    for seed in range(8):
        tokens = []
        for t in model.generate([bos], 128, temperature=1.0, seed=seed):
            if t == bos:
                break
            tokens.append(t)
        unconditioned.append(tokenizer.decode(tokens))
    return prompted, unconditioned


def main(args):
    evals = parse_evals(args.eval, bool(args.hf_model))
    if not args.hf_model:
        check_model_tag("base", args.model_tag)
    # checks come before the minutes of loading a model
    bundle = core.bundle_for(args.bundle_url, args.max_per_task) if "core" in evals else None
    device, rank, world = compute_init(args.device_type)
    if args.hf_model:
        subject = hf_subject(args.hf_model, device)
        path = Path(args.hf_model)  # a local folder is named by its name, a Hub id by owner-name
        name = path.name if path.is_dir() else args.hf_model.strip("/").replace("/", "-")
        slug = "hf-" + name
        title = f"HF model evaluation {name}"  # not "Base model evaluation": an outside model is not the base stage
        model = tokenizer = meta = None
    else:
        model, tokenizer, meta = load_model("base", args.model_tag, args.step, device)
        tag = args.model_tag or default_tag("base")
        slug = f"base_{tag}_{meta['step']:06d}"
        title = "Base model evaluation"
        subject = primechat_subject(model, tokenizer)
    print0(f"evaluating {slug} on {device} ({world} process{'es' if world > 1 else ''}): {', '.join(evals)}")

    if "core" in evals:
        run_core(subject, device, args, slug, bundle, title)
    loss_section = {}
    if "bpb" in evals:
        bpb = run_bpb(model, tokenizer, meta, device, args, rank, world)
        loss_section.update({"model": slug, "split tokens": args.split_tokens, "train bpb": bpb["train"],
                             "val bpb": bpb["val"]})
    if "sample" in evals and rank == 0:
        prompted, unconditioned = run_samples(model, tokenizer)
        print0("greedy samples:\n" + "\n".join(f"  {s!r}" for s in prompted))
        print0("unconditioned samples (temperature 1.0):\n" + "\n".join(f"  {s!r}" for s in unconditioned))
        loss_section.update({f"sample {i}": s.replace("\n", " ") for i, s in enumerate(prompted)})
        loss_section.update({f"unconditioned {i}": s.replace("\n", " ") for i, s in enumerate(unconditioned)})
    if loss_section:
        report.log_section("Base model loss", loss_section)
    compute_cleanup()  # waits for every rank: rank 0 may still be sampling


if __name__ == "__main__":
    from primechat.cli import run_module
    run_module(add_arguments, main)
