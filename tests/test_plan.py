"""`primechat plan`: the planner's figures against nanochat's published numbers and against its own formulas.

nanochat's Oct 2025 runs (reference A1, A4, A14): d20, d26, d32 parameters, FLOPs per token, steps, tokens, the d32
run's time, and the device batches that fit on 80 GB H100s (d20: 32, d26: 16, d32: 8). primechat's 2026 model
(B4, B5): parameter counts, batch, steps and weight decay. Then the plan's internal arithmetic, --budget, and bad
input. Models are built on the meta device, so nothing here allocates weights.
"""

import argparse

import pytest
import torch

from primechat import plan
from primechat.common import UserError, hours_text
from primechat.model import GPT
from primechat.train import base


def figures(*argv, depth=None, device_batch=None) -> plan.Figures:
    parser = argparse.ArgumentParser()
    plan.add_arguments(parser)
    return plan.plan_run(parser.parse_args([str(a) for a in argv]), depth, device_batch)


def nanochat(depth, *argv) -> plan.Figures:
    return figures("--arch", "nanochat-2025", "--gpus", "8xH100", "--depth", depth, *argv)


def test_nanochat_2025_d20_matches_the_speedrun():
    f = nanochat(20)
    assert f.params["total"] == 560_988_160
    assert f"{f.flops_per_token:.4e}" == "3.4918e+09"
    assert (f.steps, f.tokens, f.total_batch, f.grad_accum) == (21_400, 11_219_763_200, 524_288, 1)


def test_nanochat_2025_d26_and_d32():
    assert nanochat(26).params["total"] == 1_081_999_360
    f = nanochat(32, "--device-batch-size", 8)
    assert f.params["total"] == 1_879_048_192
    assert f"{f.flops_per_token:.6e}" == "1.207960e+10"
    assert (f.steps, f.tokens, f.grad_accum) == (71_680, 37_580_963_840, 4)
    assert f"{f.total_flops:.6e}" == "4.539628e+20"
    # run1000.sh: ~1.574 s/step → ≈31.3 h of steps; the planner's speed for this model is that published figure
    assert f.step_seconds == pytest.approx(1.574, abs=5e-4)
    assert f.base_hours - f.validation_hours == pytest.approx(31.3, abs=0.05)
    assert "1.574 s/step" in f.rate_source and f"{f.mfu:.1%}" == "50.9%"


def test_nanochat_2025_shards_are_what_its_loader_reads():
    # A3: the Oct 2025 loader crops nothing; A1: d20 ≈ 216 shards (speedrun.sh downloads 240), d32 ~740 (800)
    d20, d32 = nanochat(20), nanochat(32, "--device-batch-size", 8)
    assert d20.text_tokens == d20.tokens and d20.shards == 216
    assert 700 <= d32.shards <= 800


def test_cpu_base_time_is_train_bases_expected_time():
    # the same run on a CPU: plan's base training time is train base's start-up "expected time", validation included
    f = figures("--gpus", "cpu", "--depth", 20, "--vocab-size", 2000, "--max-seq-len", 256, "--device-batch-size", 1)
    parser = argparse.ArgumentParser()
    base.add_arguments(parser)
    targs = parser.parse_args(["--depth", "20", "--max-seq-len", "256", "--device-batch-size", "1"])
    with torch.device("meta"):
        model = GPT(base.model_config(targs, 2000))
    rows = dict(base.expected_time(base.make_plan(targs, model, 1), targs, 0, torch.device("cpu"), 1))
    assert rows["expected time"].startswith(hours_text(f.base_hours) + " ")
    assert rows["  of which validation"].startswith(hours_text(f.validation_hours) + ":")


@pytest.mark.parametrize("depth,largest", [(20, 32), (26, 16), (32, 8)])
def test_memory_matches_nanochats_device_batches_on_h100(depth, largest):
    f = nanochat(depth, "--device-batch-size", largest)
    assert f.largest_batch == largest
    assert f.memory.fits
    twice = nanochat(depth, "--device-batch-size", 2 * largest, "--total-batch-size", 2 ** 21)  # memory ignores it
    assert not twice.memory.fits and twice.largest_batch == largest


@pytest.mark.parametrize("depth,total,scaling", [(12, 286.3, 110.1), (20, 896.5, 435.2), (24, 1384.1, 729.8),
                                                 (26, 1681.8, 918.4)])
def test_primechat_sizes_match_nanochat_2026(depth, total, scaling):
    f = figures("--depth", depth)
    assert round(f.params["total"] / 1e6, 1) == total
    assert round(f.params["scaling"] / 1e6, 1) == scaling


def test_primechat_horizon_batch_and_weight_decay():
    d12 = figures("--depth", 12)
    assert (d12.total_batch, d12.steps) == (524_288, 2_520)
    d24 = figures("--depth", 24, "--ratio", 8, "--device-batch-size", 16)
    assert (d24.total_batch, d24.steps) == (1_048_576, 5_568)
    assert round(d24.tokens / 1e9, 2) == 5.84
    assert round(d24.weight_decay, 3) == 0.060


def test_figures_follow_their_formulas():
    f = figures("--depth", 20, "--gpus", "8xH100", "--device-batch-size", 16)
    assert f.steps * f.total_batch == f.tokens
    assert f.total_batch == f.device_batch * f.seq_len * f.count * f.grad_accum
    assert f.total_flops == pytest.approx(f.flops_per_token * f.tokens)
    assert f.step_seconds == pytest.approx(f.flops_per_token * f.total_batch / (f.mfu * 989e12 * 8))
    assert f.base_hours == pytest.approx(f.steps * f.step_seconds / 3600 + f.validation_hours)
    assert f.validation_hours == pytest.approx(f.evaluations * f.eval_tokens * f.flops_per_token / 3 / f.rate / 3600)
    assert f.base_cost == pytest.approx(f.base_hours * 8 * 3.00)
    assert f.pipeline_cost == pytest.approx(f.pipeline_hours * 8 * 3.00)
    assert f.pipeline_hours > f.base_hours
    # the stages after base training do not depend on how often base training validates
    often = figures("--depth", 20, "--gpus", "8xH100", "--device-batch-size", 16, "--eval-every", 10)
    assert often.validation_hours > 10 * f.validation_hours
    assert often.pipeline_hours - often.base_hours == pytest.approx(f.pipeline_hours - f.base_hours)
    assert f.memory.total == sum([f.memory.weights, f.memory.grads, f.memory.optimizer, f.memory.activations,
                                  f.memory.logits, f.memory.overhead])
    assert f.mfu == 0.50 and "not measured by primechat" in f.rate_source
    priced = figures("--depth", 20, "--price", 2.5, "--gpus", "4xA100-80GB")
    assert priced.count == 4 and priced.base_cost == pytest.approx(priced.base_hours * 4 * 2.5)
    assert "assumed" in priced.rate_source


def test_largest_batch_fits_and_twice_does_not():
    for argv in (["--depth", 12], ["--depth", 26, "--gpus", "1xH100"], ["--depth", 8, "--gpus", "L4"]):
        largest = figures(*argv).largest_batch
        assert figures(*argv, device_batch=largest).memory.fits
        assert not figures(*argv, device_batch=2 * largest).memory.fits


def test_speedrun_d20_pipeline_is_nanochats_card():
    # the other stages are calibrated on this run, so it must come back at 3h51m
    assert nanochat(20).pipeline_hours == pytest.approx(3 + 51 / 60, rel=1e-4)  # 3.4918e9 is rounded


def test_budget_picks_the_largest_affordable_depth(cli):
    parser = argparse.ArgumentParser()
    plan.add_arguments(parser)
    chosen, tried = plan.budget_search(parser.parse_args(["--budget", "100"]))
    assert chosen.pipeline_cost <= 100 and chosen.memory.fits
    following = next(f for f in tried if f.depth == chosen.depth + 2)
    assert following.pipeline_cost > 100
    result = cli("plan", "--budget", "100")
    assert result.code == 0
    assert f"d{chosen.depth} is the largest even depth" in result.out and "neighbouring depths" in result.out


def test_cli_output(cli):
    result = cli("plan", "--depth", "26", "--arch", "nanochat-2025", "--gpus", "8xH100")
    assert result.code == 0, result.err
    for text in ("1,081,999,360", "DOES NOT FIT at device batch 32", "--device-batch-size 16", "an estimate",
                 "MFU 50.9%", "not measured by primechat", "whole pipeline", "$3.00 per GPU-hour",
                 "of which validation", "3h51m for all of it, base training included"):
        assert text in result.out
    cpu = cli("plan", "--gpus", "cpu", "--depth", "4", "--max-seq-len", "512", "--device-batch-size", "4")
    assert cpu.code == 0, cpu.err
    assert "docs/benchmarks.md" in cpu.out and "not estimated on a CPU" in cpu.out


@pytest.mark.parametrize("argv,message", [
    (["--gpus", "8xA99"], "known are H100"),
    (["--gpus", "0xH100"], "COUNTxNAME"),
    (["--depth", "0"], "--depth 0"),
    (["--total-batch-size", "100000"], "not a multiple"),
    (["--device-batch-size", "0"], "must be positive"),
    (["--mfu", "2"], "--mfu 2"),
    (["--depth", "20", "--budget", "100"], "not both"),
    (["--budget", "0.01"], "costs $"),
    (["--price", "-1"], "cannot be negative"),
])
def test_bad_input_is_one_line_exit_2(cli, argv, message):
    result = cli("plan", *argv)
    assert result.code == 2
    assert message in result.err and len(result.err.strip().splitlines()) == 1


def test_unknown_gpu_raises_user_error():
    with pytest.raises(UserError, match="RTX4090"):
        plan.parse_gpus("3xTPU")
    assert plan.parse_gpus("H200")[0] == 1 and plan.parse_gpus("cpu") == (1, None)
