"""`primechat eval base` end to end on a tiny trained checkpoint, bpb on a hand-computed case, and the --hf-model path
with a tiny random GPT-2 saved by transformers (CPU, no network; the bundle is test_core's, served by the fake hub).
"""

import csv
import io
import json
import math
import os
import random
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from primechat import report
from primechat.common import dataset_dir, tokenizer_dir
from primechat.data import shards
from primechat.eval import core
from primechat.eval.loss import evaluate_bpb
from primechat.tokenizer import train_tokenizer
from test_core import TASKS, bundle_zip

REPO_ROOT = Path(__file__).resolve().parents[1]
WORDS = "the a cat dog sees likes river hill red small old runs near under big bird".split()
TRAIN = ["train", "base", "--dataset", "tiny", "--depth", "2", "--max-seq-len", "64", "--device-batch-size", "2",
         "--total-batch-size", "128", "--num-iterations", "3", "--eval-every", "-1", "--eval-tokens", "512",
         "--sample-every", "-1", "--warmup-steps", "1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A home holding a tiny dataset, a 300-token tokenizer and a d2 base model trained for 3 steps."""
    root = tmp_path_factory.mktemp("trained")
    rng = random.Random(0)
    docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 40))) + "." for _ in range(600)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRIMECHAT_HOME", str(root))
        shards.write_shard(docs[:500], dataset_dir("tiny") / shards.shard_name(0))
        shards.write_shard(docs[500:], dataset_dir("tiny") / shards.shard_name(1))
        train_tokenizer(iter(docs), 300).save(tokenizer_dir())
    env = {**os.environ, "PRIMECHAT_HOME": str(root), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "primechat.cli", *TRAIN], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return root


@pytest.fixture
def model_home(trained, home) -> Path:
    for name in ("base_data", "tokenizer", "base_checkpoints"):
        shutil.copytree(trained / name, home / name)
    return home


def one_line_error(result, *fragments):
    assert result.code == 2, result.out + result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("primechat: error: "), result.err
    for fragment in fragments:
        assert fragment in lines[0]


# --------------------------------------------------------------------------------------------------------------------

class Uniform(torch.nn.Module):
    """Every token equally likely among 4: each target costs ln 4 nats = 2 bits."""

    def forward(self, inputs, targets, loss_reduction="mean"):
        logits = torch.zeros(targets.numel(), 4)
        return F.cross_entropy(logits, targets.reshape(-1), ignore_index=-1, reduction=loss_reduction)


def test_bpb_hand_computed():
    token_bytes = torch.tensor([1, 2, 3, 0])  # token 3 is a special token: no bytes, not counted
    targets = torch.tensor([[0, 1, 2, 3], [-1, 0, 0, 1]])
    # counted targets: 0, 1, 2, 0, 0, 1 -> 6 tokens × 2 bits over 1+2+3+1+1+2 = 10 bytes
    bpb = evaluate_bpb(Uniform(), iter([(targets.clamp(min=0), targets)]), 1, token_bytes)
    assert bpb == pytest.approx(12 / 10)


def test_bpb_evaluation_is_abandoned_when_asked():
    """A stop signal during a long evaluation: the loop stops at the next batch and there is no number."""
    token_bytes = torch.tensor([1, 2, 3, 0])
    targets = torch.tensor([[0, 1, 2, 3]])
    batches = iter([(targets, targets)] * 10)
    asked = []
    assert evaluate_bpb(Uniform(), batches, 10, token_bytes, abandon=lambda: asked.append(1) or len(asked) > 3) is None
    assert len(asked) == 4 and len(list(batches)) == 7  # three batches evaluated, the rest never read


def test_eval_base_end_to_end(model_home, fake_hub, cli, tmp_path):
    url = fake_hub.add_static("eval_bundle.zip", bundle_zip(tmp_path))
    r = cli("eval", "base", "--bundle-url", url, "--split-tokens", "512", "--device-batch-size", "2")
    assert r.code == 0, r.err
    for label in TASKS:
        assert label in r.out
    assert "\nCORE " in r.out and "partial" not in r.out
    rows = list(csv.reader(open(model_home / "base_eval" / "base_d2_000003.csv")))
    assert [row[0] for row in rows] == ["Task", *TASKS, "CORE"]
    report = model_home / "report"
    assert "- CORE metric: " in (report / "base-model-evaluation.md").read_text()
    loss = (report / "base-model-loss.md").read_text()
    assert "- train bpb: " in loss and "- sample 6: If 5*x + 3 = 13, then x is" in loss and "unconditioned 7" in loss
    # val bpb is training's own validation (same packing and function), so it repeats the checkpoint's figure
    meta = json.loads((model_home / "base_checkpoints" / "d2" / "meta_000003.json").read_text())
    val_bpb = float(next(line for line in loss.splitlines() if line.startswith("- val bpb:")).split(":")[1])
    assert val_bpb == pytest.approx(meta["val_bpb"], abs=1e-4)
    assert len(fake_hub.requests("GET", "/static/")) == 1


def test_torchrun_two_processes_give_the_same_results(model_home, fake_hub, cli, tmp_path):
    url = fake_hub.add_static("eval_bundle.zip", bundle_zip(tmp_path))
    assert cli("eval", "base", "--eval", "core,bpb", "--bundle-url", url, "--split-tokens", "512",
               "--device-batch-size", "2").code == 0
    one = (model_home / "base_eval" / "base_d2_000003.csv").read_text()
    one_loss = (model_home / "report" / "base-model-loss.md").read_text().split("\n", 2)[2]
    env = {**cli.env(), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "primechat.eval.base", "--eval", "core,bpb", "--split-tokens", "512",
                           "--device-batch-size", "1"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (model_home / "base_eval" / "base_d2_000003.csv").read_text() == one
    # 2 ranks × batch 1 cover the same rows as 1 rank × batch 2
    assert (model_home / "report" / "base-model-loss.md").read_text().split("\n", 2)[2] == one_loss


def test_partial_bundle_labelled_everywhere_and_strict(model_home, fake_hub, cli, tmp_path, monkeypatch):
    folder = tmp_path / "partial"
    zipped = bundle_zip(folder)
    buffer = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(zipped)) as src, zipfile.ZipFile(buffer, "w") as dst:
        for item in src.infolist():
            if not item.filename.endswith("schema.jsonl"):
                dst.writestr(item, src.read(item))
    monkeypatch.setenv("PRIMECHAT_EVAL_BUNDLE_URL", fake_hub.add_static("partial.zip", buffer.getvalue()))
    r = cli("eval", "base", "--eval", "core")
    assert r.code == 0, r.err
    label = "CORE (partial, 2/3 tasks)"
    assert label in r.out and "missing tasks (1): schema" in r.out
    assert list(csv.reader(open(model_home / "base_eval" / "base_d2_000003.csv")))[-1][0] == label
    section = (model_home / "report" / "base-model-evaluation.md").read_text()
    assert f"- {label} metric: " in section and "- missing tasks: schema" in section
    one_line_error(cli("eval", "base", "--eval", "core", "--strict"), "--strict", "schema")


def test_bad_input_is_one_line(home, fake_hub, cli, model_home):
    one_line_error(cli("eval", "base", "--eval", "nothing"), "--eval")
    one_line_error(cli("eval", "base", "--eval", "core", "--bundle-url", fake_hub.url + "/static/none.zip"),
                   "HTTP 404")
    bad = fake_hub.add_static("bad.zip", b"not a zip")
    one_line_error(cli("eval", "base", "--eval", "core", "--bundle-url", bad), "cannot get a valid CORE bundle")
    # checks on arguments come before the model is loaded, and name what exists
    one_line_error(cli("eval", "base", "--eval", "bpb", "--model-tag", "nope"), "--model-tag nope",
                   "tags with checkpoints: d2")
    url = fake_hub.add_static("bundle.zip", bundle_zip(model_home.parent / "bundle"))
    max_shots = max(shots for _, _, shots, *_ in TASKS.values())
    one_line_error(cli("eval", "base", "--eval", "core", "--bundle-url", url, "--max-per-task", str(max_shots)),
                   f"--max-per-task {max_shots} is too few", f"give {max_shots + 1} or more")
    # eval base has no --dataset: bpb needs the dataset the model was trained on, and the error says so
    (model_home / "base_data" / "tiny").rename(model_home / "base_data" / "other")
    error = cli("eval", "base", "--eval", "bpb")
    one_line_error(error, "dataset 'tiny'", "datasets present: other", "--eval core,sample")
    assert "--dataset" not in error.err
    shutil.rmtree(model_home / "base_checkpoints")
    one_line_error(cli("eval", "base", "--eval", "bpb"), "no base checkpoints")


# --------------------------------------------------------------------------------------------------------------------
# --hf-model: a tiny random GPT-2 with a byte-level tokenizer (ids = bytes, <|endoftext|> = 256)

def save_tiny_gpt2(folder: Path, positions: int = 64):
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    byte_level = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)} | {"<|endoftext|>": 256},
                                      merges=[]))
    byte_level.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    byte_level.decoder = decoders.ByteLevel()
    transformers.PreTrainedTokenizerFast(tokenizer_object=byte_level, bos_token="<|endoftext|>",
                                         eos_token="<|endoftext|>").save_pretrained(folder)
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=257, n_positions=positions, n_embd=32, n_layer=2, n_head=2,
                                     bos_token_id=256, eos_token_id=256)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)


def test_hf_model_through_the_same_core_code(home, fake_hub, cli, tmp_path):
    from primechat.eval.base import hf_subject
    folder = tmp_path / "tiny-gpt2"
    save_tiny_gpt2(folder)
    subject = hf_subject(str(folder), torch.device("cpu"))
    assert subject.bos == 256 and subject.max_seq_len == 64
    assert len(subject.encode(["Hi there"])[0]) == 8  # one token per byte, no BOS/EOS added
    # a prompt longer than GPT-2's 64 positions is cropped from the left instead of crashing
    task = core.Task("mc", "multiple_choice", "mc.jsonl", 0, " ", 50.0)
    data = [{"query": "why? " * 30, "choices": ["yes", "no"], "gold": 0}]
    accuracy = core.evaluate_task(subject.forward, data, task, subject.encode, subject.bos, "cpu",
                                  subject.max_seq_len).accuracy
    assert accuracy in (0.0, 1.0)

    url = fake_hub.add_static("eval_bundle.zip", bundle_zip(tmp_path))
    report.log_section("Base model evaluation", {"model": "base_d4_000300", "CORE metric": 0.2219})
    r = cli("eval", "base", "--hf-model", folder, "--bundle-url", url)
    assert r.code == 0, r.err
    slug = "hf-tiny-gpt2"
    rows = list(csv.reader(open(home / "base_eval" / f"{slug}.csv")))
    assert [row[0] for row in rows] == ["Task", *TASKS, "CORE"]
    assert all(0 <= float(row[1]) <= 1 for row in rows[1:-1]) and not math.isnan(float(rows[-1][2]))
    # its own report section: the card's BASE column keeps the base model's CORE
    sections = report.read_sections()
    assert sections["hf-model-evaluation-tiny-gpt2"].startswith("## HF model evaluation tiny-gpt2\n")
    assert f"- model: {slug}\n" in sections["hf-model-evaluation-tiny-gpt2"]
    assert "| CORE | 0.2219 | - | - | - |" in report.summary_table(sections)
    one_line_error(cli("eval", "base", "--hf-model", folder, "--eval", "bpb"), "--hf-model")
