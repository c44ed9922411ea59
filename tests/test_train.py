"""`primechat train base` end to end, in subprocesses, on a tiny generated corpus and tokenizer.

Covers: what a run leaves behind (metrics, checkpoint, curve, report), bit-for-bit resume (--resume,
--resume-from-step), SIGTERM save and resume, gradient accumulation, 2-process torchrun vs one process with two data
streams, and bad input (exit code 2, one line, nothing damaged).
"""

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from primechat.common import dataset_dir, tokenizer_dir
from primechat.data import shards
from primechat.model import GPT, GPTConfig, config_for_depth
from primechat.tokenizer import train_tokenizer
from primechat.train import checkpoint

REPO_ROOT = Path(__file__).resolve().parents[1]
VOCAB = 384
COMMON = ["--dataset", "tiny", "--depth", "2", "--max-seq-len", "128", "--device-batch-size", "4",
          "--total-batch-size", "1024", "--eval-every", "5", "--eval-tokens", "2048", "--sample-every", "-1",
          "--warmup-steps", "2"]
STEP_FILES = ("model_{s}.pt", "optim_{s}_rank0.pt", "loader_{s}_rank0.pt", "meta_{s}.json")

# ---------------------------------------------------------------------------------------------------------------------
# A tiny corpus: sentences from a small grammar (learnable structure), 3 shards of several row groups each.

NOUNS = "cat dog bird fish horse mouse child farmer teacher sailor king queen robot river garden city".split()
VERBS = "sees likes finds follows paints helps visits carries watches builds".split()
ADJS = "red big small old young happy quiet bright green dark".split()
PLACES = "near the river|in the garden|under the bridge|at the market|on the hill|by the sea".split("|")


def make_docs(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        sentences = []
        for _ in range(rng.randint(1, 4)):
            s = f"The {rng.choice(ADJS)} {rng.choice(NOUNS)} {rng.choice(VERBS)} the {rng.choice(NOUNS)}"
            if rng.random() < 0.5:
                s += " " + rng.choice(PLACES)
            sentences.append(s + ".")
        if rng.random() < 0.3:
            sentences.append(f"It was {rng.randint(1, 99)} years ago.")
        docs.append(" ".join(sentences))
    return docs


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A home folder holding base_data/tiny (2 training shards + validation) and a 384-token tokenizer."""
    root = tmp_path_factory.mktemp("corpus")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRIMECHAT_HOME", str(root))
        folder = dataset_dir("tiny")
        sizes = [2500, 1500, 1100]  # row groups of 1024: 3, 2 and 2 per shard
        docs = make_docs(sum(sizes), seed=0)
        start = 0
        for i, n in enumerate(sizes):
            shards.write_shard(docs[start:start + n], folder / shards.shard_name(i))
            start += n
        train_tokenizer(iter(docs[:4000]), VOCAB).save(tokenizer_dir())
    return root


def make_home(corpus: Path, home: Path, data: bool = True, tokenizer: bool = True) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    if data:
        shutil.copytree(corpus / "base_data", home / "base_data")
    if tokenizer:
        shutil.copytree(corpus / "tokenizer", home / "tokenizer")
    return home


def env_for(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "PRIMECHAT_PROGRESS",
                        "PRIMECHAT_DTYPE")}
    path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    return {**env, "PRIMECHAT_HOME": str(home), "OMP_NUM_THREADS": "1", "PYTHONPATH": path}


def train_command(*args) -> list[str]:
    return [sys.executable, "-m", "primechat.cli", "train", "base", *COMMON, *map(str, args)]


def train(home: Path, *args, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the trainer; later flags override COMMON's (argparse keeps the last)."""
    return subprocess.run(train_command(*args), env=env_for(home), capture_output=True, text=True, timeout=timeout)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def assert_user_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit code 2 and exactly one line on stderr, `primechat: error: ...`, with no traceback."""
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("primechat: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def ckpt(home: Path, tag: str = "d2") -> Path:
    return home / "base_checkpoints" / tag


def metrics(home: Path, tag: str = "d2") -> list[dict]:
    return [json.loads(line) for line in (ckpt(home, tag) / "metrics.jsonl").read_text().splitlines()]


def load_model(home: Path, step: int, tag: str = "d2") -> dict:
    return torch.load(ckpt(home, tag) / f"model_{step:06d}.pt", weights_only=True)


def assert_same_tensors(a, b, path="state"):
    """Nested dicts/lists of tensors and plain values, equal bit for bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, path
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_same_tensors(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


def snapshot(folder: Path) -> dict:
    """Every file under folder -> (size, mtime_ns, sha256), to show nothing was touched."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns,
                                         hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def step_files(folder: Path, step: int) -> list[Path]:
    return [p for p in folder.iterdir() if f"_{step:06d}" in p.name]


def delete_step(folder: Path, step: int):
    for pattern in STEP_FILES:
        (folder / pattern.format(s=f"{step:06d}")).unlink()


# ---------------------------------------------------------------------------------------------------------------------
# Run A: 12 steps, uninterrupted; the reference for several tests.

@pytest.fixture(scope="module")
def run_a(corpus, tmp_path_factory):
    home = make_home(corpus, tmp_path_factory.mktemp("run_a") / "home")
    result = ok(train(home, "--num-iterations", 12))
    return home, result


def test_a_run_leaves_metrics_checkpoint_curve_and_report(run_a):
    home, result = run_a
    folder = ckpt(home)
    records = metrics(home)
    steps = [r["step"] for r in records if "loss" in r]
    assert steps == list(range(1, 13))
    evals = [(r["step"], r["val_bpb"]) for r in records if "val_bpb" in r]
    assert [s for s, _ in evals] == [0, 5, 10, 12]
    train_losses = [r["raw_loss"] for r in records if "loss" in r]
    assert train_losses[-1] < train_losses[0] - 0.3  # the loss falls
    assert evals[-1][1] < evals[0][1] - 0.1  # and so does validation bpb
    assert all(0 < bpb < 10 for _, bpb in evals)

    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [f.format(s="000012") for f in STEP_FILES] + ["metrics.jsonl", "loss_curve.png", ".lock"])
    meta = json.loads((folder / "meta_000012.json").read_text())
    assert meta["step"] == 12
    assert meta["val_bpb"] == evals[-1][1]
    assert meta["model_config"] == config_for_depth(2, VOCAB, 128).to_dict()
    assert meta["user_config"]["depth"] == 2 and meta["user_config"]["num_iterations"] == 12
    assert meta["loop_state"]["min_val_bpb"] == min(bpb for _, bpb in evals)
    assert meta["plan"]["grad_accum"] == 1024 // (4 * 128)

    # the saved weights load into the configured model
    model = GPT(GPTConfig(**meta["model_config"]))
    model.load_state_dict(load_model(home, 12))

    assert (folder / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (home / "report" / "base-model-training.md").read_text()
    assert report.startswith("## Base model training")
    assert "- steps: 12" in report and "final validation bpb" in report
    assert "- dataset: tiny (2 training shards)" in report


def test_save_and_resume_bit_for_bit(run_a, corpus, tmp_path):
    home_a, _ = run_a
    home = make_home(corpus, tmp_path / "home")
    folder = ckpt(home)
    ok(train(home, "--num-iterations", 12, "--save-every", 6))
    assert sorted(int(p.stem.split("_")[1]) for p in folder.glob("meta_*.json")) == [6, 12]
    delete_step(folder, 12)

    resumed = ok(train(home, "--num-iterations", 12, "--save-every", 6, "--resume"))
    assert "resuming" in resumed.stdout and "flags changed" not in resumed.stdout
    expected = load_model(home_a, 12)
    assert_same_tensors(load_model(home, 12), expected, "model")
    for kind in ("optim", "loader"):
        assert_same_tensors(torch.load(folder / f"{kind}_000012_rank0.pt", weights_only=False),
                            torch.load(ckpt(home_a) / f"{kind}_000012_rank0.pt", weights_only=False), kind)
    # the metrics read as if the run had never stopped: no duplicated steps, the same losses
    strip = lambda rs: [(r["step"], r.get("raw_loss"), r.get("val_bpb")) for r in rs]  # noqa: E731
    assert strip(metrics(home)) == strip(metrics(home_a))

    # an explicit step works too; the replaced run's step 12 is set aside, not left as the latest nor lost
    replaced_12 = {p.name: p.read_bytes() for p in step_files(folder, 12)}
    branch = ok(train(home, "--num-iterations", 12, "--save-every", 6, "--resume-from-step", 6))
    aside = [p for p in folder.iterdir() if p.is_dir()]
    assert len(aside) == 1 and aside[0].name.startswith("replaced_6_"), aside
    assert f"step 12 came from the run being replaced (resuming from step 6): moved to {aside[0]}" in branch.stdout
    assert {p.name: p.read_bytes() for p in step_files(aside[0], 12)} == replaced_12
    assert (aside[0] / "metrics.jsonl").exists()  # its log too, which the new run cuts back to step 6
    shutil.rmtree(aside[0])
    assert_same_tensors(load_model(home, 12), expected, "model")
    # a resume with another learning rate trains something else: it says so
    changed = ok(train(home, "--num-iterations", 12, "--save-every", 6, "--resume-from-step", 6, "--matrix-lr", 0.03))
    assert "note: flags changed since step 6 was saved: --matrix-lr 0.02 → 0.03" in changed.stdout
    ok(train(home, "--num-iterations", 12, "--save-every", 6, "--resume-from-step", 6))  # back to the original
    # and a step that was never saved is a one-line error
    before = snapshot(folder)
    line = assert_user_error(train(home, "--num-iterations", 12, "--resume-from-step", 7), "step 7")
    assert "6, 12" in line
    assert snapshot(folder) == before
    # and a resume from step 6 that a later check refuses moves nothing aside: step 12 stays the latest
    assert_user_error(train(home, "--num-iterations", 12, "--resume-from-step", 6, "--attention", "fa3"), "fa3")
    assert snapshot(folder) == before


def assert_same_training(home: Path, reference: Path, step: int):
    """Two runs that should compute the same thing, up to float32 summation order.

    Tight where float32 allows: the loss of every step and every validation bpb (to 5e-5; runs on other data differ
    by 1e-4 to 1e-2), and every matrix, embedding and head to 1e-3 relative (Frobenius; other data: 5e-3 and up;
    observed here: ~1e-4). Not the 1-D scalars: at init the output does not depend on resid/x0/backout lambdas (zero
    output projections + final norm), so their first gradients are float32 rounding noise (~1e-11, exactly 0 in
    float64) that AdamW with eps=1e-10 turns into steps of up to ±lr whose sign depends on summation order.
    """
    for key in ("raw_loss", "val_bpb"):
        ours = [(r["step"], r[key]) for r in metrics(home) if key in r]
        theirs = [(r["step"], r[key]) for r in metrics(reference) if key in r]
        assert [s for s, _ in ours] == [s for s, _ in theirs]
        for (s, a), (_, b) in zip(ours, theirs):
            assert abs(a - b) < 5e-5, f"{key} at step {s}: {a} vs {b}"
    got, expected = load_model(home, step), load_model(reference, step)
    assert got.keys() == expected.keys()
    for name, ref in expected.items():
        if ref.ndim >= 2:
            rel = ((got[name] - ref).norm() / ref.norm()).item()
            assert rel < 1e-3, f"{name}: relative difference {rel:.2e}"


def test_resume_with_a_longer_horizon_says_the_schedule_changes(run_a, corpus, tmp_path):
    home = make_home(corpus, tmp_path / "home")
    shutil.copytree(ckpt(run_a[0]), ckpt(home))
    with open(ckpt(home) / "metrics.jsonl", "a") as f:
        f.write('{"step": 13, "loss": 8.2')  # the half line a run killed mid-write leaves
    result = ok(train(home, "--num-iterations", 14, "--resume"))
    assert "the saved run had 12 steps, this one 14: the learning-rate schedule changes from step 12 on" in \
        result.stdout
    assert "had a damaged line, dropped" in result.stdout
    assert [r["step"] for r in metrics(home) if "loss" in r][-3:] == [12, 13, 14]


def test_resume_with_a_model_tag_takes_the_saved_runs_flags(run_a, corpus, tmp_path):
    """`train base --model-tag T --resume` continues run T without its flags typed again; typed ones override."""
    home = make_home(corpus, tmp_path / "home")
    shutil.copytree(ckpt(run_a[0]), ckpt(home, "mine"))
    bare = [sys.executable, "-m", "primechat.cli", "train", "base", "--model-tag", "mine", "--num-iterations", 13]
    run = lambda *args: subprocess.run([*map(str, bare), *map(str, args)], env=env_for(home),  # noqa: E731
                                       capture_output=True, text=True, timeout=300)
    result = ok(run("--resume"))
    taken = next(line for line in result.stdout.splitlines() if line.startswith("continuing mine with its flags"))
    assert "from step 12 where not typed" in taken and "--depth 2" in taken and "--dataset tiny" in taken
    assert "--num-iterations" not in taken and "resuming" in result.stdout and "flags changed" not in result.stdout
    saved = json.loads((ckpt(home, "mine") / "meta_000013.json").read_text())["user_config"]
    assert saved == {**json.loads((ckpt(run_a[0]) / "meta_000012.json").read_text())["user_config"],
                     "model_tag": "mine", "num_iterations": 13, "resume": True}
    changed = ok(run("--resume-from-step", 12, "--matrix-lr", 0.03))
    assert "note: flags changed since step 12 was saved: --matrix-lr 0.02 → 0.03" in changed.stdout


def test_a_warmup_longer_than_the_run_before_warmdown_is_pointed_out(run_a, corpus, tmp_path):
    assert "note: --warmup-steps" not in run_a[1].stdout  # 2 warmup steps, warmdown from step 4 of 12
    home = make_home(corpus, tmp_path / "home")
    result = ok(train(home, "--num-iterations", 4, "--warmup-steps", 3, "--eval-every", -1))
    assert "note: --warmup-steps 3 runs past the warmdown's start (step 1 of 4)" in result.stdout
    # a warmup longer than the whole run never drops abruptly: the LR only rises
    shutil.rmtree(ckpt(home))
    result = ok(train(home, "--num-iterations", 2, "--warmup-steps", 3, "--eval-every", -1))
    assert "note: warmup (3 steps) is longer than the run (2 steps)" in result.stdout
    assert "drops abruptly" not in result.stdout


def test_training_time_leaves_out_warm_up_steps_but_not_a_short_runs_steps(run_a, corpus, tmp_path):
    """The first steps (compilation, warm-up) are left out of the training time, as nanochat's first 10, but at
    most a tenth of the run: a 3-step run's training time is its 3 steps', not 0."""
    home = make_home(corpus, tmp_path / "home")
    ok(train(home, "--num-iterations", 3, "--eval-every", -1))
    steps = [r for r in metrics(home) if "loss" in r]
    assert 0 < steps[-1]["training_time"] == pytest.approx(sum(r["dt"] for r in steps))
    assert json.loads((ckpt(home) / "meta_000003.json").read_text())["loop_state"]["training_time"] > 0
    steps = [r for r in metrics(run_a[0]) if "loss" in r]  # 12 steps: the first one is warm-up
    assert steps[-1]["training_time"] == pytest.approx(sum(r["dt"] for r in steps[1:]))


def test_later_steps_of_a_replaced_run_move_aside_and_listing_ignores_them(tmp_path, capsys):
    """Unit test of checkpoint.set_aside_later_steps: every per-step file after the resumed step moves (meta, model,
    each rank's optimizer and loader, anything else named <kind>_<step>...), nothing else does."""
    folder = tmp_path / "base_checkpoints" / "d2"
    folder.mkdir(parents=True)
    names = [f.format(s=f"{s:06d}") for s in (10, 20, 24, 30) for f in STEP_FILES]
    names += ["optim_000030_rank1.pt", "loader_000030_rank1.pt", "metrics.jsonl", "loss_curve.png"]
    for name in names:
        (folder / name).write_text(name)
    checkpoint.set_aside_later_steps(folder, 20, rank=0)
    aside = next(p for p in folder.iterdir() if p.is_dir())
    assert sorted(p.name for p in aside.iterdir()) == sorted(
        [n for n in names if "_000024" in n or "_000030" in n] + ["metrics.jsonl"])
    assert all((aside / p.name).read_text() == p.name for p in aside.iterdir() if p.name != "metrics.jsonl")
    assert checkpoint.saved_steps(folder) == [10, 20]  # the subfolder is not read as steps
    assert (folder / "metrics.jsonl").exists() and (folder / "loss_curve.png").exists()
    assert f"steps 24, 30 came from the run being replaced (resuming from step 20): moved to {aside}" in \
        capsys.readouterr().out
    checkpoint.set_aside_later_steps(folder, 20, rank=0)  # nothing later: nothing moves, nothing printed
    assert len([p for p in folder.iterdir() if p.is_dir()]) == 1 and capsys.readouterr().out == ""


def test_flags_that_cannot_change_the_numbers_are_not_called_changes():
    saved = {"model_tag": None, "output_tag": None, "eval_every": 250, "save_every": -1, "sample_every": 2000,
             "metrics_every": 300, "wandb": None, "run": "dummy", "matrix_lr": 0.02}
    now = {"model_tag": "d2", "output_tag": "d2-b", "eval_every": 5, "save_every": 6, "sample_every": -1,
           "metrics_every": 2, "wandb": "proj", "run": "d20-speedrun", "matrix_lr": 0.02}
    assert checkpoint.changed_flags(saved, now) == []
    assert checkpoint.changed_flags(saved, {**now, "matrix_lr": 0.03}) == ["--matrix-lr 0.02 → 0.03"]


@pytest.mark.parametrize("stage", ["base", "mid", "sft", "rl"])
def test_run_names_a_weights_and_biases_run_as_nanochats_does(stage, tmp_path, monkeypatch):
    """nanochat's --run NAME logs to W&B (here in project primechat unless --wandb names one); its default, dummy,
    means no W&B; --wandb PROJECT alone names the run after the model."""
    from primechat.cli import build_parser
    from primechat.common import UserError
    from primechat.train.loop import RunLog

    inits = []
    monkeypatch.setitem(sys.modules, "wandb", argparse.Namespace(init=lambda **kw: inits.append(kw)))

    def wandb_init(*flags):
        words = ["train", stage, *flags]
        inits.clear()
        RunLog(tmp_path / "metrics.jsonl", None, build_parser(words).parse_args(words), "d2", {})
        return [(kw["project"], kw["name"]) for kw in inits]

    assert wandb_init() == [] and wandb_init("--run", "dummy") == []
    assert wandb_init("--run", "speedrun") == [("primechat", "speedrun")]
    assert wandb_init("--run=speedrun", "--wandb", "mine") == [("mine", "speedrun")]
    assert wandb_init("--wandb", "mine") == [("mine", "d2")]
    # not installed: every process says so at start-up, before data and model are loaded
    from primechat.train import base, chat
    monkeypatch.setitem(sys.modules, "wandb", None)
    words = ["train", stage, "--run", "speedrun"]
    check_arguments = base.check_arguments if stage == "base" else chat.check_arguments
    with pytest.raises(UserError, match=r"Weights & Biases \(asked for by --run\) is not installed: pip install"):
        check_arguments(build_parser(words).parse_args(words))


def test_gradient_accumulation_gives_the_same_result(run_a, corpus, tmp_path):
    """--device-batch-size 2 (4 micro-batches) trains on the same rows as 4 (2 micro-batches)."""
    home_a, _ = run_a
    home = make_home(corpus, tmp_path / "home")
    ok(train(home, "--num-iterations", 12, "--device-batch-size", 2))
    meta = json.loads((ckpt(home) / "meta_000012.json").read_text())
    assert meta["plan"]["grad_accum"] == 4
    assert_same_training(home, home_a, 12)



def test_arch_nanochat_2025_trains_the_model_an_oct_2025_import_would_be(corpus, tmp_path):
    """--arch nanochat-2025 is nanochat's Oct 2025 model, trained the same way, so that the two designs compare on
    one budget: exactly the model primechat makes of a nanochat Oct 2025 checkpoint of that size."""
    from primechat.interop.nanochat import convert_config
    home = make_home(corpus, tmp_path / "home")
    result = ok(train(home, "--num-iterations", 12, "--arch", "nanochat-2025", "--aspect-ratio", 32, "--head-dim", 32))
    assert "d2, nanochat-2025 (Oct 2025: whole-prefix attention" in result.stdout  # the start-up table says which
    assert "params: value_embeds" not in result.stdout  # rows of what this model does not have are left out
    meta = json.loads((ckpt(home) / "meta_000012.json").read_text())
    state = load_model(home, 12)
    assert not any(name.startswith(("value_embeds", "smear", "backout", "resid_lambdas")) for name in state)
    sizes = {k: meta["model_config"][k] for k in ("sequence_len", "vocab_size", "n_layer", "n_head", "n_kv_head",
                                                  "n_embd")}
    assert sizes == dict(sequence_len=128, vocab_size=VOCAB, n_layer=2, n_head=2, n_kv_head=2, n_embd=64)
    assert meta["model_config"] == convert_config(state, sizes, layout="oct2025")[0].to_dict()
    losses = [r["raw_loss"] for r in metrics(home) if "loss" in r]
    assert losses[-1] < losses[0] - 0.3


def test_the_start_up_table_expects_the_time_of_training_and_of_each_validation(run_a):
    _, result = run_a
    assert "d2, primechat (windows SSSL: 128, 128)" in result.stdout
    rows = {line.strip().split("  ")[0]: line for line in result.stdout.splitlines() if line.startswith("  ")}
    assert "TFLOP/s" in rows["expected time"]
    assert "4 × 2,048 tokens" in rows["of which validation"]  # steps 0, 5, 10 and the last, 12
    assert "CPU" in rows["speed comes from"]


def test_schedules_warm_up_hold_and_warm_down():
    from primechat.train.base import lr_multiplier, muon_momentum, weight_decay_multiplier
    args = argparse.Namespace(warmup_steps=10, warmdown_ratio=0.5, final_lr_frac=0.05)
    lrm = [lr_multiplier(step, args, 100) for step in range(101)]
    assert lrm[0] == pytest.approx(0.1) and lrm[9] == 1.0  # linear warmup
    assert set(lrm[9:51]) == {1.0}  # constant until the last half
    assert all(a > b for a, b in zip(lrm[50:], lrm[51:])) and lrm[100] == pytest.approx(0.05)  # down to the floor
    momentum = [muon_momentum(step, args, 1000) for step in range(1001)]  # a ramp over 400 steps, so a longer run
    assert momentum[0] == pytest.approx(0.85) and all(m == pytest.approx(0.97) for m in momentum[400:501])
    assert momentum[1000] == pytest.approx(0.90)
    assert weight_decay_multiplier(0, 100) == 1.0 and weight_decay_multiplier(100, 100) == pytest.approx(0.0)


def test_expected_time_counts_the_validations_left_and_says_when_they_dominate():
    from primechat.train.base import Plan, expected_time
    plan = Plan(total_batch=1000, grad_accum=1, num_steps=100, batch_lr_scale=1.0, weight_decay=0.0,
                target_tokens=100_000, flops_per_token=1e6)
    cpu = torch.device("cpu")
    light = dict(expected_time(plan, argparse.Namespace(eval_every=25, eval_tokens=1000), 0, cpu, 1))
    assert "5 × 1,000 tokens" in light["  of which validation"] and "--eval-tokens" not in light["  of which validation"]
    heavy = dict(expected_time(plan, argparse.Namespace(eval_every=25, eval_tokens=100_000), 50, cpu, 1))
    assert "2 × 100,000 tokens" in heavy["  of which validation"]  # 75 and 100: step 50 was evaluated before saving
    assert "lower --eval-tokens" in heavy["  of which validation"] and "expected time from step 50" in heavy

# ---------------------------------------------------------------------------------------------------------------------
# SIGTERM: save where it stopped, resume to the same end result.

SIG_ARGS = ["--max-seq-len", "64", "--device-batch-size", "2", "--total-batch-size", "128", "--num-iterations", 80,
            "--eval-every", "7", "--eval-tokens", "256", "--save-every", "-1"]


def test_sigterm_saves_and_resume_matches_an_uninterrupted_run(corpus, tmp_path):
    home = make_home(corpus, tmp_path / "stopped")
    home_ref = make_home(corpus, tmp_path / "reference")
    folder = ckpt(home)
    out = open(tmp_path / "stopped.out", "w")
    proc = subprocess.Popen(train_command(*SIG_ARGS), env=env_for(home), stdout=out, stderr=subprocess.STDOUT)
    reference = subprocess.Popen(train_command(*SIG_ARGS), env=env_for(home_ref), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)  # meanwhile, on the other core
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            path = folder / "metrics.jsonl"
            if path.exists() and sum('"loss"' in line for line in path.read_text().splitlines()) >= 3:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be interrupted"
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=120)
        log = (tmp_path / "stopped.out").read_text()
        assert code == 128 + signal.SIGTERM, log[-3000:]
        assert "--resume" in log

        saved = sorted(int(p.stem.split("_")[1]) for p in folder.glob("meta_*.json"))
        assert len(saved) == 1
        stopped_at = saved[0]
        assert 3 <= stopped_at < 80
        for pattern in STEP_FILES:
            assert (folder / pattern.format(s=f"{stopped_at:06d}")).exists()
        meta = json.loads((folder / f"meta_{stopped_at:06d}.json").read_text())
        assert meta["step"] == stopped_at
        assert max(r["step"] for r in metrics(home)) == stopped_at
        measured = max(r["step"] for r in metrics(home) if "val_bpb" in r)  # the last validation before the stop
        assert meta["val_bpb_step"] == measured and measured <= stopped_at

        ok(train(home, *SIG_ARGS, "--resume"))
        assert reference.wait(timeout=300) == 0
    finally:
        for child in (proc, reference):
            if child.poll() is None:
                child.kill()
                child.wait()
        out.close()
    assert_same_tensors(load_model(home, 80), load_model(home_ref, 80), "model")
    assert [r["step"] for r in metrics(home) if "loss" in r] == list(range(1, 81))


# ---------------------------------------------------------------------------------------------------------------------
# Two processes (torchrun, gloo) == one process with two data streams.

def test_torchrun_two_processes_match_one_process_with_two_streams(corpus, tmp_path):
    args = ["--num-iterations", 8]
    home_dist = make_home(corpus, tmp_path / "dist")
    home_one = make_home(corpus, tmp_path / "one")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "primechat.train.base", *COMMON, *map(str, args)]
    dist_proc = subprocess.Popen(command, env=env_for(home_dist), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True)
    try:
        single = train(home_one, *args, "--data-streams", 2)
        out, _ = dist_proc.communicate(timeout=300)
    finally:
        if dist_proc.poll() is None:
            dist_proc.kill()
            dist_proc.wait()
    assert dist_proc.returncode == 0, out[-4000:]
    ok(single)

    folder = ckpt(home_dist)
    for name in ("model_000008.pt", "meta_000008.json", "optim_000008_rank0.pt", "optim_000008_rank1.pt",
                 "loader_000008_rank0.pt", "loader_000008_rank1.pt"):
        assert (folder / name).exists(), name
    assert not (ckpt(home_one) / "optim_000008_rank1.pt").exists()
    meta_dist = json.loads((folder / "meta_000008.json").read_text())
    meta_one = json.loads((ckpt(home_one) / "meta_000008.json").read_text())
    assert meta_dist["world_size"] == 2 and meta_one["world_size"] == 1
    assert (meta_dist["plan"]["grad_accum"], meta_one["plan"]["grad_accum"]) == (1, 2)

    assert_same_training(home_dist, home_one, 8)
    # the optimizer state is split across the processes: a resume needs as many
    assert_user_error(train(home_dist, *args, "--resume"), "saved by 2 process(es), this run has 1",
                      "under torchrun with 2 processes")
    # Here even the noise-driven scalars agree: each process's micro-batch is the one process's micro-batch, and
    # (g0 + g1) / 2 all-reduced equals g0/2 + g1/2 accumulated (halving is exact in binary floating point).
    expected, got = load_model(home_one, 8), load_model(home_dist, 8)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=0, msg=name)


def test_fp8_training_learns_like_the_exact_matmuls(run_a, corpus, tmp_path):
    """--fp8 on the CPU (torch._scaled_mm, what H100s run on fp8 tensor cores): same schedule as run A."""
    home = make_home(corpus, tmp_path / "home")
    result = ok(train(home, "--num-iterations", 12, "--fp8"))
    assert "fp8 matmuls" in result.stdout and "12 matrices" in result.stdout  # d2: 6 per block
    fp8_bpb = [r["val_bpb"] for r in metrics(home) if "val_bpb" in r]
    exact_bpb = [r["val_bpb"] for r in metrics(run_a[0]) if "val_bpb" in r]
    assert fp8_bpb[-1] < fp8_bpb[0] - 0.1  # it learns
    assert fp8_bpb[-1] != exact_bpb[-1] and abs(fp8_bpb[-1] - exact_bpb[-1]) < 0.05  # about as well, not identically
    assert "emulated on the CPU" in result.stdout and "note: --fp8 on a CPU" in result.stdout  # not a speed-up
    state = load_model(home, 12)  # the checkpoint is an ordinary one
    assert {k: v.dtype for k, v in state.items()} == {k: v.dtype for k, v in load_model(run_a[0], 12).items()}


# ---------------------------------------------------------------------------------------------------------------------
# Bad input: exit code 2, one line, nothing damaged.

@pytest.mark.parametrize("flags,fragment", [
    (["--attention", "fa3"], "--attention fa3 needs a CUDA GPU"),
    (["--attention", "flex"], "--attention flex needs a CUDA GPU"),
    (["--fp8", "--max-seq-len", 127, "--total-batch-size", 508], "multiple of 16"),
    (["--device-type", "gpu"], "use cuda, mps or cpu"),
    (["--device-type", "mps"], "no Apple GPU"),
], ids=["fa3-on-cpu", "flex-on-cpu", "fp8-odd-shape", "unknown-device", "mps-missing"])
def test_speed_flags_the_device_cannot_honour(corpus, home, flags, fragment):
    make_home(corpus, home)
    assert_user_error(train(home, "--num-iterations", 2, *flags), fragment)
    assert not list(home.glob("base_checkpoints/*/*_*"))  # no checkpoint (the tag's lock is all it took)


@pytest.mark.parametrize("flags,fragment", [
    (["--model-tag", "a/b"], "--model-tag 'a/b' is not a plain name"),
    (["--model-tag", ".."], "--model-tag '..' is not a plain name"),
    (["--model-tag", ".hidden"], "is not a plain name"),
    (["--data-streams", -1], "--data-streams -1: give 1 or more"),
    (["--data-streams", 0], "--data-streams 0: give 1 or more"),
    (["--warmdown-ratio", 2], "--warmdown-ratio 2.0 is outside [0, 1]"),
    (["--final-lr-frac", -3], "--final-lr-frac -3.0 is outside [0, 1]"),
    (["--matrix-lr", -1], "--matrix-lr -1.0 is negative"),
    (["--embedding-lr", -0.1], "--embedding-lr -0.1 is negative"),
    (["--warmup-steps", -1], "--warmup-steps -1 is negative"),
    (["--fp8", "--fp8-recipe", "rowwise"], "--fp8-recipe rowwise: only tensorwise is built"),
], ids=["tag-slash", "tag-dotdot", "tag-dot", "streams-negative", "streams-zero", "warmdown", "final-lr-frac",
        "matrix-lr", "embedding-lr", "warmup", "fp8-rowwise"])
def test_bad_flags_are_one_line_before_anything_is_built(home, cli, flags, fragment):
    """In-process and fast: the flags are checked before the tokenizer, the data or the model are looked at (this
    home has none of them)."""
    result = cli("train", "base", *COMMON, "--num-iterations", 2, *flags)
    assert result.code == 2, (result.out, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], result.err
    assert not (home / "base_checkpoints").exists()


def test_data_streams_the_processes_cannot_share_are_one_line_at_start_up(home, cli, monkeypatch):
    """Under torchrun (its environment faked: 2 processes) --data-streams 3 is refused before anything is built, not
    by the data loader after the model is."""
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = cli("train", "base", *COMMON, "--num-iterations", 2, "--data-streams", 3)
    assert result.code == 2, (result.out, result.err)
    assert result.err.strip() == ("primechat: error: --data-streams 3 must be a multiple of the 2 processes: change "
                                  "it (or leave it out: one per process)")
    assert not (home / "base_checkpoints").exists()


def test_missing_tokenizer(corpus, home):
    make_home(corpus, home, tokenizer=False)
    data_before = snapshot(home / "base_data")
    assert_user_error(train(home, "--num-iterations", 2), "tokenizer")
    assert not (home / "base_checkpoints").exists()
    assert snapshot(home / "base_data") == data_before


def test_missing_dataset(corpus, home):
    make_home(corpus, home)
    assert_user_error(train(home, "--num-iterations", 2, "--dataset", "nonexistent"), "nonexistent")
    assert not (home / "base_checkpoints").exists()
    assert not (home / "base_data" / "nonexistent").exists()


def test_total_batch_not_divisible(corpus, home):
    make_home(corpus, home)
    assert_user_error(train(home, "--num-iterations", 2, "--total-batch-size", 1000), "1000")
    assert not (home / "base_checkpoints").exists()


@pytest.mark.parametrize("flags,fragment", [
    (["--num-iterations", 12], "--resume"),  # a new run into a tag that has checkpoints
    (["--num-iterations", 12, "--depth", 1, "--model-tag", "d2", "--resume"],
     "model config (n_layer differ: flags --depth 2 → 1)"),  # another model, and the flag that made it
    (["--num-iterations", 8, "--resume"], "the checkpoint is at step 12, past this run's 8 steps"),
    (["--num-iterations", 12, "--resume"], "older primechat"),  # a loader state in the format before data streams
], ids=["existing-tag", "depth-mismatch", "horizon-before-checkpoint", "old-loader-state"])
def test_existing_checkpoints_are_left_alone(run_a, corpus, home, flags, fragment, request):
    make_home(corpus, home)
    shutil.copytree(ckpt(run_a[0]), ckpt(home), copy_function=shutil.copy2)
    if request.node.callspec.id == "old-loader-state":
        loader_file = ckpt(home) / "loader_000012_rank0.pt"
        state = torch.load(loader_file, weights_only=False)["streams"][0]
        state["rank"], state["world"] = state.pop("stream"), state.pop("num_streams")
        torch.save(state, loader_file)
    before = snapshot(ckpt(home))
    assert_user_error(train(home, *flags), fragment)
    assert snapshot(ckpt(home)) == before
    assert not (home / "base_checkpoints" / "d1").exists()


def _resume_point_worker(rank, world, init_file, homes, results):
    import torch.distributed as dist
    from primechat.common import UserError
    from primechat.train.checkpoint import resume_point
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        resume_point(Path(homes[rank]), True, -1, "from scratch", rank, torch.device("cpu"))
        results.put((rank, "resumed"))
    except UserError as e:
        results.put((rank, str(e)))
    finally:
        dist.destroy_process_group()


def test_ranks_that_see_different_checkpoints_refuse_together(tmp_path):
    """Nodes without a shared home: one rank would resume while another started afresh, and their collectives would
    never match. Every rank says why instead."""
    import torch.multiprocessing as mp
    homes = [tmp_path / "node0", tmp_path / "node1"]
    for home in homes:
        home.mkdir()
    (homes[0] / "meta_000010.json").write_text("{}")  # only node 0 holds the saved step
    results = mp.get_context("spawn").SimpleQueue()
    mp.spawn(_resume_point_worker, args=(2, str(tmp_path / "rendezvous"), [str(h) for h in homes], results),
             nprocs=2, join=True)
    answers = dict(results.get() for _ in range(2))
    assert all("filesystem that every node shares" in answers[r] for r in (0, 1)), answers


def wait_for_loss_records(proc, home: Path, count: int, tag: str = "d2", timeout: float = 120):
    """Wait until the run has logged `count` training steps (it is then past its start-up)."""
    path, deadline = ckpt(home, tag) / "metrics.jsonl", time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if path.exists() and sum('"loss"' in line for line in path.read_text().splitlines()) >= count:
            return
        time.sleep(0.02)
    raise AssertionError(f"the run ended (or stalled) before {count} steps were logged")


def stop_during(home: Path, args: list, wait, sig) -> tuple[int, str]:
    """Start `train base` with args, wait(proc) for the moment, then half a second more (into the long validation
    that follows), send sig: (exit code, output)."""
    proc = subprocess.Popen(train_command(*args), env=env_for(home), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        wait(proc)
        time.sleep(0.5)
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, out


def test_a_stop_during_the_final_validation_is_a_stop_and_resume_validates(corpus, tmp_path):
    """The last step's validation cut short by SIGTERM: not a finished run (exit 143, no report section); --resume
    runs that validation and finishes. Intermediate ones alike: no step keeps a validation a stop abandoned."""
    home = make_home(corpus, tmp_path / "home")
    args = ["--num-iterations", 3, "--eval-every", -1, "--eval-tokens", 2_000_000]  # one long final validation
    code, out = stop_during(home, args, lambda proc: wait_for_loss_records(proc, home, 3), signal.SIGTERM)
    assert code == 128 + signal.SIGTERM, out[-3000:]
    assert "validation abandoned" in out and "done:" not in out and "--resume" in out
    meta = json.loads((ckpt(home) / "meta_000003.json").read_text())
    assert meta["val_bpb"] is None and not (home / "report" / "base-model-training.md").exists()

    resumed = ok(train(home, *args, "--eval-tokens", 2048, "--resume"))  # a shorter validation, to be quick
    assert "step 00003 | validation bpb" in resumed.stdout and "done: min val bpb" in resumed.stdout
    assert [r["step"] for r in metrics(home) if "val_bpb" in r] == [3]
    assert json.loads((ckpt(home) / "meta_000003.json").read_text())["val_bpb_step"] == 3
    assert (home / "report" / "base-model-training.md").exists()


def torchrun_worker(torchrun_pid: int, rank: int) -> int:
    """The pid of one rank among a torchrun's workers (its children whose environment says RANK=rank)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            environ = (stat.parent / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == torchrun_pid and f"RANK={rank}".encode() in environ:
            return int(stat.parent.name)
    raise AssertionError(f"no rank {rank} worker under pid {torchrun_pid}")


def test_a_signal_to_one_rank_stops_every_rank_as_a_stop(corpus, tmp_path):
    """One node preempted: only rank 1 gets SIGTERM. Every rank saves the same step and leaves as stopped; rank 0
    must not call the run done (nor write the report card's section)."""
    home = make_home(corpus, tmp_path / "home")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "primechat.train.base", *COMMON, "--num-iterations", "400"]
    proc = subprocess.Popen(command, env=env_for(home), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_loss_records(proc, home, 3)
        os.kill(torchrun_worker(proc.pid, 1), signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    saved = [int(p.stem.split("_")[1]) for p in ckpt(home).glob("meta_*.json")]
    assert len(saved) == 1 and 3 <= saved[0] < 400, out[-3000:]
    assert (ckpt(home) / f"optim_{saved[0]:06d}_rank1.pt").exists()
    assert f"stopped at step {saved[0]}" in out and "done:" not in out
    assert not (home / "report" / "base-model-training.md").exists()


def test_one_run_at_a_time_writes_a_model_tag(corpus, tmp_path):
    """A second run into a tag that a run is writing is refused; what a killed save left behind is cleared."""
    home = make_home(corpus, tmp_path / "home")
    leftover = ckpt(home) / ".model_000005.pt.tmp999999"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half a checkpoint")
    first = subprocess.Popen(train_command("--num-iterations", 400), env=env_for(home), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        wait_for_loss_records(first, home, 1)
        assert not leftover.exists()
        assert_user_error(train(home, "--num-iterations", 400, "--resume"), "another run is writing",
                          str(ckpt(home)))
    finally:
        first.kill()
        first.wait()
    checkpoint.lock_for_writing(ckpt(home), 0, torch.device("cpu")).release()  # the lock went with the killed run


def test_a_stop_before_the_first_step_saves_nothing(corpus, tmp_path):
    """Ctrl-C during the first validation: the initial weights are not saved (a step-0 checkpoint would become the
    latest, or the deepest d<N>, that eval and chat pick up)."""
    home = make_home(corpus, tmp_path / "home")

    def in_the_first_validation(proc):
        deadline = time.time() + 60
        while not (ckpt(home) / ".lock").exists() and time.time() < deadline:  # taken just before the loop
            time.sleep(0.02)

    code, out = stop_during(home, ["--eval-tokens", 2_000_000], in_the_first_validation, signal.SIGINT)
    assert code == 128 + signal.SIGINT, out[-3000:]
    assert "stopped before the first step: nothing saved" in out
    assert not list(ckpt(home).glob("*_000000*"))


def test_imported_and_nanochat_checkpoints_say_what_to_do(run_a, corpus, tmp_path):
    """An imported model has no optimizer state to resume; a nanochat home's checkpoint needs `import nanochat`."""
    home = make_home(corpus, tmp_path / "home")
    shutil.copytree(ckpt(run_a[0]), ckpt(home))
    meta_path = ckpt(home) / "meta_000012.json"
    meta = json.loads(meta_path.read_text())
    saved_flags = {**meta["user_config"], "core_metric_every": 2000}  # nanochat's default: would fetch the bundle
    meta_path.write_text(json.dumps({**meta, "user_config": saved_flags, "imported_from": {"format": "nanochat"}}))
    for resume in (["--num-iterations", 14, "--resume"], ["--model-tag", "d2", "--resume"]):
        assert_user_error(train(home, *resume), "was imported (from nanochat) without optimizer",
                          "train the next stage from it")

    sizes = {k: meta["model_config"][k] for k in ("sequence_len", "vocab_size", "n_layer", "n_head", "n_kv_head",
                                                  "n_embd")}
    meta_path.write_text(json.dumps({"step": 12, "model_config": sizes}))  # as nanochat writes it
    chat = subprocess.run([sys.executable, "-m", "primechat.cli", "chat", "-i", "base", "-p", "hi"],
                          env=env_for(home), capture_output=True, text=True, timeout=120)
    assert_user_error(chat, "holds a nanochat checkpoint", "primechat import nanochat")


def test_torchrun_workers_die_with_their_torchrun(corpus, tmp_path):
    """A kill -9 of torchrun (or of the speedrun above it) leaves no worker writing on in the background."""
    home = make_home(corpus, tmp_path / "home")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "primechat.train.base", *COMMON, "--num-iterations", "400"]
    proc = subprocess.Popen(command, env=env_for(home), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_loss_records(proc, home, 1)
        workers = [torchrun_worker(proc.pid, rank) for rank in (0, 1)]
        proc.kill()
        proc.wait()
        deadline = time.time() + 10
        while any(Path(f"/proc/{pid}").exists() for pid in workers) and time.time() < deadline:
            time.sleep(0.05)
        assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_core_during_training_as_nanochats_core_metric_every(corpus, home, fake_hub, tmp_path):
    """--core-metric-every N: a capped CORE every N steps and at the end, in the log, the console and the report; a
    bundle that cannot be had is a mistake found before training."""
    from test_core import bundle_zip

    make_home(corpus, home)
    url = fake_hub.add_static("eval_bundle.zip", bundle_zip(tmp_path))
    result = ok(train(home, "--num-iterations", 5, "--core-metric-every", 2, "--core-metric-max-per-task", 3,
                      "--bundle-url", url))
    cores = [(r["step"], r["core_metric"]) for r in metrics(home) if "core_metric" in r]
    assert [s for s, _ in cores] == [2, 4, 5] and all(-1 <= c <= 1 for _, c in cores)
    assert f"step 00005 | CORE {cores[-1][1]:.4f} (at most 3 examples per task)" in result.stdout
    assert f"- final CORE: {cores[-1][1]:.4f} (at most 3" in (home / "report" / "base-model-training.md").read_text()

    assert_user_error(train(home, "--model-tag", "other", "--core-metric-every", 2, "--core-metric-max-per-task", 1,
                            "--bundle-url", url), "--core-metric-max-per-task 1 is too few")
