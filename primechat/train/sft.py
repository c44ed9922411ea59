"""Supervised fine-tuning: `primechat train sft` (or `torchrun … -m primechat.train.sft`). A short pass over
configs/sft.yaml, after mid-training; the loop is primechat/train/chat.py's, preset "sft"."""

from functools import partial

from primechat.train import chat

add_arguments = partial(chat.add_arguments, stage="sft")
main = chat.main

if __name__ == "__main__":
    from primechat.cli import run_module
    run_module(add_arguments, main)
