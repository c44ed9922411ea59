"""`primechat bench tokenizer`: which library should train our BPE, and how fast do the candidates encode?

Trains the same vocabulary on the same text (the first --max-chars characters of the training shards, whole
documents) with rustbpe (our trainer) and with HF `tokenizers` (byte-level BPE behind a Split pre-tokenizer using our
regex), timing each. Then measures encoding throughput on the validation shard, as one big text and as a batch of
documents, for tiktoken with our merges (our encoder), the HF tokenizer just trained, and tiktoken's GPT-4
vocabulary (cl100k_base) when tiktoken can get it. Prints Markdown tables for docs/benchmarks.md.
"""

import os
import platform
import time
from importlib.metadata import version

import pyarrow.parquet as pq
import tiktoken
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from primechat.data import shards
from primechat.tokenizer import (SPECIAL_TOKENS, SPLIT_PATTERN, TrainingText, char_count, check_vocab_size,
                                 train_tokenizer)

REPEATS = 3  # timings keep the best of a few runs: the one least disturbed by the rest of the machine


def train_hf(texts: list[str], vocab_size: int):
    """The same tokenizer with HF `tokenizers`: our regex splits, then byte-level BPE over the 256 bytes."""
    tokenizer = Tokenizer(models.BPE(byte_fallback=False, unk_token=None, fuse_unk=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(pattern=Regex(SPLIT_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),  # bytes to printable chars, no 2nd split
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=0, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=SPECIAL_TOKENS)
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def best_seconds(fn) -> tuple[float, object]:
    """(fastest wall time of REPEATS calls, the last result)."""
    best = float("inf")
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def add_arguments(parser) -> None:
    shards.add_dataset_argument(parser, "dataset to train on (training shards) and to encode (validation shard)")
    parser.add_argument("--max-chars", type=char_count, default=100_000_000,
                        help="train on about this many characters (1e8 accepted); fewer if the dataset is smaller")
    parser.add_argument("--vocab-size", type=int, default=32768,
                        help="vocabulary size for both trainers, the 9 special tokens included")


def main(args) -> None:
    check_vocab_size(args.vocab_size)
    args.dataset = shards.pick_dataset(args.dataset)
    stream = TrainingText(args.dataset, args.max_chars, doc_cap=None)
    texts = list(stream)  # read once, up front, so that neither trainer's time includes reading parquet
    print(f"training text: {stream.chars:,} characters, {stream.docs:,} documents of {args.dataset}", flush=True)

    rust_s, ours = best_seconds(lambda: train_tokenizer(iter(texts), args.vocab_size))
    print(f"rustbpe: {rust_s:.1f} s", flush=True)
    hf_s, hf = best_seconds(lambda: train_hf(texts, args.vocab_size))
    print(f"HF tokenizers: {hf_s:.1f} s", flush=True)

    _, val = shards.list_shards(args.dataset)
    docs = pq.read_table(val, columns=["text"]).column("text").to_pylist()
    big = "\n".join(docs)
    megabytes = len(big.encode("utf-8")) / 1e6
    encoders = [  # (name, encode one text, encode a list of texts)
        (f"tiktoken, our {ours.vocab_size:,} vocab (primechat)", ours.enc.encode_ordinary,
         ours.enc.encode_ordinary_batch),
        (f"HF tokenizers, same training ({hf.get_vocab_size():,} vocab)", lambda text: hf.encode(text).ids,
         lambda texts: [e.ids for e in hf.encode_batch(texts)]),
    ]
    notes = []
    try:
        gpt4 = tiktoken.get_encoding("cl100k_base")
        encoders.append((f"tiktoken, GPT-4 cl100k_base ({gpt4.n_vocab:,} vocab)", gpt4.encode_ordinary,
                         gpt4.encode_ordinary_batch))
    except Exception as e:  # offline and not cached
        notes.append(f"tiktoken GPT-4 cl100k_base: unavailable offline ({type(e).__name__}), not measured")

    rows = []
    for name, encode_one, encode_many in encoders:
        one_s, ids = best_seconds(lambda: encode_one(big))
        many_s, _ = best_seconds(lambda: encode_many(docs))
        rows.append(f"| {name} | {megabytes / one_s:.1f} | {megabytes / many_s:.1f} | {len(ids):,} |")
        print(rows[-1], flush=True)

    faster = "rustbpe" if rust_s <= hf_s else "HF tokenizers"
    lines = [
        f"Machine: {platform.machine()} {platform.system()}, {_cpu_count()} CPU cores. Training text: "
        f"{stream.chars:,} characters ({stream.docs:,} whole documents) of {args.dataset}; "
        f"vocabulary {args.vocab_size:,} (9 specials included).",
        "",
        f"| Trainer | Train time (s), best of {REPEATS} |",
        "|---|---:|",
        f"| rustbpe {version('rustbpe')} | {rust_s:.1f} |",
        f"| HF tokenizers {version('tokenizers')} | {hf_s:.1f} |",
        "",
        f"Faster trainer: {faster}, {max(rust_s, hf_s) / min(rust_s, hf_s):.1f}x.",
        "",
        f"Encoding the validation shard ({megabytes:.1f} MB, {len(docs):,} documents), best of {REPEATS}:",
        "",
        "| Encoder | One text (MB/s) | Batch of documents (MB/s) | Tokens |",
        "|---|---:|---:|---:|",
        *rows,
        *(["", *notes] if notes else []),
    ]
    print("\n" + "\n".join(lines))


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


if __name__ == "__main__":
    from primechat.cli import run_module
    run_module(add_arguments, main)
