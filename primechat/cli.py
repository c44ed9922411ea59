"""The `primechat` command: one subcommand per pipeline stage.

Each stage lives in its own module exposing `add_arguments(parser)` and `main(args)`; the same module can be run
directly (`python -m primechat.train.base`, e.g. under torchrun) through `run_module`. Only the chosen stage's
module is imported, so `primechat data …` never pays for importing torch.
"""

import argparse
import importlib
import os
import sys

from primechat.common import UserError, quiet_hub_progress

# command -> (help, module) or (help, {subcommand: (help, module)})
COMMANDS = {
    "info": ("show the home folder, device, dtype and what has been produced so far", "primechat.info"),
    "data": ("pretraining data: download shards, add your own text, build the offline demo corpus", {
        "download": ("download pretraining shards from the Hugging Face Hub", "primechat.data.download"),
        "add": ("turn your own text files (txt, jsonl, parquet) into shards", "primechat.data.local"),
        "demo": ("build the offline demo corpus from Python's own docstrings", "primechat.data.demo"),
        "mixture": ("preview a chat-training data mixture: rows, tokens, shares, rendered examples",
                    "primechat.tasks.mixture"),
    }),
    "tokenizer": ("train and evaluate the BPE tokenizer", {
        "train": ("train a byte-level BPE tokenizer on a dataset's training shards", "primechat.tokenizer"),
        "eval": ("print and record the tokenizer's compression table", "primechat.eval.tokenizer"),
    }),
    "train": ("train a model", {
        "base": ("pretrain a base model (everything derives from --depth)", "primechat.train.base"),
        "mid": ("mid-train a base model on a chat mixture: the chat format, tools, multiple choice",
                "primechat.train.mid"),
        "sft": ("supervised fine-tuning on a chat mixture, on the assistant's tokens only", "primechat.train.sft"),
        "rl": ("reinforcement learning on GSM8K: sample answers, reward the right ones", "primechat.train.rl"),
    }),
    "speedrun": ("the whole pipeline in one resumable command, from a preset", "primechat.speedrun"),
    "report": ("build the report card (Markdown and one self-contained HTML page) from every stage's section",
               "primechat.report"),
    "plan": ("before spending money: parameters, tokens, steps, memory per GPU, time and cost of a run",
             "primechat.plan"),
    "sweep": ("train a small grid of base models (depth, horizon, batch, vocabulary) and compare val bpb with compute",
              "primechat.sweep"),
    "eval": ("evaluate a model", {
        "base": ("evaluate a base model: bits per byte, CORE, samples", "primechat.eval.base"),
        "chat": ("evaluate a chat model: ARC, MMLU, GSM8K, HumanEval, SpellingBee, ChatCORE, Arithmetic",
                 "primechat.eval.chat"),
    }),
    "chat": ("talk to a model in the terminal", "primechat.chat_cli"),
    "serve": ("serve models: a ChatGPT-like web page and an OpenAI-compatible API", "primechat.serve.server"),
    "import": ("bring a model trained elsewhere into primechat", {
        "nanochat": ("import a nanochat checkpoint (Oct 2025 or 2026 layout)", "primechat.interop.nanochat"),
    }),
    "export": ("write a model in another framework's format", {
        "hf": ("a Hugging Face transformers folder (safetensors, chat template; remote code for 2026 models)",
               "primechat.interop.hf"),
    }),
    "push": ("upload a model with a model card to the Hugging Face Hub", "primechat.interop.push"),
    "pull": ("download a model from the Hugging Face Hub and install it for chat and serve", "primechat.interop.pull"),
    "bench": ("benchmarks whose results go into docs/benchmarks.md", {
        "tokenizer": ("time tokenizer training (rustbpe vs HF tokenizers) and encoding", "primechat.bench.tokenizer"),
        "train": ("training throughput (tok/s), MFU and peak memory at a given depth", "primechat.bench.train"),
        "infer": ("inference speed: prefill, time to first token, decode tok/s", "primechat.bench.infer"),
        "serve": ("serving under load: concurrent streaming clients, requests/s, TTFT, tokens/s",
                  "primechat.bench.serve"),
    }),
}


class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows defaults, except where there is none to show (required arguments, flags defaulting to None)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default == "" or action.required:
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """A command's parser. It takes nanochat's underscore spellings of its flags (`--device_batch_size=8` is
    `--device-batch-size=8`; values are left alone), and reports a flag it does not know with its own usage: argparse
    would hand a subcommand's leftovers up to `primechat`, whose usage names no flag."""

    def parse_known_args(self, args=None, namespace=None):
        words = sys.argv[1:] if args is None else list(args)
        end = words.index("--") if "--" in words else len(words)  # after "--" every word is a value
        words = [self._dashed(word) for word in words[:end]] + words[end:]
        namespace, extras = super().parse_known_args(words, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras

    def _dashed(self, word: str) -> str:
        name, equals, value = word.partition("=")
        dashed = name.replace("_", "-")
        if name.startswith("--") and dashed != name and dashed in self._option_string_actions:
            return dashed + equals + value
        return word


def _command_path(argv: list[str]) -> list[str]:
    """The leading non-option words of argv that name a (sub)command, e.g. ['data', 'download']."""
    path, table = [], COMMANDS
    for word in argv:
        if not isinstance(table, dict) or word not in table:
            break
        path.append(word)
        table = table[word][1]
    return path


def command_module(words: list[str]) -> tuple[str, list[str]] | None:
    """The module that runs a command line's command and the words after the command, e.g. ("primechat.train.base",
    ["--depth", "4"]) for train base --depth 4; None if the words name no command."""
    table = COMMANDS
    for i, word in enumerate(words):
        if not isinstance(table, dict) or word not in table:
            return None
        table = table[word][1]
        if isinstance(table, str):
            return table, words[i + 1:]
    return None


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    chosen = _command_path(argv)
    parser = Parser(prog="primechat", description=__doc__.split("\n")[0], formatter_class=Formatter)

    def add(subparsers, table, prefix):
        for name, (help_text, target) in table.items():
            path = prefix + [name]
            sub = subparsers.add_parser(name, help=help_text, description=help_text, formatter_class=Formatter)
            if isinstance(target, dict):
                add(sub.add_subparsers(dest="_".join(path), required=True, metavar="COMMAND"), target, path)
            elif path == chosen:  # import only the module that will run
                module = importlib.import_module(target)
                loop = sys.modules[module.main.__module__]  # train mid/sft: the shared loop documents itself
                sub.description = "\n".join(doc for doc in dict.fromkeys([module.__doc__, loop.__doc__]) if doc)
                module.add_arguments(sub)
                sub.set_defaults(command_main=module.main)  # not `run`: that is nanochat's --run

    add(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"), COMMANDS, [])
    return parser


def run_guarded(fn, args) -> int:
    """Run a stage; a UserError becomes one line on stderr and exit code 2, Ctrl-C exits 130 without a traceback."""
    quiet_hub_progress()
    try:
        fn(args)
    except UserError as e:
        print(f"primechat: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("primechat: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into a reader that stopped early (`| head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the flush at exit has somewhere to go
        return 0
    return 0


def run_module(add_arguments, main, argv=None) -> None:
    """Entry point for `python -m primechat.<stage>`: the stage's own parser, the same error handling."""
    parser = Parser(formatter_class=Formatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    sys.exit(run_guarded(main, args))


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    sys.exit(run_guarded(args.command_main, args))


if __name__ == "__main__":
    main()
