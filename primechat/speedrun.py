"""`primechat speedrun --preset NAME`: the whole pipeline as one command, resumable.

A preset (primechat/configs/<NAME>.yaml, or a path to your own YAML) lists stages, each a `primechat` command line.
Stages run in order as subprocesses; with several GPUs, stages marked `distributed` run under torchrun on all of
them. A stage that exits 0 is recorded in <home>/speedrun/<preset>.json and skipped when the speedrun is run
again, so after a crash or Ctrl-C the same command continues where it stopped; a preset's training stages should
pass `--resume` (the shipped ones do) to continue from their last checkpoint. Everything printed also goes to a log
file per run.

A new run (no state file yet, or --restart) starts a new report card: the previous card's sections are archived and
the environment header written. Each stage's time goes into the card's "Speedrun" section, summed over resumes, so
the card's wall clock counts the time spent running, not the hours a stopped run sat waiting.
"""

import datetime
import json
import shlex
import sys
from pathlib import Path

import yaml

from primechat import report
from primechat.cli import command_module
from primechat.common import (CONFIGS_DIR, UserError, atomic_path, home_dir, run_child, shipped_configs,
                              stopped_exit_code)


def shipped_presets() -> list[str]:
    """The presets in configs/ (the folder also holds chat mixtures, which have no stages)."""
    return list(shipped_configs("stages"))


def add_arguments(p):
    p.add_argument("--preset", default="demo", help=f"one of {', '.join(shipped_presets())}, or a path to a preset "
                   "YAML")
    p.add_argument("--restart", action="store_true", help="forget which stages completed and run them all again")
    p.add_argument("--dry-run", action="store_true", help="print the stages and their commands, which would run and "
                   "which are complete; run nothing")
    p.add_argument("--nproc", type=int, default=None, help="processes for the stages marked distributed (default: "
                   "every CUDA GPU found, else 1)")


def load_preset(name: str) -> tuple[str, dict]:
    path = Path(name) if name.endswith((".yaml", ".yml")) else CONFIGS_DIR / f"{name}.yaml"
    if not path.exists():
        known = ", ".join(shipped_presets())
        raise UserError(f"no preset {name!r}: use one of {known}, or a path to a .yaml file")
    preset = yaml.safe_load(path.read_text())
    if not isinstance(preset, dict) or not preset.get("stages"):
        raise UserError(f"{path} has no `stages:` list")
    return path.stem, preset


def stage_command(stage: dict, num_procs: int) -> list[str]:
    words = shlex.split(stage["run"])
    if stage.get("distributed") and num_procs > 1:
        if (found := command_module(words)) is None:
            raise UserError(f"stage {stage['name']}: {stage['run']!r} does not start with a primechat command")
        module, rest = found
        # on a stop torchrun gives its workers 30 s to save before killing them; a d32 checkpoint may need longer
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={num_procs}",
                "--shutdown-timeout=600", "-m", module, *rest]
    return [sys.executable, "-m", "primechat.cli", *words]


def shown(command: list[str]) -> str:
    """A stage's command as one can paste it into a shell (`python` for the full path of this interpreter)."""
    return shlex.join(["python", *command[1:]])


def main(args):
    import torch

    name, preset = load_preset(args.preset)
    if args.nproc is not None and args.nproc < 1:
        raise UserError(f"--nproc {args.nproc} must be at least 1")
    num_procs = args.nproc or (torch.cuda.device_count() if torch.cuda.is_available() else 1)
    state_path = home_dir() / "speedrun" / f"{name}.json"
    fresh = args.restart or not state_path.exists()
    state = {"completed": [], "seconds": {}} if fresh else json.loads(state_path.read_text())
    done, seconds = state["completed"], state.setdefault("seconds", {})
    about = (preset.get("description") or "").strip()
    print(f"speedrun {name}" + (" (dry run, nothing is run)" if args.dry_run else "") + (f": {about}" if about else ""))
    if num_procs > 1 and not any(stage.get("distributed") for stage in preset["stages"]):
        print(f"note: preset {name} has no distributed stages: every stage runs in one process")
    if args.dry_run:
        for stage in preset["stages"]:
            what = "complete, would be skipped" if stage["name"] in done else "would run"
            print(f"== {stage['name']}: {what}: {shown(stage_command(stage, num_procs))}")
        return
    if fresh:
        report.reset()

    def record(stage: str, elapsed: float):
        seconds[stage] = seconds.get(stage, 0.0) + elapsed
        with atomic_path(state_path) as tmp:
            tmp.write_text(json.dumps(state, indent=2))
        report.log_section("Speedrun", {"preset": name, **{k: round(v) for k, v in seconds.items()},
                                        "total seconds": round(sum(seconds.values()))})

    log_path = home_dir() / "speedrun" / f"{name}-{datetime.datetime.now():%Y%m%d-%H%M%S}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print(f"log: {log_path}")
    with open(log_path, "w") as log:
        for stage in preset["stages"]:
            if stage["name"] in done:
                print(f"== {stage['name']}: already complete, skipped")
                continue
            command = stage_command(stage, num_procs)
            print(f"== {stage['name']}: {shown(command)}", flush=True)
            log.write(f"== {stage['name']}: {shlex.join(command)}\n")
            started = datetime.datetime.now()
            code, error, stop = run_child(command, log, on_line=sys.stdout.write)
            elapsed = (datetime.datetime.now() - started).total_seconds()
            if (exit_code := stopped_exit_code(code)) is not None:
                record(stage["name"], elapsed)
                print(f"== {stage['name']}: stopped; run the same command again to continue", flush=True)
                raise SystemExit(exit_code)
            if code != 0:
                raise UserError(f"stage {stage['name']} failed: {error or f'exit {code}'}. Fix it and run the same "
                                f"command again: completed stages are skipped (output in {log_path})")
            done.append(stage["name"])
            record(stage["name"], elapsed)
            left = [s["name"] for s in preset["stages"] if s["name"] not in done]
            if stop and left:  # the stage had finished when the stop came: keep it, and honour the stop now
                print(f"== {stage['name']}: done in {elapsed:.0f}s; stopped before {left[0]}: run the same command "
                      f"again to continue", flush=True)
                raise SystemExit(128 + stop)
            print(f"== {stage['name']}: done in {elapsed:.0f}s")
    print(f"speedrun {name}: all {len(preset['stages'])} stages complete")
