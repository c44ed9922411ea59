"""Publish a model on the Hugging Face Hub: `primechat push me/my-chat-d20 [-i sft]`.

Exports the model as `primechat export hf` does (a folder transformers loads, with remote code for what its NanoChat
architecture cannot express), writes a model card README.md (architecture, how to use it from transformers and from
primechat, and the sections of the report card in <home>/report/ about this model and the checkpoints it grew from,
when it was trained in this home), creates the repo if needed and uploads it all in one commit through
huggingface_hub, so HF_TOKEN, HF_ENDPOINT and `hf auth login` work as usual. `primechat pull` brings it back.
"""

import re
import tempfile
from pathlib import Path

from primechat import report
from primechat.common import UserError
from primechat.interop.hf import add_model_arguments, export_hf, unsupported_features

STAGE_NAMES = {"base": "base (pretrained) model", "mid": "mid-trained chat model", "sft": "chat model (SFT)",
               "rl": "chat model (SFT + RL)"}


def stage_name(stage: str, meta: dict) -> str:
    """What the model is; for RL, on which task (`train rl --task`, recorded in the checkpoint's user_config)."""
    task = (meta.get("user_config") or {}).get("task")
    if stage == "rl" and task:
        return f"chat model (SFT + RL on {'GSM8K' if task == 'gsm8k' else task})"
    return STAGE_NAMES[stage]


def lineage(stage: str, tag: str, step: int, meta: dict) -> list[tuple[str, str, int, dict | None]]:
    """The pushed checkpoint, then the one it grew from, and so on: (stage, tag, step, source) each, source as its
    meta records it (None for a base model, or where the chain leaves this home)."""
    from primechat.train.checkpoint import checkpoint_dir, load_meta

    chain = [(stage, tag, step, meta.get("source"))]
    while (source := chain[-1][3]) and len(chain) < len(report.STAGES):
        try:
            meta = load_meta(checkpoint_dir(source["stage"], source["tag"]), source["step"])
        except (OSError, ValueError):  # deleted, or never here
            meta = {}
        chain.append((source["stage"], source["tag"], source["step"], meta.get("source")))
    return chain


def describes(text: str, tag_named: str | None, stage: str, tag: str, step: int, source: dict | None) -> bool:
    """Whether a section is about this checkpoint: the tag it names, and the step (`model: sft_d4_000020`) or the
    source (`source: mid d4 step 108`) where it names one."""
    values = report.section_values(text)
    if tag_named != tag or values.get("model", f"{stage}_{tag}_{step:06d}") != f"{stage}_{tag}_{step:06d}":
        return False
    return not (source and "source" in values) or values["source"] == f"{source['stage']} {source['tag']} step " \
                                                                       f"{source['step']}"


def section_stage(slug: str, text: str) -> str | None:
    """The stage a section reports on: its `model: <stage>_<tag>_<step>` line, or the stage it trains."""
    model = report.section_values(text).get("model", "")
    if model.split("_")[0] in report.STAGES:
        return model.split("_")[0]
    return next((stage for stage, (_, training, _) in report.STAGES.items() if training == slug), None)


def local_paths_dropped(line: str) -> str:
    """`- mixture: /home/me/x.yaml` -> `- mixture: x.yaml`: the card names no folder of this machine."""
    if m := re.fullmatch(r"(- .+?: )([/~]\S*)", line):
        return m.group(1) + Path(m.group(2)).name
    return line


def report_card(stage: str, tag: str, step: int, meta: dict) -> list[str]:
    """The sections of the home's report card about this model and the checkpoints it grew from (headings one
    level down, timestamps and local paths dropped), after their summary table; other models' sections left out."""
    chain = {s: (t, n, source) for s, t, n, source in lineage(stage, tag, step, meta)}
    sections = report.read_sections()
    tags = report.section_tags(sections)
    sections = {slug: text for slug, text in sections.items()
                if (s := section_stage(slug, text)) in chain and describes(text, tags.get(slug), s, *chain[s])}
    if not sections:
        return []
    lines = ["### Summary", "", report.summary_table(sections), ""]
    for text in sections.values():
        lines += ["#" + line if line.startswith("#") else local_paths_dropped(line) for line in text.splitlines()
                  if not line.startswith("timestamp:")]
        lines.append("")
    return lines


def model_card(repo_id: str, info: dict) -> str:
    c, meta, params = info["config"], info["meta"], info["params"]  # what was exported: no padded vocab rows
    imported = meta.get("imported_from")
    origin = (f"Imported from a {imported['format']} checkpoint ({imported.get('layout', '')} layout) with primechat."
              if imported else "Trained from scratch with primechat.")
    stage = stage_name(info["stage"], meta)
    rows = [("stage", stage), ("checkpoint", f"{info['tag']} step {info['step']}"),
            ("parameters", f"{params:,}"), ("layers", c.n_layer), ("width", c.n_embd),
            ("heads / kv heads", f"{c.n_head} / {c.n_kv_head}"), ("context", f"{c.sequence_len:,} tokens"),
            ("vocabulary", f"{c.vocab_size:,} (byte-level BPE, 9 special tokens)"),
            ("RoPE base", f"{c.rope_base:,.0f}"),
            ("logit softcap", c.softcap)]
    if "val_bpb" in meta:
        rows.append(("validation bits per byte", f"{meta['val_bpb']:.4f}"))
    lines = [
        "---", "library_name: transformers", "pipeline_tag: text-generation", "tags:", "- primechat", "- nanochat",
        "---", "", f"# {repo_id.split('/')[-1]}", "",
        f"A small GPT, {stage}, in the architecture of karpathy's nanochat. {origin}", "",
        "| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows], "",
        "## Use it with transformers", "",
    ]
    if info["remote_code"]:
        lines += ["It uses nanochat's 2026 design (" + ", ".join(unsupported_features(c)) + "), which transformers' "
                  "built-in NanoChat architecture cannot express, so the model's code comes with it "
                  "(`modeling_primechat.py`, torch and transformers only): load it, and its tokenizer, with "
                  "`trust_remote_code=True`. "
                  "Runtimes that need a built-in architecture (vLLM, llama.cpp, MLX) do not run it.", ""]
    remote = ", trust_remote_code=True" if info["remote_code"] else ""
    lines += ["```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
              f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}"{remote})',
              f'model = AutoModelForCausalLM.from_pretrained("{repo_id}"{remote})']
    if info["stage"] == "base":
        lines += ['inputs = tokenizer("<|bos|>The capital of France is", return_tensors="pt")']
    else:
        lines += ['messages = [{"role": "user", "content": "Why is the sky blue?"}]',
                  'inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True,',
                  '                                       return_tensors="pt")']
    lines += ["out = model.generate(**inputs, max_new_tokens=100, do_sample=False)",
              'print(tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))', "```", "",
              "The chat template renders conversations exactly as primechat does. The model was trained with a "
              "calculator tool (`<|python_start|>…<|python_end|>`, answered in `<|output_start|>…<|output_end|>`); "
              "plain generation does not run the tool.", "",
              "## Use it with primechat", "", "```bash", f"primechat pull {repo_id}",
              f"primechat chat -i {info['stage']} -g {repo_id.split('/')[-1]}", "```", ""]
    # the home's report card describes models trained here
    card = [] if imported else report_card(info["stage"], info["tag"], info["step"], meta)
    if card:
        lines += ["## Report card", "", *card]
    lines += ["## Limitations", "",
              "A small model: it makes things up, gets facts and arithmetic wrong and should not be relied on.", ""]
    return "\n".join(lines)


def push(repo_id: str, stage: str = "sft", tag: str | None = None, step: int | None = None, dtype: str = "bfloat16",
         private: bool = False) -> str:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise UserError(f"repo id {repo_id!r} must be OWNER/NAME, e.g. yourname/primechat-d20")
    with tempfile.TemporaryDirectory(prefix="primechat-push-") as tmp:
        info = export_hf(Path(tmp), stage, tag, step, dtype)
        (Path(tmp) / "README.md").write_text(model_card(repo_id, info))
        api = HfApi()
        try:
            url = api.create_repo(repo_id, private=private, exist_ok=True)
            api.upload_folder(repo_id=repo_id, folder_path=tmp,
                              commit_message=f"primechat {info['stage']} {info['tag']} step {info['step']}")
        except HfHubHTTPError as e:
            status = getattr(e.response, "status_code", None)
            hint = ("log in with `hf auth login` or set HF_TOKEN to a token with write access"
                    if status in (401, 403) else "check the repo id and your connection")
            raise UserError(f"the Hub refused the upload to {repo_id} (HTTP {status}): {hint}") from None
    return str(url)


def add_arguments(p) -> None:
    p.add_argument("repo_id", help="Hub model repo, OWNER/NAME (created if missing)")
    add_model_arguments(p)
    p.add_argument("--private", action="store_true", help="create the repo private")


def main(args) -> None:
    url = push(args.repo_id, args.source, args.model_tag, args.step, args.dtype, args.private)
    print(f"pushed {args.source} model to {url}")


if __name__ == "__main__":
    from primechat.cli import run_module
    run_module(add_arguments, main)
