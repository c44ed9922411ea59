"""The `primechat` command line: nanochat's underscore spellings of flags, and errors that show the subcommand's usage.
Parsing only (no stage runs), so these are fast."""

import pytest

from primechat.cli import build_parser, run_module
from primechat.train import base


def parse(*words):
    words = list(map(str, words))
    return build_parser(words).parse_args(words)


def test_underscore_spellings_work_like_the_dashed_flags():
    """nanochat's Oct 2025 scripts spell flags with underscores (`--device_batch_size=8`)."""
    args = parse("train", "base", "--device_batch_size=8", "--max_seq_len", 256, "--model_tag", "my_tag")
    assert (args.device_batch_size, args.max_seq_len, args.model_tag) == (8, 256, "my_tag")  # values untouched
    assert {"device_batch_size", "max_seq_len", "model_tag"} <= set(args.typed_flags)  # typed, for a resume
    assert parse("train", "sft", "--num_iterations=3", "--mixture=--my_mix").mixture == "--my_mix"


def test_underscore_spellings_work_in_the_python_m_entry(monkeypatch):
    seen = {}
    monkeypatch.setattr("primechat.cli.run_guarded", lambda main, args: seen.setdefault("args", args) and 0)
    with pytest.raises(SystemExit):
        run_module(base.add_arguments, base.main, ["--device_batch_size=8", "--depth", "4"])
    assert (seen["args"].device_batch_size, seen["args"].depth) == (8, 4)


@pytest.mark.parametrize("words,usage,unknown", [
    (["train", "base", "--bogus", "1"], "usage: primechat train base [-h] [--depth DEPTH]", "--bogus 1"),
    (["train", "base", "--bogus_flag"], "usage: primechat train base [-h]", "--bogus_flag"),  # no dashed twin
    (["train", "sft", "--depth", "4"], "usage: primechat train sft [-h]", "--depth 4"),
    (["eval", "chat", "-i", "sft", "--nope"], "usage: primechat eval chat [-h]", "--nope"),
])
def test_an_unknown_flag_shows_the_subcommands_usage(cli, words, usage, unknown):
    result = cli(*words)
    assert result.code == 2
    assert result.err.startswith(usage), result.err
    assert result.err.strip().endswith(f"error: unrecognized arguments: {unknown}"), result.err
