"""The report card: every stage writes a Markdown section under <home>/report/, `primechat report` stitches them.

A section is `report/<slug>.md` (slug = title lowercased, spaces to dashes), nanochat's format: a `## Title`
heading, a timestamp, then the stage's figures as `- key: value` lines (or raw Markdown such as tables), so the card
can parse the numbers back.

    primechat report --reset    start a new card: archive the old one, write header.md (git, hardware, software,
                                code size, `Run started`). The speedrun does this at the start of a fresh run.
    primechat report            header + sections in pipeline order + a summary (the scores table BASE/MID/SFT/RL,
                                wall-clock time, cost, loss curves, a bar chart of the scores) into report.md, and the
                                same as one self-contained report.html (pictures inlined, no scripts, no links out).
                                Checkpoints that were imported (nanochat, the Hub) are marked where a section names
                                them: the Environment block describes this machine, not the one that trained them.

Section text can hold model samples, so the HTML page shows raw HTML in it as text, never as markup.
"""

import base64
import datetime
import os
import platform
import re
import shutil
import subprocess
from pathlib import Path

from primechat.common import UserError, atomic_path, gpu_hourly_price, home_dir, is_master, physical_ram

# The pipeline's sections in the order they are written; others follow, alphabetically.
SECTION_ORDER = ["tokenizer-training", "tokenizer-evaluation", "base-model-training", "base-model-loss",
                 "base-model-evaluation", "chat-evaluation-base", "midtraining", "chat-evaluation-mid", "chat-sft",
                 "chat-evaluation-sft", "chat-rl", "chat-evaluation-rl", "speedrun"]
# The summary's columns: stage -> (column, training section, metrics.jsonl's (left, right) series for its picture).
STAGES = {
    "base": ("BASE", "base-model-training", None),
    "mid": ("MID", "midtraining", None),
    "sft": ("SFT", "chat-sft", None),
    "rl": ("RL", "chat-rl", (("reward", "mean reward"), ("pass@1", "pass@1 (test)"))),
}
# Lines of a "Chat evaluation <stage>" section that are settings, not task scores (see primechat/eval/chat.py).
CHAT_EVAL_SETTINGS = {"model", "max problems", "num samples", "temperature", "ChatCORE metric"}
# The code counted as the project's size ("bloat" in nanochat): text we wrote, not the vendored web libraries.
CODE_SUFFIXES = {".py", ".md", ".html", ".js", ".css", ".yaml"}
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
NO_SECTIONS_HINT = "run a stage first, e.g. `primechat speedrun --preset demo`"


def report_dir():
    path = home_dir() / "report"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, int) and not isinstance(value, bool) and value >= 10000:
        return f"{value:,}"
    return str(value)


def section_path(title: str) -> Path:
    return report_dir() / f"{title.lower().replace(' ', '-')}.md"


def log_section(title: str, *items) -> None:
    """Write (replace) one section; items are dicts (rendered as `- key: value`) or Markdown strings."""
    if not is_master():
        return
    lines = [f"## {title}", f"timestamp: {datetime.datetime.now():{TIME_FORMAT}}", ""]
    for item in items:
        if isinstance(item, dict):
            lines += [f"- {k}: {_format_value(v)}" for k, v in item.items()]
        else:
            lines.append(str(item).rstrip("\n"))
        lines.append("")
    with atomic_path(section_path(title)) as tmp:
        tmp.write_text("\n".join(lines))


# --------------------------------------------------------------------------------------------------------------------
# The header: where and with what the run happened. Written once, at the start of a run.

def _git(*args) -> str:
    done = subprocess.run(["git", *args], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=10)
    if done.returncode:
        raise OSError(done.stderr.strip())
    return done.stdout.strip()


def git_lines() -> list[str]:
    try:
        branch = _git("rev-parse", "--abbrev-ref", "HEAD")
        commit = _git("rev-parse", "--short", "HEAD")
        dirty = "dirty" if _git("status", "--porcelain") else "clean"
        message = _git("log", "-1", "--format=%s")[:80].rstrip()
    except (OSError, subprocess.SubprocessError):  # no git installed, or primechat is not in a checkout
        return ["- git: not a git checkout"]
    return [f"- branch: {branch}", f"- commit: {commit} ({dirty})", f"- message: {message}"]


def _physical_cpus() -> str:
    """Cores (not hyper-threads) from /proc/cpuinfo on Linux; 'unknown' elsewhere."""
    try:
        cores, physical = set(), None
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "physical id":
                physical = value.strip()
            elif key.strip() == "core id":
                cores.add((physical, value.strip()))
        return str(len(cores)) if cores else "unknown"
    except OSError:
        return "unknown"


def hardware_lines() -> list[str]:
    """Includes `- gpus: N× name` and `- gpu count: N`, which `generate` reads back to price the run."""
    import torch
    try:
        ram = f"{physical_ram() / 1e9:.1f} GB"
    except (ValueError, OSError, AttributeError):
        ram = "unknown"
    lines = [f"- platform: {platform.platform()}", f"- CPUs: {_physical_cpus()} physical, {os.cpu_count()} logical",
             f"- RAM: {ram}"]
    if not torch.cuda.is_available():
        return lines + ["- gpus: none", "- gpu count: 0", "- hourly rate: $0 (CPU)"]
    count, name = torch.cuda.device_count(), torch.cuda.get_device_name(0)
    vram = sum(torch.cuda.get_device_properties(i).total_memory for i in range(count)) / 1e9
    price = gpu_hourly_price(name)
    return lines + [f"- gpus: {count}× {name}", f"- gpu count: {count}", f"- VRAM: {vram:.1f} GB in total",
                    f"- CUDA: {torch.version.cuda}",
                    f"- hourly rate: ${count * price:.2f} ({count} × ${price:.2f} per GPU-hour)"]


def code_size_lines() -> list[str]:
    package = Path(__file__).parent
    files = [p for p in sorted(package.rglob("*")) if p.suffix in CODE_SUFFIXES and p.is_file()
             and "vendor" not in p.relative_to(package).parts]
    if (package.parent / "pyproject.toml").exists():  # a checkout (not an installed copy): its README counts too
        files += [package.parent / name for name in ("README.md", "pyproject.toml") if (package.parent / name).exists()]
    texts = [p.read_text(errors="replace") for p in files]
    chars = sum(len(t) for t in texts)
    lines = sum(t.count("\n") for t in texts)
    return [f"- characters: {chars:,}", f"- lines: {lines:,}", f"- files: {len(files)}",
            f"- tokens (about characters / 4): {chars // 4:,}"]


def header_markdown(run_started: str | None) -> str:
    import torch
    now = f"{datetime.datetime.now():{TIME_FORMAT}}"
    parts = ["# primechat training report", "", f"Generated: {now}", "", "## Environment", "",
             "### Git", "", *git_lines(), "", "### Hardware", "", *hardware_lines(), "",
             "### Software", "", f"- Python: {platform.python_version()}", f"- PyTorch: {torch.__version__}", "",
             "### Code size", "", *code_size_lines(), ""]
    parts.append(f"Run started: {run_started}" if run_started else
                 "Run started: not recorded (no header.md was written at the start: this environment is the machine "
                 "that wrote the card)")
    return "\n".join(parts + ["", "---", ""])


def reset() -> Path | None:
    """Start a new card: move everything in report/ into report/archive/<time>/ (nothing is lost), then write
    header.md with `Run started: now`. Returns the archive folder (None when there was nothing to archive)."""
    if not is_master():
        return None
    folder = report_dir()
    # Dot-files are other processes' atomic writes in flight: theirs to finish.
    old = [p for p in sorted(folder.iterdir()) if p.name != "archive" and not p.name.startswith(".")]
    archive = None
    if old:
        stamp = f"{datetime.datetime.now():%Y%m%d-%H%M%S}"
        archive, n = folder / "archive" / stamp, 1
        while archive.exists():  # two resets within a second
            n += 1
            archive = folder / "archive" / f"{stamp}-{n}"
        archive.mkdir(parents=True)
        for path in old:
            shutil.move(path, archive / path.name)
    with atomic_path(folder / "header.md") as tmp:
        tmp.write_text(header_markdown(run_started=f"{datetime.datetime.now():{TIME_FORMAT}}"))
    return archive


# --------------------------------------------------------------------------------------------------------------------
# Reading sections back

def read_sections(folder: Path | None = None) -> dict[str, str]:
    """{slug: Markdown} of the sections in <home>/report (header, card and archive left out), in pipeline order."""
    folder = home_dir() / "report" if folder is None else Path(folder)
    paths = {p.stem: p for p in folder.glob("*.md") if p.stem not in ("header", "report")} if folder.is_dir() else {}
    order = [s for s in SECTION_ORDER if s in paths] + sorted(s for s in paths if s not in SECTION_ORDER)
    return {slug: paths[slug].read_text() for slug in order}


def section_values(text: str) -> dict[str, str]:
    """A section's `- key: value` lines (key up to the first ': ')."""
    return dict(m.groups() for m in re.finditer(r"^- (.+?): (.*)$", text, re.MULTILINE))


def _number(value: str | None) -> float | None:
    try:
        return float(value.replace(",", ""))
    except (AttributeError, ValueError):
        return None


def chat_scores(values: dict[str, str]) -> dict[str, float]:
    """The task scores of a "Chat evaluation <stage>" section's values (its settings and notes left out)."""
    return {key: _number(value) for key, value in values.items()
            if key not in CHAT_EVAL_SETTINGS and _number(value) is not None}


def _timestamp(text: str, label: str) -> datetime.datetime | None:
    m = re.search(rf"^{label}: (\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d)", text, re.MULTILINE)
    return datetime.datetime.strptime(m.group(1), TIME_FORMAT) if m else None


def scores(sections: dict[str, str]) -> tuple[dict[str, dict[str, float]], list[str]]:
    """The evaluations' scores {row label: {stage: value}}: CORE, ChatCORE's tasks (alphabetical), ChatCORE, then the
    chat tasks outside ChatCORE (Arithmetic), and footnotes on what they cover (partial CORE, capped numbers of
    problems, tasks outside ChatCORE)."""
    from primechat.eval.chat import CHATCORE_BASELINES  # here: eval/chat.py imports this module
    core, tasks, chatcore, notes = {}, {}, {}, []
    base = section_values(sections.get("base-model-evaluation", ""))
    for key, value in base.items():
        if (m := re.fullmatch(r"(CORE.*) metric", key)) and _number(value) is not None:
            core = {m.group(1): {"base": _number(value)}}
            if "partial" in key:
                notes.append(f"{m.group(1)}: the evaluation bundle lacked some tasks, so this is not a full CORE "
                             f"({base.get('missing tasks', 'see the section')} missing).")
    if _number(base.get("max per task", "-1")) not in (None, -1.0):
        notes.append(f"CORE on at most {base['max per task']} examples per task.")
    capped = {}
    for stage in STAGES:
        values = section_values(sections.get(f"chat-evaluation-{stage}", ""))
        for key, value in chat_scores(values).items():
            tasks.setdefault(key, {})[stage] = value
        if _number(values.get("ChatCORE metric")) is not None:
            chatcore.setdefault("ChatCORE", {})[stage] = _number(values["ChatCORE metric"])
        if values.get("max problems", "all") != "all":
            capped.setdefault(values["max problems"], []).append(STAGES[stage][0])
    notes += [f"{', '.join(columns)}: chat tasks on at most {n} problems each." for n, columns in capped.items()]
    if "chat-rl" in sections and "chat-evaluation-rl" not in sections:  # RL measured pass@k, but not on these rows
        notes.append("RL: empty until `primechat eval chat -i rl` runs; the Chat RL section has the pass@k measured "
                     "during RL.")
    outside = {name: values for name, values in sorted(tasks.items()) if name not in CHATCORE_BASELINES}
    if outside:
        notes.append(f"{', '.join(outside)}: not part of ChatCORE, nanochat's mean over "
                     f"{', '.join(CHATCORE_BASELINES)}.")
    inside = {name: values for name, values in sorted(tasks.items()) if name in CHATCORE_BASELINES}
    return {**core, **inside, **chatcore, **outside}, notes


def section_tags(sections: dict[str, str]) -> dict[str, str]:
    """The model tag each section describes: `model tag: d4` (training), `model: base_d4_000300` (evaluations),
    `source: mid d4 step 108` (chat stages' sections written before they named their tag, when the folder was always
    named like the source's)."""
    tags = {}
    for slug, text in sections.items():
        values = section_values(text)
        if tag := values.get("model tag"):
            tags[slug] = tag
        elif m := re.fullmatch(r"[a-z]+_(.+)_\d+", values.get("model", "")):
            tags[slug] = m.group(1)
        elif m := re.fullmatch(r"[a-z]+ (.+) step \d+", values.get("source", "")):
            tags[slug] = m.group(1)
    return tags


def origin(stage: str, tag: str, step: str) -> str | None:
    """Where a checkpoint came from when it was imported ("nanochat, oct2025 layout", "the Hub, me/d20"); None for
    one trained here, or one no longer on disk."""
    from primechat.train.checkpoint import STAGE_DIRS, checkpoint_dir, load_meta

    if stage not in STAGE_DIRS:
        return None
    try:
        imported = load_meta(checkpoint_dir(stage, tag), int(step))["imported_from"]
    except (OSError, ValueError, KeyError):
        return None
    if imported.get("format") == "huggingface":
        return f"the Hub, {imported.get('repo_id')}"
    return ", ".join(filter(None, (imported.get("format"), imported.get("layout") and f"{imported['layout']} layout")))


# The lines of a section that name a checkpoint: `- model: base_d4_021400` (evaluations), `- source: mid d4 step 108`
# (chat training): (stage, tag, step).
CHECKPOINT_LINE = re.compile(r"^- (?:model: ([a-z]+)_(.+)_(\d+)|source: ([a-z]+) (.+) step (\d+))$", re.MULTILINE)


def mark_imported(sections: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """The sections with `(imported from …)` after each imported checkpoint they name, and those checkpoints."""
    imported = {}

    def mark(m):
        stage, tag, step = [g for g in m.groups() if g is not None]
        if (where := origin(stage, tag, step)) is None:
            return m.group(0)
        imported[f"{stage} {tag} step {int(step)}"] = where
        return f"{m.group(0)} (imported from {where})"

    marked = {slug: CHECKPOINT_LINE.sub(mark, text) for slug, text in sections.items()}
    return marked, [f"{name} (from {where})" for name, where in imported.items()]


def summary_table(sections: dict[str, str]) -> str:
    """nanochat's `| Metric | BASE | MID | SFT | RL |` table ("-" where missing), then each training stage's minimum
    validation bits per byte, then footnotes. Markdown, for the card and for `primechat push`'s model card."""
    rows, notes = scores(sections)
    tags = section_tags(sections)
    if len(set(tags.values())) > 1:  # stages run by hand on different models since the card was started
        described = "; ".join(f"{tag}: {', '.join(s for s in tags if tags[s] == tag)}" for tag in dict.fromkeys(
            tags.values()))
        notes.insert(0, f"Mixed models: these sections describe models of different tags ({described}), so a "
                        f"column may not describe the model the next one grew from. `primechat report --reset` "
                        f"starts a new card (a speedrun does).")
    bpb = {stage: _number(section_values(sections.get(training, "")).get("min validation bpb"))
           for stage, (_, training, _) in STAGES.items()}
    bpb = {stage: value for stage, value in bpb.items() if value is not None}
    if bpb:
        rows["min validation bpb ¹"] = bpb
        notes.insert(0, "¹ each stage on its own validation data (pretraining text, then the chat mixtures), "
                        "so the figures compare runs, not stages.")
    columns = [column for column, _, _ in STAGES.values()]
    lines = [f"| Metric | {' | '.join(columns)} |", "|---|" + "---:|" * len(columns)]  # numbers right-aligned
    for label, values in rows.items():
        lines.append(f"| {label} | " + " | ".join(f"{values[s]:.4f}" if s in values else "-" for s in STAGES) + " |")
    return "\n".join(lines + [""] + [f"- {note}" for note in notes])


# --------------------------------------------------------------------------------------------------------------------
# The summary: time, cost, pictures

def wall_clock(header: str, sections: dict[str, str]) -> tuple[float | None, str]:
    """Seconds the run took, and how that was measured: the speedrun's own total when it wrote one, else the last
    section's time minus `Run started` (nanochat's rule), else first to last section (a lower bound)."""
    total = _number(section_values(sections.get("speedrun", "")).get("total seconds"))
    if total is not None:
        return total, "the speedrun's total"
    stamps = [t for text in sections.values() if (t := _timestamp(text, "timestamp"))]
    started = _timestamp(header, "Run started")
    if started and stamps:
        return (max(stamps) - started).total_seconds(), "from `Run started` to the last section"
    if len(stamps) > 1:
        return ((max(stamps) - min(stamps)).total_seconds(),
                "at least: first to last section, the start was not recorded; `primechat report --reset` before "
                "a run records it")
    return None, "unknown"


def hourly_rate(header: str, price: float | None) -> tuple[float, str]:
    """The machine's $/hour from the header's GPUs; `price` replaces the per-GPU price (on a CPU-only machine, it is
    the machine's price)."""
    values = section_values(header)
    count = int(_number(values.get("gpu count")) or 0)
    if count:
        per_gpu = price if price is not None else gpu_hourly_price(values.get("gpus", "").partition("× ")[2])
        return count * per_gpu, f"{count} × ${per_gpu:.2f} per GPU"
    if price is not None:
        return price, "this machine, --price"
    return 0.0, "CPU"


def _duration(seconds: float) -> str:
    minutes, s = divmod(round(seconds), 60)
    return f"{minutes // 60}h {minutes % 60:02d}m {s:02d}s"


def time_and_cost_lines(header: str, sections: dict[str, str], price: float | None) -> list[str]:
    seconds, how = wall_clock(header, sections)
    if seconds is None:
        return ["- Total wall-clock time: unknown", "- Estimated cost: unknown"]
    rate, basis = hourly_rate(header, price)
    hours = seconds / 3600
    cost = "$0 (CPU)" if basis == "CPU" else f"${hours * rate:,.2f} ({hours:.2f} h × ${rate:.2f}/h: {basis})"
    return [f"- Total wall-clock time: {_duration(seconds)} ({seconds:,.0f} s; {how})", f"- Estimated cost: {cost}"]


def _stage_tag(stage: str, section: str) -> str | None:
    """The checkpoint tag a training section names (base: `model tag: d4`; chat stages train in the folder named
    like their source's: `source: mid d4 step 108`), else the stage's default tag, else None."""
    values = section_values(section)
    tag = values.get("model tag") or (values.get("source", "").split() + [None, None])[1]
    if tag:
        return tag
    from primechat.train.checkpoint import default_tag
    try:
        return default_tag(stage)
    except UserError:
        return None


def draw_pictures(folder: Path, sections: dict[str, str]) -> list[tuple[str, str]]:
    """PNGs in the report folder: a bar chart of the scores, and a curve per training stage that has a section and a
    metrics.jsonl. Returns (caption, file name) pairs."""
    from primechat.plots import plot_grouped_bars, plot_training_curves
    from primechat.train.checkpoint import STAGE_DIRS

    pictures = []
    rows, _ = scores(sections)
    if rows:  # first, beside the table it draws
        present = [s for s in STAGES if any(s in values for values in rows.values())]
        plot_grouped_bars({label: {STAGES[s][0]: v for s, v in values.items()} for label, values in rows.items()},
                          [STAGES[s][0] for s in present], folder / "scores.png", title="evaluation scores",
                          ylabel="score")
        pictures.append(("evaluation scores by stage", "scores.png"))
    for stage, (column, training, series) in STAGES.items():
        tag = _stage_tag(stage, sections[training]) if training in sections else None
        metrics = home_dir() / STAGE_DIRS[stage] / tag / "metrics.jsonl" if tag else None
        if metrics and metrics.exists():
            name = f"{stage}-curves.png"
            left_right = dict(zip(("left", "right"), series)) if series else {}
            plot_training_curves(metrics, folder / name, title=f"{column} {tag}", **left_right)
            what = "reward and pass@1" if series else "training loss and validation bits per byte"
            pictures.append((f"{column} ({tag}): {what}", name))
    return pictures


# --------------------------------------------------------------------------------------------------------------------
# Markdown to one self-contained HTML page

HTML_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>primechat training report</title>
<style>
body {{ font: 15px/1.5 system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; color: #222; }}
h1, h2 {{ border-bottom: 1px solid #ddd; padding-bottom: .2em; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: .25em .6em; }}
th {{ background: #f3f3f3; }}
td {{ font-variant-numeric: tabular-nums; }}
li {{ overflow-wrap: anywhere; }}
code {{ background: #f3f3f3; padding: 0 .2em; }}
img {{ max-width: 100%; }}
@media (prefers-color-scheme: dark) {{
  body {{ background: #1b1b1b; color: #ddd; }} th, code {{ background: #2a2a2a; }} img {{ background: #fff; }}
}}
</style></head>
<body>
{body}
</body></html>
"""


def to_html(text: str, folder: Path, pictures: set[str]) -> str:
    """The card as one page: our pictures inlined as data: URIs; raw HTML shown as text and links left as text
    (sections hold model samples, which may contain anything), so the page runs no script and fetches nothing."""
    import markdown

    md = markdown.Markdown(extensions=["tables"])
    md.preprocessors.deregister("html_block")
    for name in ("html", "link", "reference", "short_reference", "autolink", "automail", "image_reference",
                 "short_image_ref"):
        md.inlinePatterns.deregister(name)
    body = md.convert(text)

    def inline(m):
        src = re.search(r'src="([^"]*)"', m.group(0)).group(1)
        if src not in pictures:  # an image a section's text asked for: show its alt text, fetch nothing
            alt = re.search(r'alt="([^"]*)"', m.group(0))
            return alt.group(1) if alt else ""
        data = base64.b64encode((folder / src).read_bytes()).decode()
        return m.group(0).replace(f'src="{src}"', f'src="data:image/png;base64,{data}"')

    return HTML_PAGE.format(body=re.sub(r"<img [^>]*>", inline, body))


def generate(price: float | None = None) -> tuple[Path, Path, str]:
    """Write report/report.md and report/report.html. Returns their paths and the summary's table, time and cost."""
    folder = home_dir() / "report"
    sections = read_sections(folder)
    if not sections:
        raise UserError(f"no report sections in {folder}: {NO_SECTIONS_HINT}")
    header_path = folder / "header.md"
    if header_path.exists():
        header = header_path.read_text()
    else:  # sections from before any reset: describe this machine, with no start time
        header = header_markdown(run_started=None)
    summary = "\n".join([summary_table(sections), *time_and_cost_lines(header, sections, price)])
    md_path, html_path = folder / "report.md", folder / "report.html"
    if not is_master():
        return md_path, html_path, summary
    pictures = draw_pictures(folder, sections)
    marked, imported = mark_imported(sections)
    note = [f"Imported models: {'; '.join(imported)}. The Environment above is the machine and code that evaluated "
            f"them here, not where they were trained.", ""] if imported else []
    text = "\n".join([header.rstrip("\n"), ""] + note + [s.rstrip("\n") + "\n" for s in marked.values()]
                     + ["## Summary", "", summary, ""]
                     + [f"![{caption}]({name})\n" for caption, name in pictures])
    with atomic_path(md_path) as tmp:
        tmp.write_text(text)
    with atomic_path(html_path) as tmp:
        tmp.write_text(to_html(text, folder, {name for _, name in pictures}))
    return md_path, html_path, summary


# --------------------------------------------------------------------------------------------------------------------
# The command

def add_arguments(p):
    what = p.add_mutually_exclusive_group()
    what.add_argument("--reset", action="store_true", help="start a new card: archive the current one under "
                      "report/archive/ and record the environment and the start time")
    what.add_argument("--price", type=float, default=None, metavar="DOLLARS",
                      help="price per GPU-hour for the cost estimate (on a CPU-only machine: the machine's price "
                           "per hour); default: a typical on-demand price for the GPU the header records")


def main(args):
    if args.reset:
        archive = reset()
        if archive:
            print(f"archived the previous card in {archive}")
        print(f"new report card started: {home_dir() / 'report' / 'header.md'}")
        return
    if args.price is not None and args.price < 0:
        raise UserError(f"--price {args.price}: a price cannot be negative")
    md_path, html_path, summary = generate(args.price)
    print(summary)
    print(f"\nwrote {md_path}\nwrote {html_path}")


if __name__ == "__main__":
    from primechat.cli import run_module
    run_module(add_arguments, main)
