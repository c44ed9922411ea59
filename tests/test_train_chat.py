"""Chat training on CPU: the packing loader, `primechat train mid` → `train sft` → `train rl` end to end on a tiny
model, exact resume (after a crash and after SIGTERM), and bad input (exit 2, one line).

The base model is made here (random weights plus one optimizer step, saved as `train base` saves), the tokenizer
is trained on the test's own conversations, and the mixture is a JSONL file plus the generated arithmetic task, so
nothing is downloaded.
"""

import json
import re
import shutil
import signal
import subprocess
import time
import sys
from pathlib import Path

import pytest
import torch

from primechat.data.chat_loader import ChatLoader
from primechat.model import GPT, GPTConfig
from primechat.optim import build_optimizer
from primechat.tasks.arithmetic import Arithmetic
from primechat.tokenizer import train_tokenizer
from primechat.train.checkpoint import STAGE_DIRS, checkpoint_dir, save_checkpoint
from test_train import assert_same_tensors, assert_user_error, env_for, ok

SEQ = 128
ANIMALS = "cat dog bird fish horse mouse".split()


def conversations(n: int) -> list[dict]:
    """Short chats of varied length: a question, an answer, sometimes a second turn."""
    out = []
    for i in range(n):
        animal = ANIMALS[i % len(ANIMALS)]
        messages = [{"role": "user", "content": f"Tell me about the {animal} number {i}."},
                    {"role": "assistant", "content": f"The {animal} number {i} is " + "very " * (i % 7) + "nice."}]
        if i % 3 == 0:
            messages += [{"role": "user", "content": "And then?"},
                         {"role": "assistant", "content": f"Then the {animal} sleeps."}]
        out.append({"messages": messages})
    return out


@pytest.fixture(scope="module")
def tokenizer():
    texts = [json.dumps(c) for c in conversations(60)] + [json.dumps(c) for c in Arithmetic(200)]
    return train_tokenizer(iter(texts * 3), 512)


@pytest.fixture(scope="module")
def base_home(tmp_path_factory, tokenizer) -> Path:
    """A home with the tokenizer, a d2 base checkpoint as `train base` leaves it, and a small offline mixture."""
    home = tmp_path_factory.mktemp("chat") / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRIMECHAT_HOME", str(home))
        tokenizer.save(home / "tokenizer")
        torch.manual_seed(0)
        config = GPTConfig(sequence_len=SEQ, vocab_size=tokenizer.vocab_size, n_layer=2, n_head=2, n_kv_head=2,
                           n_embd=64)
        model = GPT(config)
        model.init_weights()
        optimizer = build_optimizer(model)
        ids = torch.randint(0, tokenizer.vocab_size, (2, SEQ + 1))
        model(ids[:, :-1], ids[:, 1:]).backward()
        optimizer.step()  # so there is optimizer state (momentum) to warm-start from
        meta = {"step": 10, "model_config": config.to_dict(), "total_batch_size": 1024, "world_size": 1,
                "user_config": {"device_batch_size": 4, "max_seq_len": SEQ, "embedding_lr": 0.3,
                                "unembedding_lr": 0.008, "matrix_lr": 0.02, "scalar_lr": 0.5}}
        save_checkpoint(checkpoint_dir("base", "d2"), 10, model.state_dict(), meta, optimizer.state_dict())
    (home / "chats.jsonl").write_text("".join(json.dumps(c) + "\n" for c in conversations(120)))
    (home / "mix.yaml").write_text("train:\n  - jsonl: chats.jsonl\n  - task: arithmetic\n    size: 200\n"
                                   "val:\n  - task: arithmetic\n    size: 20\n")
    return home


def copy_home(base_home: Path, tmp_path: Path) -> Path:
    home = tmp_path / "home"
    shutil.copytree(base_home, home)
    return home


CHAT_FLAGS = ["--metrics", "", "--eval-tokens", 1024, "--eval-every", 2]
RL_FLAGS = ["--task", "arithmetic", "--examples-per-step", 2, "--num-samples", 4, "--device-batch-size", 2,
            "--max-new-tokens", 12, "--eval-examples", 4, "--eval-samples", 2, "--eval-every", 2]


def command_flags(stage: str, home: Path) -> list[str]:
    return list(map(str, CHAT_FLAGS + ["--mixture", home / "mix.yaml"] if stage in ("mid", "sft") else RL_FLAGS))


def command(stage: str, home: Path, *args) -> list[str]:
    return [sys.executable, "-m", "primechat.cli", "train", stage, *command_flags(stage, home), *map(str, args)]


def train(stage: str, home: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run(command(stage, home, *args), env=env_for(home), capture_output=True, text=True,
                          timeout=300)


def records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def step_files(folder: Path, step: int) -> list[Path]:
    return [p for p in folder.iterdir() if f"_{step:06d}" in p.name]


# ---------------------------------------------------------------------------------------------------------------------
# The schedules

def test_chat_and_rl_schedules():
    """mid/SFT: LR 1 then a linear warmdown to 0 over the last warmdown_ratio, Muon momentum 0.85 → 0.95 over 300
    steps; RL: LR linear from 1 to 0 (base's are pinned in test_train.py)."""
    from primechat.train.chat import chat_lr_multiplier, chat_muon_momentum
    from primechat.train.rl import rl_lr_multiplier
    assert [chat_lr_multiplier(p / 10, 0.2) for p in range(11)] == pytest.approx([1] * 9 + [0.5, 0])
    assert chat_lr_multiplier(0.99, 0.0) == 1.0
    assert [chat_muon_momentum(s) for s in (0, 150, 300, 1000)] == pytest.approx([0.85, 0.90, 0.95, 0.95])
    assert [rl_lr_multiplier(s, 4) for s in range(4)] == [1.0, 0.75, 0.5, 0.25]


# ---------------------------------------------------------------------------------------------------------------------
# The loader

def test_loader_packs_whole_conversations_and_trains_only_the_assistant(tokenizer):
    convs = conversations(40)
    renders = {tuple(tokenizer.render_conversation(c)[0]): tokenizer.render_conversation(c)[1] for c in convs}
    loader = ChatLoader(tokenizer, convs, batch_size=4, seq_len=64, buffer_size=8)
    bos, user_start = tokenizer.bos_id, tokenizer.encode_special("<|user_start|>")
    seen = 0
    for _ in range(3):
        inputs, targets = loader.next_batch()
        assert inputs.shape == targets.shape == (4, 64)
        for row_in, row_t in zip(inputs.tolist(), targets.tolist()):
            row = row_in + [row_t[-1] if row_t[-1] >= 0 else bos]
            starts = [i for i in range(len(row) - 1) if row[i] == bos and row[i + 1] == user_start]
            assert starts[0] == 0  # a row starts with a conversation
            ends = starts[1:] + [len(row)]
            expected_mask = []
            for s, e in zip(starts, ends):
                piece = row[s:e]
                content = len(piece) - next(i for i, t in enumerate(reversed(piece)) if t != bos)  # drop padding
                assert tuple(piece[:content]) in renders  # a whole conversation, never cut
                expected_mask += renders[tuple(piece[:content])] + [0] * (len(piece) - content)
                seen += 1
            expected = [t if m else -1 for t, m in zip(row[1:], expected_mask[1:])]
            assert row_t == expected  # learned: the assistant's tokens; ignored: user turns and padding
    assert seen > 12  # several conversations share a row


def test_loader_resumes_exactly_and_counts_epochs(tokenizer, tmp_path):
    convs = conversations(30)
    loader = ChatLoader(tokenizer, convs, batch_size=2, seq_len=64, rank=1, world=2, buffer_size=4)
    for _ in range(3):
        loader.next_batch()
    torch.save(loader.state_dict(), tmp_path / "state.pt")
    expected = [loader.next_batch() for _ in range(4)]
    resumed = ChatLoader(tokenizer, convs, batch_size=2, seq_len=64, rank=1, world=2, buffer_size=4,
                         state=torch.load(tmp_path / "state.pt", weights_only=False))
    for (x, y), (rx, ry) in zip(expected, [resumed.next_batch() for _ in range(4)]):
        assert torch.equal(x, rx) and torch.equal(y, ry)
    fresh = ChatLoader(tokenizer, convs, batch_size=1, seq_len=64, rank=1, world=2, buffer_size=1)
    rows = 0
    while fresh.epoch == 1:  # rank 1 of 2 reads 15 conversations per epoch, a few per row
        assert fresh.progress == fresh.cursor / 15
        fresh.next_batch()
        rows += 1
    assert 4 <= rows <= 15 and 1.0 <= fresh.progress < 1.3


def test_loader_cuts_long_conversations_and_skips_ones_with_nothing_to_learn(tokenizer):
    long_answer = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "cat " * 200}]}
    long_question = {"messages": [{"role": "user", "content": "dog " * 200}, {"role": "assistant", "content": "ok"}]}
    loader = ChatLoader(tokenizer, [long_question, long_answer], batch_size=2, seq_len=32, buffer_size=1)
    inputs, targets = loader.next_batch()
    for row_in, row_t in zip(inputs.tolist(), targets.tolist()):
        assert tokenizer.decode(row_in).startswith("<|bos|><|user_start|>Hi")  # never the unlearnable one
        assert sum(t >= 0 for t in row_t) > 20


# ---------------------------------------------------------------------------------------------------------------------
# The stages end to end

def test_mid_sft_rl_end_to_end(base_home, tmp_path):
    home = copy_home(base_home, tmp_path)
    mid = ok(train("mid", home, "--num-iterations", 4))
    assert "warm-started from base d2 step 10" in mid.stdout
    folder = home / "mid_checkpoints" / "d2"
    meta = json.loads((folder / "meta_000004.json").read_text())
    assert meta["source"] == {"stage": "base", "tag": "d2", "step": 10}
    assert meta["total_batch_size"] == 1024 and meta["user_config"]["max_seq_len"] == SEQ  # taken from base
    log = records(folder)
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3, 4]
    assert [r["step"] for r in log if "val_bpb" in r] == [0, 2, 4]
    steps = [r for r in log if "loss" in r]  # 4 steps: none is left out of the training time as warm-up
    assert 0 < steps[-1]["training_time"] == pytest.approx(sum(r["dt"] for r in steps))
    assert log[-1]["val_bpb"] < log[0]["val_bpb"]  # it learns the chats
    assert (folder / "loss_curve.png").exists()
    section = (home / "report" / "midtraining.md").read_text()
    # a reader of the card learns the data, not just a path on this machine
    assert "## Midtraining" in section and "- mixture sources: chats.jsonl, arithmetic\n" in section

    sft = ok(train("sft", home, "--num-iterations", 2, "--total-batch-size", 512, "--metrics", "Arithmetic",
                   "--metrics-every", -1, "--metrics-max-problems", 2))
    assert "warm-started from mid d2 step 4" in sft.stdout
    meta = json.loads((home / "chatsft_checkpoints" / "d2" / "meta_000002.json").read_text())
    assert meta["source"]["stage"] == "mid" and meta["user_config"]["init_lr_frac"] == 0.02
    section = (home / "report" / "chat-sft.md").read_text()
    # the in-training metrics say on how many problems they were measured (`eval chat` may use more)
    assert "## Chat SFT" in section and re.search(r"^- task metrics: on the first 2 problems of each task\n"
                                                   r"- Arithmetic: \d\.\d{4}$", section, re.MULTILINE)

    rl = ok(train("rl", home, "--num-iterations", 2))
    folder = home / "chatrl_checkpoints" / "d2"
    meta = json.loads((folder / "meta_000002.json").read_text())
    assert meta["source"]["stage"] == "sft" and set(meta["pass_at_k"]) == {"pass@1", "pass@2"}
    log = records(folder)
    assert [r["step"] for r in log if "reward" in r] == [1, 2]
    assert all(0 <= r["reward"] <= 1 for r in log if "reward" in r)
    assert "pass@2" in rl.stdout and "- model tag: d2" in (home / "report" / "chat-rl.md").read_text()


@pytest.mark.parametrize("stage", ["mid", "rl"])
def test_resume_after_a_crash_is_exact(base_home, tmp_path, stage):
    home = copy_home(base_home, tmp_path)
    if stage == "rl":  # RL starts from SFT: make one by renaming the base (any stage loads the same way)
        shutil.copytree(home / "base_checkpoints", home / "chatsft_checkpoints")
    folder = home / STAGE_DIRS[stage] / "d2"
    ok(train(stage, home, "--num-iterations", 4, "--save-every", 2))
    final = {p.name: torch.load(p, weights_only=False) for p in step_files(folder, 4) if p.suffix == ".pt"}
    for p in step_files(folder, 4):  # the run "crashed" after saving step 2
        p.unlink()
    resumed = ok(train(stage, home, "--num-iterations", 4, "--save-every", 2, "--resume"))
    assert "resuming" in resumed.stdout
    for name, state in final.items():
        assert_same_tensors(state, torch.load(folder / name, weights_only=False), name)
    steps = [r["step"] for r in records(folder) if "loss" in r or "reward" in r]
    assert steps == [1, 2, 3, 4]  # the log reads as one run

    # a branch from step 2: the replaced run's step 4 moves aside (no longer the latest), and the branch replays it
    branch = ok(train(stage, home, "--num-iterations", 4, "--save-every", 2, "--resume-from-step", 2))
    aside = [p for p in folder.iterdir() if p.is_dir()]
    assert len(aside) == 1 and "step 4 came from the run being replaced (resuming from step 2)" in branch.stdout
    assert sorted(p.name for p in step_files(aside[0], 4)) == sorted([*final, "meta_000004.json"])
    for name, state in final.items():
        assert_same_tensors(state, torch.load(folder / name, weights_only=False), name)


def test_resume_with_a_model_tag_takes_the_saved_runs_mixture_and_flags(base_home, tmp_path):
    """`train sft --model-tag d2 --resume` continues with the run's own mixture, not the shipped sft.yaml."""
    home = copy_home(base_home, tmp_path)
    ok(train("sft", home, "--source", "base", "--num-iterations", 2, "--model-tag", "d2"))
    bare = [sys.executable, "-m", "primechat.cli", "train", "sft", "--model-tag", "d2", "--resume", "--num-iterations",
            "3"]
    result = ok(subprocess.run(bare, env=env_for(home), capture_output=True, text=True, timeout=300))
    assert "continuing d2 with its flags from step 2 where not typed" in result.stdout
    assert "resuming" in result.stdout and "flags changed" not in result.stdout
    meta = json.loads((home / "chatsft_checkpoints" / "d2" / "meta_000003.json").read_text())
    assert meta["mixture"] == str(home / "mix.yaml") and meta["source"]["stage"] == "base"


def test_output_tag_trains_a_stage_again_from_the_same_source(base_home, tmp_path):
    """sft/d2 exists; `--output-tag d2-b` trains SFT again from base d2 into sft/d2-b, and --resume continues there."""
    home = copy_home(base_home, tmp_path)
    first = home / "chatsft_checkpoints" / "d2"
    ok(train("sft", home, "--source", "base", "--num-iterations", 2))
    before = sorted(p.name for p in first.iterdir())
    assert_user_error(train("sft", home, "--source", "base", "--num-iterations", 2), "already holds checkpoints",
                      "--output-tag")
    ok(train("sft", home, "--source", "base", "--num-iterations", 2, "--output-tag", "d2-b"))
    second = home / "chatsft_checkpoints" / "d2-b"
    meta = json.loads((second / "meta_000002.json").read_text())
    assert meta["source"] == {"stage": "base", "tag": "d2", "step": 10}
    # the report card tells the two models apart (its "Mixed models" note reads this)
    section = (home / "report" / "chat-sft.md").read_text()
    assert "- model tag: d2-b" in section and "- source: base d2 step 10" in section
    # the output tag alone names the run to continue: its other flags (where it read from) come back with it
    resumed = ok(train("sft", home, "--num-iterations", 3, "--output-tag", "d2-b", "--resume"))
    assert f"resuming {second} from step 2" in resumed.stdout
    assert "--source base" in resumed.stdout and "--output-tag" not in resumed.stdout.split("where not typed")[1]
    assert (second / "meta_000003.json").exists() and sorted(p.name for p in first.iterdir()) == before
    # --model-tag d2-b names a source (base d2-b, which does not exist): the message says how to resume
    assert_user_error(train("sft", home, "--num-iterations", 4, "--model-tag", "d2-b", "--resume"),
                      "was written with --output-tag d2-b: resume it with --output-tag d2-b --resume")
    # resuming it from another source would only relabel it
    shutil.copytree(home / "base_checkpoints" / "d2", home / "base_checkpoints" / "d2x")
    assert_user_error(train("sft", home, "--num-iterations", 4, "--output-tag", "d2-b", "--model-tag", "d2x",
                            "--resume"), "was trained from base d2, not base d2x", "--model-tag d2")
    assert not (second / "meta_000004.json").exists()
    assert_user_error(train("rl", home, "--output-tag", "a/b"), "--output-tag 'a/b' is not a plain name")


def test_resume_refuses_a_run_that_ends_before_the_checkpoint(base_home, tmp_path):
    """Like base and RL: --resume with fewer steps (or epochs) than the checkpoint has trained is refused in one line,
    not "finished" with the saved run's numbers (its report section stays as it was)."""
    home = copy_home(base_home, tmp_path)
    ok(train("mid", home, "--num-iterations", 3))
    section = (home / "report" / "midtraining.md").read_text()
    assert_user_error(train("mid", home, "--num-iterations", 2, "--resume"),
                      "the checkpoint is at step 3, past this run's 2 steps: raise --num-iterations (the saved run "
                      "had 3)")
    assert_user_error(train("mid", home, "--num-iterations", -1, "--num-epochs", 0.001, "--resume"),
                      "past this run's 0.001: raise --num-epochs")
    assert (home / "report" / "midtraining.md").read_text() == section
    longer = ok(train("mid", home, "--num-iterations", 4, "--resume"))
    assert "the saved run had 3 steps, this one 4" in longer.stdout and "done: 4 steps" in longer.stdout


def test_sigterm_saves_and_resume_finishes(base_home, tmp_path):
    home = copy_home(base_home, tmp_path)
    proc = subprocess.Popen(command("mid", home, "--num-iterations", 500, "--eval-every", -1), env=env_for(home),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if line.startswith("step 00002"):
            proc.send_signal(signal.SIGTERM)
            break
    out = proc.stdout.read()
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM, out
    assert "Continue with --resume" in out
    folder = home / "mid_checkpoints" / "d2"
    saved = max(int(p.stem.split("_")[1]) for p in folder.glob("meta_*.json"))
    assert 2 <= saved < 500
    ok(train("mid", home, "--num-iterations", saved + 2, "--resume"))
    assert json.loads((folder / f"meta_{saved + 2:06d}.json").read_text())["step"] == saved + 2


def test_a_stop_during_the_final_validation_is_a_stop_and_resume_finishes(base_home, tmp_path):
    """With --eval-every -1 the last validation is the only one: a stop that cuts it short must not end the stage as
    done (it has no val bpb), and --resume runs it."""
    home = copy_home(base_home, tmp_path)
    args = ["--num-iterations", 2, "--eval-every", -1, "--eval-tokens", 3_000_000]
    proc = subprocess.Popen(command("mid", home, *args), env=env_for(home), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if line.startswith("step 00002"):
            time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            break
    out = proc.stdout.read()
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM, out
    assert "validation abandoned" in out and "done:" not in out
    resumed = ok(train("mid", home, *args, "--eval-tokens", 1024, "--resume"))
    assert "step 00002 | validation bpb" in resumed.stdout and "done: 2 steps, val bpb" in resumed.stdout
    assert json.loads((home / "mid_checkpoints" / "d2" / "meta_000002.json").read_text())["val_bpb_step"] == 2


def test_torchrun_two_processes_evaluate_like_one(base_home, tmp_path):
    """Under torchrun each rank saves its optimizer and loader shards, and validation bpb and pass@k are the same
    numbers a single process measures."""
    dist_home, one_home = copy_home(base_home, tmp_path / "dist"), copy_home(base_home, tmp_path / "one")

    def torchrun(stage, *args):
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
                   f"primechat.train.{stage}", *command_flags(stage, dist_home), *map(str, args)]
        return ok(subprocess.run(command, env=env_for(dist_home), capture_output=True, text=True, timeout=300))

    mid = torchrun("mid", "--num-iterations", 2)
    assert "none was saved by 2 process(es)): starting it fresh" in mid.stdout  # base was saved by one process
    folder = dist_home / "mid_checkpoints" / "d2"
    for name in ("optim_000002_rank0.pt", "optim_000002_rank1.pt", "loader_000002_rank0.pt",
                 "loader_000002_rank1.pt"):
        assert (folder / name).exists(), name
    ok(train("mid", one_home, "--num-iterations", 1))
    first_val = [[r["val_bpb"] for r in records(home / "mid_checkpoints" / "d2") if "val_bpb" in r][0]
                 for home in (dist_home, one_home)]
    assert first_val[0] == pytest.approx(first_val[1], rel=1e-6)

    shutil.rmtree(one_home / "mid_checkpoints")
    shutil.copytree(dist_home / "mid_checkpoints", one_home / "mid_checkpoints")
    torchrun("rl", "--source", "mid", "--num-iterations", 1)
    ok(train("rl", one_home, "--source", "mid", "--num-iterations", 1))
    evals = [[r for r in records(home / "chatrl_checkpoints" / "d2") if "pass@1" in r][0]
             for home in (dist_home, one_home)]
    assert evals[0] == evals[1]


# ---------------------------------------------------------------------------------------------------------------------
# Bad input

def test_bad_input_is_one_line(base_home, tmp_path, monkeypatch, cli):
    home = copy_home(base_home, tmp_path)
    monkeypatch.setenv("PRIMECHAT_HOME", str(home))
    mix = ["--mixture", str(home / "mix.yaml"), "--metrics", ""]
    for args, fragment in [(["sft", *mix], "primechat train mid"),  # no mid checkpoint yet
                           (["mid", "--mixture", "nope"], "mixture nope not found"),
                           (["mid", *mix[:2], "--metrics", "Nope"], "unknown task 'Nope'"),
                           (["mid", *mix, "--total-batch-size", "1000"], "not a multiple"),
                           (["rl", "--source", "base", "--task", "arithmetic", "--num-samples", "3",
                             "--device-batch-size", "2"], "of --device-batch-size 2: e.g. --device-batch-size 1"),
                           (["mid", *mix, "--model-tag", "a/b"], "--model-tag 'a/b' is not a plain name"),
                           (["sft", *mix, "--init-lr-frac", "0"], "--init-lr-frac 0.0: give a positive"),
                           (["mid", *mix, "--warmdown-ratio", "1.5"], "--warmdown-ratio 1.5 is outside [0, 1]"),
                           (["mid", *mix, "--unembedding-lr", "-1"], "--unembedding-lr -1.0 is negative"),
                           (["rl", "--examples-per-step", "0"], "--examples-per-step 0: give 1 or more"),
                           (["rl", "--device-batch-size", "0"], "--device-batch-size 0: give 1 or more"),
                           (["rl", "--model-tag", ".."], "--model-tag '..' is not a plain name"),
                           (["rl", "--init-lr-frac", "-1"], "--init-lr-frac -1.0: give a positive")]:
        result = cli("train", *args)
        assert result.code == 2, (args, result.out, result.err)
        lines = result.err.strip().splitlines()
        assert len(lines) == 1 and fragment in lines[0], (args, result.err)
    ok(train("mid", home, "--num-iterations", 1))
    assert_user_error(train("mid", home, "--num-iterations", 1), "already holds checkpoints", "--resume")
    # flag mistakes come before the "already holds checkpoints" refusal, in RL too
    shutil.copytree(home / "base_checkpoints", home / "chatrl_checkpoints")
    assert_user_error(train("rl", home, "--source", "base", "--matrix-lr", "-1"), "--matrix-lr -1.0 is negative")
    shutil.rmtree(home / "base_checkpoints")
    assert_user_error(train("rl", home, "--source", "base"), "primechat train base")
    # two mistakes at once: the mistyped mixture comes first, not the missing base model it would train
    assert_user_error(train("mid", home, "--mixture", "nope", "--model-tag", "d9"), "mixture nope not found")
    # and the measured tasks' data before the model: offline, the word list fails now, not at the first measurement
    offline = train("mid", home, *mix[:2], "--metrics", "SpellingBee", "--words", "http://127.0.0.1:9/w.txt")
    error = offline.stderr.strip().splitlines()[-1]  # after the "downloading the word list" line
    assert offline.returncode == 2 and "cannot download the word list" in error and "--words builtin" in error


def test_a_metric_tasks_dataset_missing_from_the_hub_names_the_flag(fake_hub, cli):
    """A mirror without MMLU: the fix is --metrics (the dataset's name is primechat's), named before any model loads."""
    result = cli("train", "mid", "--metrics", "ARC-Easy|MMLU", "--device-type", "cpu")
    assert result.code == 2 and result.err.count("\n") == 1
    assert "ARC-Easy: dataset allenai/ai2_arc not found on " in result.err
    assert "pick tasks without it with --metrics ('' for none)" in result.err and "HF_TOKEN" not in result.err


def test_help_of_mid_and_sft_documents_the_loop_they_share(cli):
    for stage in ("mid", "sft"):
        result = cli.run("train", stage, "--help")
        assert result.code == 0 and "Chat training: the one loop behind" in result.out
