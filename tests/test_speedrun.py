"""The one-command pipeline: stages run in order, a stop (SIGTERM) leaves the running stage resumable, and running the
same command again skips completed stages and finishes. Uses a tiny preset written by the test."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

PRESET = """
description: a tiny pipeline for tests
stages:
  - name: data
    run: data demo
  - name: tokenizer
    run: tokenizer train --dataset pydocs --vocab-size 300 --max-chars 300000
  - name: base
    run: >
      train base --dataset pydocs --depth 1 --aspect-ratio 32 --head-dim 16 --max-seq-len 64
      --device-batch-size 2 --total-batch-size 128 --num-iterations {steps} --warmup-steps 2
      --eval-every -1 --eval-tokens 256 --sample-every -1 --save-every 10 --resume
"""


def write_preset(tmp_path, steps):
    path = tmp_path / "tiny.yaml"
    path.write_text(PRESET.format(steps=steps))
    return path


# Python runs a sitecustomize module found on PYTHONPATH at start-up, in every process: `hold` uses that to make one
# command a stage that waits for its stop.
HOLD = """
import os, signal, sys, time
words = os.environ["HOLD_COMMAND"].split()
if sys.orig_argv[1:3] == ["-m", "primechat.cli"] and sys.orig_argv[3:3 + len(words)] == words:
    stops = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stops.append(signum))
    with open(os.environ["HOLD_PID"], "w") as f:
        f.write(str(os.getpid()))
    while not stops:
        time.sleep(0.05)
"""


def hold(monkeypatch, tmp_path, command: str) -> Path:
    """Make `primechat COMMAND ...` subprocesses wait for a SIGTERM, absorb it, then run as usual and exit 0: a stage
    whose work was complete when the stop came. Returns the file where such a process writes its pid."""
    folder = tmp_path / "hold"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(HOLD)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("HOLD_COMMAND", command)
    monkeypatch.setenv("HOLD_PID", str(folder / "pid"))
    return folder / "pid"


def wait_for(path: Path, proc: subprocess.Popen, seconds: float = 60) -> int:
    """The pid a held stage wrote to `path`, once it has."""
    deadline = time.time() + seconds
    while not (path.exists() and path.read_text()):
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
        time.sleep(0.05)
    return int(path.read_text())


@pytest.mark.parametrize("nproc,sig", [(1, signal.SIGTERM), (2, signal.SIGTERM), (2, signal.SIGINT), (1, signal.SIGHUP)],
                         ids=["one-process-sigterm", "torchrun-sigterm", "torchrun-sigint", "one-process-sighup"])
def test_stop_then_rerun_continues_to_the_end(home, cli, tmp_path, nproc, sig):
    """Under torchrun too: its workers save and stop, and the speedrun reports a stop (torchrun itself exits 1). The
    signal goes to the speedrun's process alone (`kill -INT PID`, a job scheduler, a closed terminal): it must pass it
    on."""
    preset = write_preset(tmp_path, steps=400)
    if nproc > 1:
        text = preset.read_text().replace("--total-batch-size 128", "--total-batch-size 256")
        preset.write_text(text.replace("  - name: base\n", "  - name: base\n    distributed: true\n"))
    proc = cli.popen("speedrun", "--preset", preset, "--nproc", str(nproc), stdout=subprocess.PIPE,
                     stderr=subprocess.STDOUT, text=True)
    metrics = home / "base_checkpoints" / "d1" / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 5):  # training has started
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
        time.sleep(0.2)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    stop = signal.SIGTERM if sig == signal.SIGHUP else sig  # a hangup (terminal closed) stops the stage as SIGTERM
    assert proc.returncode == 128 + stop, out
    assert "run the same command again to continue" in out
    state = json.loads((home / "speedrun" / "tiny.json").read_text())
    assert state["completed"] == ["data", "tokenizer"]  # base was interrupted, so it is not complete
    saved = sorted((home / "base_checkpoints" / "d1").glob("meta_*.json"))
    assert saved, "the stopped stage saved a checkpoint"
    stopped_at = json.loads(saved[-1].read_text())["step"]
    assert 0 < stopped_at < 400

    done = cli.run("speedrun", "--preset", preset, "--nproc", str(nproc), timeout=300)
    assert done.code == 0, done.out + done.err
    assert "data: already complete, skipped" in done.out and "tokenizer: already complete, skipped" in done.out
    assert f"resuming {home / 'base_checkpoints' / 'd1'} from step {stopped_at}" in done.out
    assert json.loads((home / "speedrun" / "tiny.json").read_text())["completed"] == ["data", "tokenizer", "base"]
    assert (home / "base_checkpoints" / "d1" / "meta_000400.json").exists()
    assert list((home / "speedrun").glob("tiny-*.log"))  # one log file per run


def test_a_stage_that_finishes_despite_a_stop_is_kept_and_the_speedrun_stops(home, cli, tmp_path, monkeypatch):
    """A stop that reaches a stage as it finishes its work (training that had just saved its last step) still stops
    the speedrun, before the next stage; the finished stage counts as complete."""
    pid_file = hold(monkeypatch, tmp_path, "info")
    preset = tmp_path / "two.yaml"
    preset.write_text("stages:\n  - name: first\n    run: info\n  - name: second\n    run: plan --depth 1\n")
    proc = cli.popen("speedrun", "--preset", preset, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(pid_file, proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert "== first: done in" in out and "stopped before second: run the same command again to continue" in out
    assert "== second" not in out
    assert json.loads((home / "speedrun" / "two.json").read_text())["completed"] == ["first"]

    again = cli.run("speedrun", "--preset", preset)
    assert again.code == 0, again.out + again.err
    assert "== first: already complete, skipped" in again.out and "== second: done in" in again.out
    assert json.loads((home / "speedrun" / "two.json").read_text())["completed"] == ["first", "second"]


def running(pid: int) -> bool:
    """Whether a process exists and has not exited (a zombie has: only its exit status waits to be collected)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(sys.platform != "linux", reason="a child is killed with its parent by Linux's PR_SET_PDEATHSIG")
def test_a_killed_speedrun_takes_its_stage_with_it(home, cli, tmp_path, monkeypatch):
    """SIGKILL leaves the speedrun no time to stop its stage; the stage must not go on alone in the background, where
    a rerun would collide with it."""
    pid_file = hold(monkeypatch, tmp_path, "info")
    preset = tmp_path / "one.yaml"
    preset.write_text("stages:\n  - name: held\n    run: info\n")
    proc = cli.popen("speedrun", "--preset", preset, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stage = wait_for(pid_file, proc)
    proc.kill()
    proc.communicate()
    try:
        deadline = time.time() + 5
        while running(stage):
            assert time.time() < deadline, "the stage outlived the killed speedrun"
            time.sleep(0.05)
    finally:
        if running(stage):
            os.kill(stage, signal.SIGKILL)


def test_failed_stage_stops_the_run_with_one_line(home, cli, tmp_path):
    preset = tmp_path / "broken.yaml"
    preset.write_text("stages:\n  - name: base\n    run: train base --dataset nowhere --depth 1\n")
    result = cli.run("speedrun", "--preset", preset)
    assert result.code == 2
    assert result.err.strip().splitlines()[-1].startswith("primechat: error: stage base failed: ")
    assert "no tokenizer" in result.err.strip().splitlines()[-1]  # the stage's own reason, not only its exit code
    assert not (home / "speedrun" / "broken.json").exists()


def test_dry_run_prints_the_stages_and_runs_nothing(home, cli, tmp_path):
    preset = write_preset(tmp_path, steps=4)
    preset.write_text(preset.read_text().replace("  - name: base\n", "  - name: base\n    distributed: true\n"))
    (home / "speedrun").mkdir(parents=True)
    (home / "speedrun" / "tiny.json").write_text(json.dumps({"completed": ["data"], "seconds": {"data": 1.0}}))
    result = cli.run("speedrun", "--preset", preset, "--dry-run", "--nproc", "2")
    assert result.code == 0, result.err
    lines = [line for line in result.out.splitlines() if line.startswith("== ")]
    assert lines[0] == "== data: complete, would be skipped: python -m primechat.cli data demo"
    assert lines[1].startswith("== tokenizer: would run: python -m primechat.cli tokenizer train --dataset pydocs")
    assert lines[2].startswith("== base: would run: python -m torch.distributed.run --standalone --nproc_per_node=2")
    assert sorted(p.name for p in home.iterdir()) == ["speedrun"]  # no data, no tokenizer, no report card
    assert json.loads((home / "speedrun" / "tiny.json").read_text())["completed"] == ["data"]
    assert "note:" not in result.out


def test_nproc_on_a_preset_without_distributed_stages_says_so(home, cli):
    result = cli("speedrun", "--preset", "demo", "--dry-run", "--nproc", "2")
    assert result.code == 0, result.err
    assert result.out.splitlines()[1] == "note: preset demo has no distributed stages: every stage runs in one process"
    assert "note:" not in cli("speedrun", "--preset", "demo", "--dry-run", "--nproc", "1").out


def test_a_preset_without_description_is_headed_by_its_name(home, cli, tmp_path):
    preset = tmp_path / "plain.yaml"
    preset.write_text("stages:\n  - name: info\n    run: info\n")
    dry = cli("speedrun", "--preset", preset, "--dry-run")
    assert dry.out.splitlines()[0] == "speedrun plain (dry run, nothing is run)"
    result = cli.run("speedrun", "--preset", preset)
    assert result.code == 0, result.err
    assert result.out.splitlines()[0] == "speedrun plain"


def test_a_relative_home_is_made_absolute(home, tmp_path, monkeypatch):
    """A stage or command started in another folder must find the same home."""
    from primechat.common import home_dir

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PRIMECHAT_HOME", "relhome")
    assert home_dir() == tmp_path.resolve() / "relhome"


def test_distributed_stages_run_under_torchrun(home, cli, tmp_path):
    """Stages marked distributed run on every process (torchrun; gloo on the CPU here, NCCL on GPUs)."""
    preset = tmp_path / "two.yaml"
    text = PRESET.format(steps=4).replace("--total-batch-size 128", "--total-batch-size 256")
    preset.write_text(text.replace("  - name: base\n", "  - name: base\n    distributed: true\n"))
    result = cli.run("speedrun", "--preset", preset, "--nproc", "2", timeout=300)
    assert result.code == 0, result.out + result.err
    assert "torch.distributed.run --standalone --nproc_per_node=2 --shutdown-timeout=600 -m primechat.train.base" in result.out
    meta = json.loads((home / "base_checkpoints" / "d1" / "meta_000004.json").read_text())
    assert meta["world_size"] == 2
    assert cli("speedrun", "--preset", preset, "--nproc", "0").code == 2
    # a bad flag in a distributed stage: the rank's one-line reason comes through torchrun's report
    preset.write_text(preset.read_text().replace("--num-iterations 4", "--num-iterations 8 --depth 0"))
    failed = cli.run("speedrun", "--preset", preset, "--nproc", "2", "--restart", timeout=300)
    assert failed.code == 2 and "stage base failed: --depth 0" in failed.err.strip().splitlines()[-1]


def test_a_distributed_stage_must_name_a_command(home, cli, tmp_path):
    preset = tmp_path / "odd.yaml"
    preset.write_text("stages:\n  - name: odd\n    distributed: true\n    run: --depth 4\n")
    result = cli.run("speedrun", "--preset", preset, "--nproc", "2")
    assert result.code == 2 and "stage odd: '--depth 4' does not start with a primechat command" in result.err


def test_unknown_preset_is_a_user_error(home, cli):
    result = cli("speedrun", "--preset", "no-such-preset")
    assert result.code == 2 and "no preset 'no-such-preset'" in result.err and "demo, gpt2" in result.err
    assert "demo-chat" not in result.err  # a chat mixture, not a preset


def test_resumed_training_equals_uninterrupted(home, cli, tmp_path):
    """The stop/rerun path gives the same model as a run that was never stopped."""
    preset = write_preset(tmp_path, steps=30)
    assert cli.run("speedrun", "--preset", preset).code == 0
    uninterrupted = torch.load(home / "base_checkpoints" / "d1" / "model_000030.pt")
    for step in (20, 30):  # forget the end of the run, as if it had stopped at step 10
        for f in (home / "base_checkpoints" / "d1").glob(f"*_{step:06d}*"):
            f.unlink()
    (home / "speedrun" / "tiny.json").write_text(json.dumps({"completed": ["data", "tokenizer"]}))
    assert cli.run("speedrun", "--preset", preset).code == 0
    resumed = torch.load(home / "base_checkpoints" / "d1" / "model_000030.pt")
    assert all(torch.equal(uninterrupted[k], resumed[k]) for k in uninterrupted)


def test_shipped_presets_are_valid_command_lines():
    """Every stage of every shipped preset parses as a `primechat` command (a typo in a flag fails here, not an
    hour into a run)."""
    import shlex

    import yaml

    from primechat.cli import build_parser
    from primechat.common import CONFIGS_DIR

    presets = [p for p in CONFIGS_DIR.glob("*.yaml") if "stages" in yaml.safe_load(p.read_text())]
    assert {"demo", "cpu", "d20", "gpt2", "d32"} <= {p.stem for p in presets}
    for path in presets:
        assert yaml.safe_load(path.read_text())["stages"][-1]["run"] == "report", f"{path.name} ends without a card"
        for stage in yaml.safe_load(path.read_text())["stages"]:
            words = shlex.split(stage["run"])
            try:
                build_parser(words).parse_args(words)
            except SystemExit:
                raise AssertionError(f"{path.name}: stage {stage['name']}: `primechat {stage['run']}` does not parse")


# Flags appended to the demo preset's stages (argparse keeps the last value of a flag): the same pipeline, tiny.
SHRINK_DEMO = {
    "data": "",
    "tokenizer": "--vocab-size 300 --max-chars 300000",
    "tokenizer-eval": "",
    "base": "--depth 1 --aspect-ratio 32 --head-dim 16 --max-seq-len 128 --device-batch-size 2 --total-batch-size 256 "
            "--num-iterations 20 --warmup-steps 2 --eval-every 10 --eval-tokens 512 --save-every 10",
    "base-eval": "--device-batch-size 2 --split-tokens 512",
    "mid": "--num-iterations 60 --eval-every 30 --eval-tokens 512 --metrics-max-problems 4 --save-every 5",
    "mid-eval": "-x 4 -m 16",
    "sft": "--num-iterations 4 --eval-every 2 --eval-tokens 512 --metrics-max-problems 4 --save-every 2",
    "sft-eval": "-x 4 -m 16",
    "rl": "--examples-per-step 2 --num-samples 2 --device-batch-size 2 --max-new-tokens 16 --num-iterations 2 --eval-every 1 "
          "--eval-examples 4 --eval-samples 2 --save-every 1",
    "rl-eval": "-x 4 -m 16",
    "report": "",
}


def test_demo_preset_end_to_end_stopped_and_resumed(home, cli, tmp_path):
    """The shipped demo pipeline at toy size: stopped (SIGTERM) in the middle of mid-training, run again, it finishes
    every stage and leaves a report card with every stage's section, the summary and the pictures."""
    import re

    import yaml

    from primechat.common import CONFIGS_DIR

    preset = yaml.safe_load((CONFIGS_DIR / "demo.yaml").read_text())
    assert [s["name"] for s in preset["stages"]] == list(SHRINK_DEMO), "a demo stage changed: update SHRINK_DEMO"
    for stage in preset["stages"]:
        stage["run"] = f"{stage['run']} {SHRINK_DEMO[stage['name']]}".strip()
    path = tmp_path / "tiny-demo.yaml"
    path.write_text(yaml.safe_dump(preset))

    proc = cli.popen("speedrun", "--preset", path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    mid = home / "mid_checkpoints" / "d1"
    deadline = time.time() + 240
    while not list(mid.glob("meta_*.json")):  # mid-training has saved its first checkpoint
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert json.loads((home / "speedrun" / "tiny-demo.json").read_text())["completed"][-1] == "base-eval"
    stopped_at = max(json.loads(f.read_text())["step"] for f in mid.glob("meta_*.json"))
    assert stopped_at < 60

    done = cli.run("speedrun", "--preset", path, timeout=600)
    assert done.code == 0, done.out + done.err
    assert f"from step {stopped_at}" in done.out
    assert json.loads((home / "speedrun" / "tiny-demo.json").read_text())["completed"] == list(SHRINK_DEMO)
    assert (mid / "meta_000060.json").exists()

    card = (home / "report" / "report.md").read_text()
    for title in ("Environment", "Tokenizer training", "Tokenizer evaluation", "Base model training",
                  "Base model loss", "Midtraining", "Chat evaluation mid", "Chat SFT", "Chat evaluation sft",
                  "Chat RL", "Chat evaluation rl", "Speedrun", "Summary"):
        assert f"## {title}" in card, title
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", card)
    assert len(pictures) >= 5  # a loss curve per training stage (base, mid, SFT, RL) and the eval scores' chart
    for name in pictures:
        assert (home / "report" / name).read_bytes().startswith(b"\x89PNG")
    assert "data:image/png;base64," in (home / "report" / "report.html").read_text()
