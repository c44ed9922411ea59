"""`primechat train rl` (primechat/train/rl.py): which tasks --task takes (GSM8K and the generated tasks that score
answers, from tasks/mixture.py's GENERATED), and --num-epochs as a fraction. The end-to-end runs, resume and
torchrun are in test_train_chat.py, whose tiny offline base model this file reuses. CPU, offline."""

from argparse import Namespace

import pytest

from primechat.cli import build_parser
from primechat.common import UserError
from primechat.tasks.mixture import GENERATED
from primechat.train.rl import RL_TASKS, count_steps, load_rl_task
from test_train_chat import base_home, copy_home, ok, records, tokenizer, train  # noqa: F401 (fixtures)


def test_rl_tasks_are_gsm8k_and_the_generated_tasks_that_score(home):
    assert RL_TASKS == ["gsm8k", "spelling-bee", "arithmetic"]
    assert "simple-spelling" in GENERATED and "simple-spelling" not in RL_TASKS  # it has no evaluate()
    for name in RL_TASKS[1:]:
        train_task, test_task = load_rl_task(name, "train", "builtin"), load_rl_task(name, "test", "builtin")
        assert (len(train_task), len(test_task)) == (8000, 1000)
        assert train_task[0]["messages"] != test_task[0]["messages"]  # test problems are not trained on
        example = test_task[3]
        assert test_task.evaluate(example, example["messages"][1]["content"][-1]["text"])  # the reference answer


def steps(num_epochs: float, num_iterations: int = -1) -> int:
    return count_steps(Namespace(num_epochs=num_epochs, num_iterations=num_iterations, examples_per_step=16), 8000)


def test_num_epochs_takes_a_fraction():
    assert build_parser(["train", "rl"]).parse_args(["train", "rl", "--num-epochs", "0.5"]).num_epochs == 0.5
    assert [steps(1), steps(2), steps(0.5), steps(0.01)] == [500, 1000, 250, 5]
    assert count_steps(Namespace(num_epochs=3, num_iterations=-1, examples_per_step=16), 7473) == 467 * 3  # nanochat's
    assert steps(0.5, num_iterations=7) == 7  # --num-iterations wins
    for bad in (0.001, 0, -1):
        with pytest.raises(UserError, match="raise --num-epochs"):
            steps(bad)
    with pytest.raises(UserError, match="--num-epochs nan"):
        steps(float("nan"))


def test_a_fraction_of_an_epoch_runs_that_many_steps(base_home, tmp_path):  # noqa: F811 (a fixture)
    home = copy_home(base_home, tmp_path)
    # 8,000 arithmetic problems, 2 per step (test_train_chat's RL flags): 0.0005 epochs are 2 steps
    rl = ok(train("rl", home, "--source", "base", "--num-epochs", "0.0005"))
    assert "2 steps × 2 problems" in rl.stdout
    assert [r["step"] for r in records(home / "chatrl_checkpoints" / "d2") if "reward" in r] == [1, 2]


def test_resume_with_a_model_tag_takes_the_saved_runs_flags(base_home, tmp_path):  # noqa: F811 (a fixture)
    """`train rl --model-tag d2 --resume` continues on the run's own task and source, not the defaults (GSM8K, sft)."""
    import json
    import subprocess
    import sys

    from test_train import env_for
    home = copy_home(base_home, tmp_path)
    ok(train("rl", home, "--source", "base", "--num-iterations", 2, "--model-tag", "d2"))
    bare = [sys.executable, "-m", "primechat.cli", "train", "rl", "--model-tag", "d2", "--resume", "--num-iterations",
            "3"]
    result = ok(subprocess.run(bare, env=env_for(home), capture_output=True, text=True, timeout=300))
    assert "continuing d2 with its flags from step 2 where not typed" in result.stdout and "--task arithmetic" in \
        result.stdout
    meta = json.loads((home / "chatrl_checkpoints" / "d2" / "meta_000003.json").read_text())
    assert meta["source"]["stage"] == "base" and meta["user_config"]["examples_per_step"] == 2
