"""`primechat sweep`: train a small grid of base models and compare validation bits per byte with training compute.

The questions behind a recipe (is a deeper model worth its compute? how long a horizon, tokens per parameter? which
batch? which vocabulary?) are cheapest to answer at small scale, as nanochat's miniseries.sh and scaling_laws.sh do.
The grid is the product of --depth, --ratio (the horizon: --target-param-data-ratio), --total-batch-size and
--vocab-size; the settings every point shares have CPU-scale defaults, and train-base flags after `--` go to every
point (`primechat sweep --depth 2,4 -- --warmup-steps 5`).

Each point is an ordinary `primechat train base` in a subprocess. The tokenizer lives at <home>/tokenizer, so each
vocabulary gets a private home <home>/sweeps/<name>/vocab-<N>/ (its own tokenizer, trained once; base_data linked to
the main home's) and its points are checkpoint tags there. `--vocab-size home` points share vocab-home/, whose
tokenizer is a link to the main home's.

The whole grid is planned with train base's own arithmetic before anything trains, so a bad flag or a horizon of
zero steps fails at once. A point whose final checkpoint exists is reused; an interrupted one resumes. Ctrl-C or
SIGTERM stops the running point after it saves (or, if it was finishing, before the next), and the same command
continues. Results come from the checkpoints' meta files and go to <home>/sweeps/<name>/: results.csv, results.md
(best marked) and sweep.png (val bpb against FLOPs).
"""

import argparse
import csv
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from primechat.cli import Parser
from primechat.common import (UserError, atomic_path, home_dir, progress, run_child, stopped_exit_code,
                              tokenizer_dir)
from primechat.data.shards import list_shards
from primechat.tokenizer import char_count, check_vocab_size

# What every point shares (sweep flag -> train base flag). CPU-scale defaults: a 2-core machine runs the default
# grid in about ten minutes; on a GPU raise them (and the axes) toward a real run's.
FIXED = {"dataset": "--dataset", "max_seq_len": "--max-seq-len", "device_batch_size": "--device-batch-size",
         "aspect_ratio": "--aspect-ratio", "head_dim": "--head-dim", "eval_every": "--eval-every",
         "eval_tokens": "--eval-tokens"}
COLUMNS = ["vocab", "depth", "ratio", "total_batch", "params", "tokens", "steps", "flops", "training_time_s",
           "val_bpb", "min_val_bpb", "tag"]


def add_arguments(p):
    p.add_argument("--name", default="default", help="the sweep's folder: <home>/sweeps/NAME/")
    p.add_argument("--depth", default="2,4", help="axis: model depths, a comma list")
    p.add_argument("--ratio", default="4,8", help="axis: horizons, training tokens per scaling parameter "
                   "(train base's --target-param-data-ratio), a comma list")
    p.add_argument("--total-batch-size", default="4096", help="axis: tokens per optimizer step, a comma list "
                   "(each a multiple of device batch × seq len)")
    p.add_argument("--vocab-size", default="1024", help="axis: vocabulary sizes, a comma list; each trains its own "
                   "tokenizer once, and `home` uses the main home's tokenizer (e.g. home,1024)")
    p.add_argument("--dataset", default="pydocs", help="pretraining dataset under base_data/ (pydocs: from "
                   "`primechat data demo`)")
    p.add_argument("--max-seq-len", type=int, default=256, help="context length in tokens")
    p.add_argument("--device-batch-size", type=int, default=16, help="rows per forward pass")
    p.add_argument("--aspect-ratio", type=int, default=16, help="model width = depth × this")
    p.add_argument("--head-dim", type=int, default=16, help="attention head size")
    p.add_argument("--eval-every", type=int, default=100, help="validation bpb every N steps (-1: only at the end)")
    p.add_argument("--eval-tokens", type=int, default=32768, help="validation tokens per evaluation")
    p.add_argument("--tokenizer-max-chars", type=char_count, default=2_000_000_000,
                   help="characters each sweep tokenizer learns from")
    p.add_argument("train_flags", nargs=argparse.REMAINDER, help="after `--`: train base flags for every point")


@dataclass
class Point:
    vocab: int | None  # None: the main home's tokenizer
    depth: int
    ratio: float
    batch: int
    argv: list[str] = field(default_factory=list)  # its `train base` flags
    planned_flops: float = 0.0
    scaling_params: int = 0

    @property
    def tag(self) -> str:
        return f"d{self.depth}-r{self.ratio:g}-b{self.batch}"

    @property
    def label(self) -> str:
        vocab = f" · vocab {self.vocab:,}" if self.vocab else ""
        return f"depth {self.depth} · ratio {self.ratio:g} · batch {self.batch:,}{vocab}"


def parse_axis(flag: str, text: str, kind, low: float) -> list:
    """A comma list of numbers, each > low, duplicates dropped; a UserError naming the flag otherwise."""
    try:
        values = [kind(word) for word in text.split(",")]
    except ValueError:
        values = []
    if not values or any(not v > low or not math.isfinite(v) for v in values):
        what = "whole numbers" if kind is int else "numbers"
        raise UserError(f"{flag} {text!r} must be a comma list of {what} above {low:g}, e.g. {flag} 2,4")
    return list(dict.fromkeys(values))


class _TrainBaseFlags(Parser):
    """train base's parser (nanochat's underscore spellings too), with mistakes reported as one line before any point
    runs."""

    def error(self, message):
        raise UserError(f"flags after `--` (train base): {message}")


def refuse_own_flags(parser, train_flags: list[str]) -> None:
    """A flag after `--` that the sweep sets per point would win over it (argparse keeps the last), so a point would
    train another model than its label says: refused, naming the sweep's own flag."""
    own = {"--depth": "--depth", "--target-param-data-ratio": "--ratio", "--total-batch-size": "--total-batch-size",
           **{flag: flag for flag in FIXED.values()}}
    per_point = ("--model-tag", "--resume", "--sample-every")
    options = parser._option_string_actions
    for word in train_flags:
        name = parser._dashed(word).partition("=")[0]
        if not name.startswith("--"):
            continue
        prefixed = [option for option in options if option.startswith(name)]  # argparse takes unique prefixes
        flag = name if name in options else prefixed[0] if len(prefixed) == 1 else None
        if flag in own:
            raise UserError(f"{flag} after `--` would override the sweep's own setting: give it to the sweep "
                            f"(`primechat sweep {own[flag]} …`)")
        if flag in per_point:
            raise UserError(f"{flag} after `--`: the sweep sets it for each point itself")


def plan_points(args, points: list[Point], vocab_sizes: dict) -> None:
    """Fill each point's argv and FLOPs with train base's own planning, which also rejects bad settings now."""
    import torch

    from primechat.model import GPT
    from primechat.train import base

    parser = _TrainBaseFlags(prog="primechat train base")
    base.add_arguments(parser)
    refuse_own_flags(parser, args.train_flags)
    for point in points:
        point.argv = [f"--depth={point.depth}", f"--target-param-data-ratio={point.ratio:g}",
                      f"--total-batch-size={point.batch}", *(f"{flag}={getattr(args, key)}"
                                                             for key, flag in FIXED.items()),
                      "--sample-every=-1", *args.train_flags, f"--model-tag={point.tag}", "--resume"]
        run = parser.parse_args(point.argv)
        with torch.device("meta"):
            model = GPT(base.model_config(run, vocab_sizes[point.vocab]))
        try:
            plan = base.make_plan(run, model, world=1)
        except UserError as e:
            raise UserError(f"point {point.label}: {e}") from None
        point.planned_flops = plan.flops_per_token * plan.target_tokens
        point.scaling_params = model.num_params()["scaling"]


def run_logged(command: list[str], env: dict, log_path: Path, on_line=None) -> int:
    """Run one `primechat …` subprocess (common.run_child: stops cleanly), its output into log_path. Returns the stop
    signal passed on to a subprocess that finished its work all the same (0: none), for stop_before."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        code, error, stop = run_child(command, log, on_line=on_line, env=env)
    if (exit_code := stopped_exit_code(code)) is not None:
        print("stopped; run the same command again to continue", flush=True)
        raise SystemExit(exit_code)
    if code != 0:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-8:])
        print(tail, file=sys.stderr, end="")
        raise UserError(f"`primechat {' '.join(command[3:5])}` failed ({error or f'exit {code}'}); the full output "
                        f"is in {log_path}. Fix it and run the same command again: finished points are kept")
    return stop


def stop_before(stop: int, what: str) -> None:
    """Honour a stop that came as a subprocess finished its work: that work is kept, and nothing more starts."""
    if stop:
        print(f"stopped before {what}: run the same command again to continue", flush=True)
        raise SystemExit(128 + stop)


def vocab_home(sweep_dir: Path, vocab: int | None) -> Path:
    """A home for one vocabulary: the main home's data (and, for None, its tokenizer) linked in."""
    home = sweep_dir / (f"vocab-{vocab}" if vocab else "vocab-home")
    home.mkdir(parents=True, exist_ok=True)
    links = {"base_data": home_dir() / "base_data"} | ({} if vocab else {"tokenizer": tokenizer_dir()})
    for name, target in links.items():
        if not (home / name).is_symlink():
            (home / name).symlink_to(target.resolve(), target_is_directory=True)
    return home


def has_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer.pkl").is_file() and (folder / "token_bytes.pt").is_file()


def final_meta(folder: Path) -> dict | None:
    """The meta of a point's last checkpoint if the run reached its final step, else None."""
    from primechat.train.checkpoint import load_meta, saved_steps

    steps = saved_steps(folder) if folder.exists() else []
    meta = load_meta(folder, steps[-1]) if steps else None
    return meta if meta and meta["step"] == meta["num_iterations"] else None


def result_row(point: Point, meta: dict) -> dict:
    plan = meta["plan"]
    return {"vocab": meta["model_config"]["vocab_size"], "depth": point.depth, "ratio": point.ratio,
            "total_batch": plan["total_batch"], "params": point.scaling_params, "tokens": plan["target_tokens"],
            "steps": meta["num_iterations"], "flops": plan["flops_per_token"] * plan["target_tokens"],
            "training_time_s": round(meta["loop_state"]["training_time"], 1), "val_bpb": meta["val_bpb"],
            "min_val_bpb": meta["loop_state"]["min_val_bpb"], "tag": point.tag}


def markdown_table(rows: list[dict]) -> str:
    best = min(range(len(rows)), key=lambda i: rows[i]["val_bpb"])
    lines = ["| vocab | depth | ratio | batch | params | tokens | steps | FLOPs | train s | val bpb | min val bpb |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for i, r in enumerate(rows):
        bpb = f"**{r['val_bpb']:.4f}** ★" if i == best else f"{r['val_bpb']:.4f}"
        lines.append(f"| {r['vocab']:,} | {r['depth']} | {r['ratio']:g} | {r['total_batch']:,} | {r['params']:,} | "
                     f"{r['tokens']:,} | {r['steps']:,} | {r['flops']:.3g} | {r['training_time_s']:.0f} | {bpb} | "
                     f"{r['min_val_bpb']:.4f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], png_path: Path, title: str) -> None:
    """One line per (vocab, batch, depth) through its horizons: colour = depth, marker = vocab, dash = batch."""
    from primechat.plots import plt

    depths = sorted({r["depth"] for r in rows})
    vocabs = sorted({r["vocab"] for r in rows})
    batches = sorted({r["total_batch"] for r in rows})
    colours = plt.get_cmap("viridis")
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=110)
    for series in sorted({(r["vocab"], r["total_batch"], r["depth"]) for r in rows}):
        vocab, batch, depth = series
        points = sorted((r for r in rows if (r["vocab"], r["total_batch"], r["depth"]) == series),
                        key=lambda r: r["flops"])
        label = f"d{depth}" + (f" · vocab {vocab:,}" if len(vocabs) > 1 else "") + \
                (f" · batch {batch:,}" if len(batches) > 1 else "")
        ax.plot([r["flops"] for r in points], [r["val_bpb"] for r in points], label=label,
                color=colours(depths.index(depth) / max(len(depths) - 1, 1) * 0.85),
                marker="osD^v<>p"[vocabs.index(vocab) % 8], linestyle=["-", "--", ":", "-."][batches.index(batch) % 4])
        for r in points:
            ax.annotate(f"r{r['ratio']:g}", (r["flops"], r["val_bpb"]), textcoords="offset points", xytext=(5, 4),
                        fontsize=8, color="0.35")
    best = min(rows, key=lambda r: r["val_bpb"])
    ax.scatter([best["flops"]], [best["val_bpb"]], s=220, facecolors="none", edgecolors="crimson", zorder=3,
               label=f"best: {best['val_bpb']:.4f}")
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs (FLOPs per token × tokens)")
    ax.set_ylabel("validation bits per byte (lower is better)")
    ax.set_title(f"{title}   (rN: N training tokens per scaling parameter)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def write_results(rows: list[dict], sweep_dir: Path, name: str) -> None:
    with atomic_path(sweep_dir / "results.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    with atomic_path(sweep_dir / "results.md") as tmp:
        tmp.write_text(f"# sweep {name}\n\n{markdown_table(rows)}\n★ lowest final validation bits per byte\n")
    plot(rows, sweep_dir / "sweep.png", f"sweep {name}")


def check_settings(sweep_dir: Path, args) -> None:
    """Points are reused by tag, which names only the axes: refuse to mix in points trained with other settings."""
    settings = {key: getattr(args, key) for key in FIXED} | {"train_flags": args.train_flags}
    path = sweep_dir / "sweep.json"
    if path.exists():
        before = json.loads(path.read_text())
        changed = [k for k in settings if before.get(k) != settings[k]]
        if changed:
            raise UserError(f"sweep {args.name!r} was run with other {', '.join(changed)} ({path}): give the same "
                            f"settings to continue it, or a new --name")
    else:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(settings, indent=2) + "\n")


def main(args):
    # Everything is checked before the first point trains.
    args.train_flags = args.train_flags[1:] if args.train_flags[:1] == ["--"] else args.train_flags
    depths = parse_axis("--depth", args.depth, int, 0)
    ratios = parse_axis("--ratio", args.ratio, float, 0)
    batches = parse_axis("--total-batch-size", args.total_batch_size, int, 0)
    # `home` (None from here on) is the main home's tokenizer; the other words are sizes
    sizes = ",".join(word for word in args.vocab_size.split(",") if word != "home")
    vocabs = ([None] if "home" in args.vocab_size.split(",") else []) + \
        (parse_axis("--vocab-size", sizes, int, 0) if sizes or not args.vocab_size else [])
    for vocab in filter(None, vocabs):
        check_vocab_size(vocab)
    list_shards(args.dataset)
    if args.name in ("", ".", "..") or "/" in args.name:
        raise UserError(f"--name {args.name!r} must be a plain folder name")
    vocab_sizes = {vocab: vocab for vocab in vocabs}
    if None in vocabs:
        from primechat.tokenizer import load_tokenizer
        if not has_tokenizer(tokenizer_dir()):
            raise UserError(f"no tokenizer in {tokenizer_dir()}: train one (`primechat tokenizer train --dataset "
                            f"{args.dataset} --vocab-size 4096`) or drop `home` from --vocab-size")
        vocab_sizes[None] = load_tokenizer().vocab_size
    points = [Point(vocab, depth, ratio, batch)
              for vocab in vocabs for batch in batches for depth in depths for ratio in ratios]
    plan_points(args, points, vocab_sizes)
    sweep_dir = home_dir() / "sweeps" / args.name
    sweep_dir.mkdir(parents=True, exist_ok=True)
    check_settings(sweep_dir, args)

    total_flops = sum(p.planned_flops for p in points)
    print(f"sweep {args.name}: {len(points)} points, {total_flops:.3g} training FLOPs in all; logs and checkpoints "
          f"in {sweep_dir}", flush=True)
    started = time.time()
    rows, flops_run, seconds_run = [], 0.0, 0.0
    for i, point in enumerate(points, 1):
        home = vocab_home(sweep_dir, point.vocab)
        env = {**os.environ, "PRIMECHAT_HOME": str(home)}
        folder = home / "base_checkpoints" / point.tag
        meta = final_meta(folder)
        if meta is None:
            if point.vocab and not has_tokenizer(home / "tokenizer"):
                print(f"tokenizer: training a {point.vocab:,}-token vocabulary on {args.dataset}", flush=True)
                stop = run_logged([sys.executable, "-m", "primechat.cli", "tokenizer", "train", "--dataset",
                                   args.dataset, f"--vocab-size={point.vocab}",
                                   f"--max-chars={args.tokenizer_max_chars}"], env, home / "tokenizer.log")
                stop_before(stop, f"point {i}/{len(points)}")
            print(f"point {i}/{len(points)}: {point.label} …", flush=True)
            t0 = time.time()
            with progress(desc=point.tag, unit="step") as bar:
                def follow_steps(line: str):  # train base's step lines drive this point's bar
                    if m := re.match(r"step (\d+)/(\d+)", line):
                        bar.total, bar.n = int(m.group(2)), int(m.group(1))
                        bar.refresh()

                stop = run_logged([sys.executable, "-m", "primechat.cli", "train", "base", *point.argv], env,
                                  sweep_dir / "logs" / f"{home.name}-{point.tag}.log", on_line=follow_steps)
            meta = final_meta(folder)
            if meta is None:
                raise UserError(f"point {point.label} ended without its final checkpoint in {folder}")
            seconds_run += time.time() - t0
            flops_run += point.planned_flops
            done = "done"
        else:
            done, stop = "skipped, already trained", 0
        rows.append(result_row(point, meta))
        left = sum(p.planned_flops for p in points[i:])
        eta = f", ETA {left * seconds_run / flops_run / 60:.1f} min" if flops_run and left else ""
        print(f"point {i}/{len(points)}: {point.label} → val bpb {rows[-1]['val_bpb']:.4f} ({done}{eta})",
              flush=True)
        if i < len(points):
            stop_before(stop, f"point {i + 1}/{len(points)}")

    write_results(rows, sweep_dir, args.name)
    print(f"\n{markdown_table(rows)}")
    print(f"sweep {args.name}: {len(points)} points in {(time.time() - started) / 60:.1f} min")
    for file in ("results.csv", "results.md", "sweep.png"):
        print(f"  {sweep_dir / file}")


if __name__ == "__main__":
    from primechat.cli import run_module
    run_module(add_arguments, main)
