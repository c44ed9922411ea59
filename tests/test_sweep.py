"""`primechat sweep`: a tiny grid (depth 1,2 × vocab 300,400) trains as real `train base` subprocesses, the table
and plot agree with the checkpoints, a rerun reuses every point, and bad input fails before anything trains."""

import csv
import json
import math
import signal
import subprocess

import pytest
from test_speedrun import hold, wait_for

# The smallest models train base accepts, as in test_speedrun.py; ratio 0.05 gives a handful of steps.
TINY = ["--depth", "1,2", "--ratio", "0.05", "--vocab-size", "300,400", "--total-batch-size", "128",
        "--max-seq-len", "64", "--device-batch-size", "2", "--aspect-ratio", "32", "--head-dim", "16",
        "--eval-every", "-1", "--eval-tokens", "256", "--tokenizer-max-chars", "300000", "--name", "tiny",
        "--", "--warmup-steps", "2"]


def final_meta(folder):
    return json.loads(sorted(folder.glob("meta_*.json"))[-1].read_text())


def test_tiny_grid_then_rerun_skips(home, cli):
    assert cli("data", "demo").code == 0
    first = cli.run("sweep", *TINY, timeout=240)
    assert first.code == 0, first.out + first.err
    sweep = home / "sweeps" / "tiny"
    rows = list(csv.DictReader(open(sweep / "results.csv")))
    assert sorted((int(r["vocab"]), int(r["depth"])) for r in rows) == [(300, 1), (300, 2), (400, 1), (400, 2)]
    assert all(float(r["ratio"]) == 0.05 and int(r["total_batch"]) == 128 for r in rows)
    for r in rows:
        meta = final_meta(home / "sweeps" / "tiny" / f"vocab-{r['vocab']}" / "base_checkpoints" / r["tag"])
        config = meta["model_config"]
        assert config["vocab_size"] == int(r["vocab"]) and config["n_layer"] == int(r["depth"])
        assert math.isfinite(float(r["val_bpb"])) and float(r["val_bpb"]) == meta["val_bpb"]
        assert float(r["min_val_bpb"]) == meta["loop_state"]["min_val_bpb"]
        assert int(r["steps"]) == meta["step"] == meta["num_iterations"]
        assert float(r["flops"]) == pytest.approx(meta["plan"]["flops_per_token"] * int(r["tokens"]))
        # the horizon: tokens ≈ ratio × scaling params (whole steps of the batch, rounded down)
        assert int(r["params"]) * 0.05 - 128 < int(r["tokens"]) <= int(r["params"]) * 0.05
    for vocab in ("300", "400"):
        by_depth = {int(r["depth"]): float(r["flops"]) for r in rows if r["vocab"] == vocab}
        assert by_depth[2] > by_depth[1]
    table = (sweep / "results.md").read_text()
    assert table.count("\n| ") == 1 + 4 and table.count("★") == 2  # header, 4 rows; the best row and the footnote
    assert (sweep / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert first.out.count("→ val bpb") == 4 and "point 4/4" in first.out and "ETA" in first.out

    again = cli.run("sweep", *TINY, timeout=60)
    assert again.code == 0, again.out + again.err
    assert again.out.count("skipped, already trained") == 4 and "tokenizer: training" not in again.out
    assert list(csv.DictReader(open(sweep / "results.csv"))) == rows


def test_interrupted_point_resumes(home, cli):
    """A point with a checkpoint short of its final step continues from it (--resume) instead of starting over."""
    assert cli("data", "demo").code == 0
    args = [{"1,2": "1", "300,400": "300"}.get(a, a) for a in TINY]  # one point
    assert cli.run("sweep", *args, "--save-every", "3", timeout=120).code == 0
    folder = home / "sweeps" / "tiny" / "vocab-300" / "base_checkpoints" / "d1-r0.05-b128"
    final = final_meta(folder)["step"]
    for f in folder.glob(f"*_{final:06d}*"):  # as if the run had stopped at its last periodic checkpoint
        f.unlink()
    resumed = cli.run("sweep", *args, "--save-every", "3", timeout=120)
    assert resumed.code == 0, resumed.out + resumed.err
    log = (home / "sweeps" / "tiny" / "logs" / "vocab-300-d1-r0.05-b128.log").read_text()
    assert f"resuming {folder} from step" in log and final_meta(folder)["step"] == final


def test_a_point_that_finishes_despite_a_stop_is_kept_and_the_sweep_stops(home, cli, tmp_path, monkeypatch):
    """A stop that reaches a point's training as it finishes stops the sweep before the next point; the same command
    then reuses the finished point and trains the rest."""
    assert cli("data", "demo").code == 0
    pid_file = hold(monkeypatch, tmp_path, "train base --depth=1")
    args = [{"300,400": "300"}.get(a, a) for a in TINY]  # depth 1 then depth 2
    proc = cli.popen("sweep", *args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(pid_file, proc, seconds=120)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert "point 1/2: depth 1" in out and "stopped before point 2/2: run the same command again to continue" in out
    checkpoints = home / "sweeps" / "tiny" / "vocab-300" / "base_checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["d1-r0.05-b128"]

    again = cli.run("sweep", *args, timeout=120)
    assert again.code == 0, again.out + again.err
    lines = [line for line in again.out.splitlines() if "→ val bpb" in line]
    assert lines[0].startswith("point 1/2: depth 1") and lines[0].endswith("(skipped, already trained)")
    assert lines[1].startswith("point 2/2: depth 2") and "(done" in lines[1]
    assert (checkpoints / "d2-r0.05-b128").exists()


BAD_INPUT = [
    (["--depth", ""], "--depth '' must be a comma list"),
    (["--depth", "2,x"], "--depth '2,x' must be a comma list of whole numbers"),
    (["--ratio", "4,0"], "--ratio '4,0' must be a comma list of numbers above 0"),
    (["--ratio", "-1"], "--ratio '-1'"),
    (["--total-batch-size", "1000"], "is not a multiple of device batch"),
    (["--vocab-size", "100"], "--vocab-size 100 is too small"),
    (["--vocab-size", "home"], "no tokenizer in"),
    (["--dataset", "nowhere"], "dataset 'nowhere' needs at least 2 shards"),
    (["--", "--no-such-flag"], "flags after `--` (train base): unrecognized arguments: --no-such-flag"),
    # nanochat's underscore spelling is train base's flag (here its bad value is what gets reported)
    (["--", "--warmup_steps=x"], "flags after `--` (train base): argument --warmup-steps: invalid int value: 'x'"),
    # a point's own settings after `--` would train another model than its label: refused, in every spelling
    (["--", "--depth", "6"], "--depth after `--` would override the sweep's own setting: give it to the sweep "
                             "(`primechat sweep --depth …`)"),
    (["--", "--target_param_data_ratio=2"], "(`primechat sweep --ratio …`)"),
    (["--", "--max-seq", "64"], "--max-seq-len after `--`"),
    (["--", "--model-tag", "x"], "--model-tag after `--`: the sweep sets it for each point itself"),
]


def test_bad_input_is_one_line_before_training(home, cli):
    assert cli("data", "demo").code == 0
    for flags, message in BAD_INPUT:
        result = cli("sweep", *flags)
        assert result.code == 2 and message in result.err and len(result.err.strip().splitlines()) == 1, result.err
    assert not (home / "sweeps").exists() or not list((home / "sweeps").rglob("base_checkpoints"))


def test_changed_settings_are_refused(home, cli):
    """Points are reused by their axes, so a rerun with other shared settings must not mix old and new points."""
    assert cli("data", "demo").code == 0
    (home / "sweeps" / "tiny").mkdir(parents=True)
    (home / "sweeps" / "tiny" / "sweep.json").write_text(json.dumps({"max_seq_len": 128}))
    result = cli("sweep", *TINY)
    assert result.code == 2 and "sweep 'tiny' was run with other" in result.err and "max_seq_len" in result.err
