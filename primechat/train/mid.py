"""Mid-training: `primechat train mid` (or `torchrun … -m primechat.train.mid`). A base model learns the chat format,
tool calls and multiple choice from configs/mid.yaml; the loop is primechat/train/chat.py's, preset "mid"."""

from functools import partial

from primechat.train import chat

add_arguments = partial(chat.add_arguments, stage="mid")
main = chat.main

if __name__ == "__main__":
    from primechat.cli import run_module
    run_module(add_arguments, main)
