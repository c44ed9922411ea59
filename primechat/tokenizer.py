"""The tokenizer: byte-level BPE trained with rustbpe, run with tiktoken, plus the chat format on top of it.

`primechat tokenizer train` learns the merges from a dataset's training shards and saves <home>/tokenizer/. Every
later stage loads it with `load_tokenizer()`.

Same design as nanochat, so tokenizer folders move freely between the two:
- GPT-4's split pattern, except that numbers are split into groups of 1-2 digits (not 1-3);
- 9 special tokens for the chat format, appended after the merges, so they take the last 9 ids;
- training with the rustbpe package (Rust, parallel, much faster than HF `tokenizers`: docs/benchmarks.md), encoding
  with a tiktoken Encoding built from the learned merges; tokenizer.pkl is that Encoding pickled;
- token_bytes.pt holds each token's length in bytes (0 for specials), so that losses can be reported in bits per
  byte, a number that does not depend on the vocabulary.
"""

import copy
import json
import pickle
import statistics
import time
from argparse import ArgumentTypeError
from pathlib import Path

import rustbpe
import tiktoken

from primechat import report
from primechat.common import UserError, atomic_path, home_dir, progress, tokenizer_dir
from primechat.data import shards

SPLIT_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""

SPECIAL_TOKENS = [
    "<|bos|>",  # begins every document and every conversation
    "<|user_start|>", "<|user_end|>",
    "<|assistant_start|>", "<|assistant_end|>",
    "<|python_start|>", "<|python_end|>",  # the assistant calls the python tool
    "<|output_start|>", "<|output_end|>",  # the tool's output, written back into the conversation
]

# Text that exercises every branch of the split pattern; a trained tokenizer must give it back byte for byte.
ROUND_TRIP_SAMPLE = (
    "Prices rose 3.75% to $1,234,567.89 in 2026; we'd've said it's fine, they'll agree, I'M SURE.\n"
    "\tTabs\tand   spaces…  (¡Hola!) <a href=\"x\">#1</a> x²+y²≤z² → ∑ 0x1F 007\r\n\n"
    "你好，世界 こんにちは 안녕하세요 Привет مرحبا 🚀🌍👩‍💻 <|bos|>\n"
)


class ConversationError(UserError, ValueError):
    """A conversation that does not follow the chat format (roles, message contents)."""


class Tokenizer:
    """A tiktoken Encoding with our special tokens, and the chat format built on it."""

    def __init__(self, enc: tiktoken.Encoding):
        self.enc = enc
        self._specials = {name: enc.encode_single_token(name) for name in enc.special_tokens_set}
        self.bos_id = self.encode_special("<|bos|>")

    @classmethod
    def from_ranks(cls, mergeable_ranks: dict[bytes, int]) -> "Tokenizer":
        """Build from learned merges (token bytes -> rank = id); the specials take the next 9 ids."""
        specials = {name: len(mergeable_ranks) + i for i, name in enumerate(SPECIAL_TOKENS)}
        return cls(tiktoken.Encoding("primechat", pat_str=SPLIT_PATTERN, mergeable_ranks=mergeable_ranks,
                                     special_tokens=specials))

    @property
    def vocab_size(self) -> int:
        return self.enc.n_vocab

    def get_special_tokens(self) -> list[str]:
        """The special tokens' names in id order."""
        return sorted(self._specials, key=self._specials.get)

    def encode_special(self, name: str) -> int:
        if name not in self._specials:
            raise ValueError(f"{name!r} is not a special token; the special tokens are {self.get_special_tokens()}")
        return self._specials[name]

    def _token_id(self, token: str | int) -> int:
        return self.encode_special(token) if isinstance(token, str) else token

    def encode(self, text: str | list[str], prepend: str | int | None = None, append: str | int | None = None,
               num_threads: int = 8) -> list[int] | list[list[int]]:
        """Token ids of a text, or of each text of a list (encoded in parallel).

        prepend/append add one token (a special's name, or any id) around each text. Special tokens written in the
        text are ordinary text: only these two arguments and the chat format ever produce special ids.
        """
        before = [] if prepend is None else [self._token_id(prepend)]
        after = [] if append is None else [self._token_id(append)]
        if isinstance(text, str):
            return before + self.enc.encode_ordinary(text) + after
        if isinstance(text, list):
            return [before + ids + after for ids in self.enc.encode_ordinary_batch(text, num_threads=num_threads)]
        raise TypeError(f"encode takes a str or a list of str, not {type(text).__name__}")

    def decode(self, ids: list[int]) -> str:
        return self.enc.decode(ids)

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes of one token; a special token gives its name."""
        return self.enc.decode_single_token_bytes(token_id)

    def id_to_token(self, token_id: int) -> str:
        """One token as text (a token that ends inside a UTF-8 character shows U+FFFD)."""
        return self.token_bytes(token_id).decode("utf-8", errors="replace")

    def token_byte_lengths(self) -> list[int]:
        """Bytes per token id: the length of its raw bytes, 0 for special tokens (they stand for no text)."""
        specials = set(self._specials.values())
        return [0 if i in specials else len(self.token_bytes(i)) for i in range(self.vocab_size)]

    # ----------------------------------------------------------------------------------------------------------------
    # The chat format

    def _render(self, messages: list[dict]) -> tuple[list[int], list[int]]:
        """Ids and mask (1 = the model learns to produce this token) of a whole conversation, untruncated."""
        first = 0
        system = None
        if messages and messages[0].get("role") == "system":
            system, first = messages[0].get("content"), 1
            if not isinstance(system, str):
                raise ConversationError("message 0 (system) must have text content")
        if len(messages) <= first:
            raise ConversationError(f"message {first}: expected role 'user', but the conversation ends")

        ids, mask = [], []

        def add(tokens: list[int], trained: int) -> None:
            ids.extend(tokens)
            mask.extend([trained] * len(tokens))

        special = self.encode_special
        add([self.bos_id], 0)
        for i in range(first, len(messages)):
            message = messages[i]
            expected = "user" if (i - first) % 2 == 0 else "assistant"
            if message.get("role") != expected:
                raise ConversationError(f"message {i} has role {message.get('role')!r}, expected {expected!r}: roles "
                                        "alternate user/assistant, starting with user (after an optional system)")
            content = message.get("content")
            if expected == "user":
                if not isinstance(content, str):
                    raise ConversationError(f"message {i} (user) must have text content")
                if system is not None and i == first:
                    content = system + "\n\n" + content  # the model has no system role: fold it into the user turn
                add([special("<|user_start|>")] + self.encode(content) + [special("<|user_end|>")], 0)
                continue
            add([special("<|assistant_start|>")], 0)
            if isinstance(content, str):
                add(self.encode(content), 1)
            elif isinstance(content, list):
                for part in content:
                    kind = part.get("type") if isinstance(part, dict) else None
                    if kind == "text":
                        add(self.encode(part["text"]), 1)
                    elif kind == "python":  # the model writes the tool call: trained
                        add([special("<|python_start|>")] + self.encode(part["text"]) + [special("<|python_end|>")], 1)
                    elif kind == "python_output":  # the tool writes its output at inference: not trained
                        add([special("<|output_start|>")] + self.encode(part["text"]) + [special("<|output_end|>")], 0)
                    else:
                        raise ConversationError(f"message {i} has a part of type {kind!r}: expected 'text', "
                                                "'python' or 'python_output'")
            else:
                raise ConversationError(f"message {i} (assistant) must have text or a list of parts as content")
            add([special("<|assistant_end|>")], 1)
        return ids, mask

    def render_conversation(self, conversation: dict | list[dict],
                            max_tokens: int = 2048) -> tuple[list[int], list[int]]:
        """(ids, mask) of a conversation for supervised training, both cut to max_tokens.

        A conversation is {"messages": [...]} (or just the list): an optional system message, then user and
        assistant messages in turn. mask[i] is 1 for the tokens the assistant writes (its text, its python calls,
        the end of its turn) and 0 for everything the model is given (user turns, tool outputs, turn openers).
        """
        ids, mask = self._render(_messages(conversation))
        return ids[:max_tokens], mask[:max_tokens]

    def render_for_completion(self, conversation: dict | list[dict]) -> list[int]:
        """Ids that prime the model to write the last (assistant) message: that message dropped, an assistant turn
        opened. Not truncated: fitting the context is the caller's business."""
        messages = copy.deepcopy(_messages(conversation))
        if not messages or messages[-1].get("role") != "assistant":
            raise ConversationError(f"message {len(messages) - 1}: expected role 'assistant' (the message to complete) "
                                    "at the end of the conversation")
        messages.pop()
        ids, _ = self._render(messages)
        return ids + [self.encode_special("<|assistant_start|>")]

    def visualize_tokenization(self, ids: list[int], mask: list[int], color: bool = True) -> str:
        """Tokens joined by '|', green where mask is 1 (trained on), red where 0: to eyeball a rendered conversation.
        Without color (a pipe or a file, where escape codes are noise) trained tokens are in [brackets]."""
        if not color:
            return "|".join(f"[{self.id_to_token(i)}]" if m else self.id_to_token(i) for i, m in zip(ids, mask))
        green, red, reset = "\033[92m", "\033[91m", "\033[0m"
        return "|".join(f"{green if m else red}{self.id_to_token(i)}{reset}" for i, m in zip(ids, mask))

    # ----------------------------------------------------------------------------------------------------------------

    def save(self, folder: str | Path) -> None:
        """Write folder/tokenizer.pkl (the pickled tiktoken Encoding) and folder/token_bytes.pt."""
        import torch  # only here: most users of the tokenizer never need torch
        folder = Path(folder)
        with atomic_path(folder / "tokenizer.pkl") as tmp:
            tmp.write_bytes(pickle.dumps(self.enc))
        with atomic_path(folder / "token_bytes.pt") as tmp:
            torch.save(torch.tensor(self.token_byte_lengths(), dtype=torch.int32), tmp)


RECORD = "training.json"  # what the tokenizer was trained on: tokenizer eval defaults to that dataset


def write_record(folder: Path, **fields) -> None:
    with atomic_path(folder / RECORD) as tmp:
        tmp.write_text(json.dumps(fields, indent=2) + "\n")


def read_record(folder: Path | None = None) -> dict:
    """The settings the tokenizer in `folder` (default the home one) was trained with; {} when not recorded (older
    tokenizers, nanochat's)."""
    try:
        record = json.loads(((folder or tokenizer_dir()) / RECORD).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def trained_on(folder: Path | None = None) -> str | None:
    """The dataset the tokenizer was trained on, if recorded."""
    return read_record(folder).get("dataset")


def _messages(conversation: dict | list[dict]) -> list[dict]:
    messages = conversation.get("messages") if isinstance(conversation, dict) else conversation
    if not isinstance(messages, list):
        raise ConversationError("a conversation is {'messages': [...]} or a list of messages")
    return messages


def load_tokenizer(path: str | Path | None = None) -> Tokenizer:
    """Load a tokenizer folder (default <home>/tokenizer) or a tokenizer.pkl file, ours or nanochat's."""
    path = Path(path) if path is not None else tokenizer_dir()
    pkl = path if path.suffix == ".pkl" else path / "tokenizer.pkl"
    if not pkl.is_file():
        raise UserError(f"no tokenizer at {pkl}: run `primechat tokenizer train` first")
    with open(pkl, "rb") as f:
        enc = pickle.load(f)
    missing = [name for name in SPECIAL_TOKENS if name not in enc.special_tokens_set]
    if missing:
        raise UserError(f"{pkl} lacks the special tokens {missing}: retrain it with `primechat tokenizer train`")
    return Tokenizer(enc)


# --------------------------------------------------------------------------------------------------------------------
# Training

def check_vocab_size(vocab_size: int) -> None:
    smallest = 256 + len(SPECIAL_TOKENS)
    if vocab_size < smallest:
        raise UserError(f"--vocab-size {vocab_size} is too small: it must hold the 256 single bytes and "
                        f"{len(SPECIAL_TOKENS)} special tokens, so use at least {smallest}")


def train_tokenizer(texts, vocab_size: int) -> Tokenizer:
    """Learn vocab_size - 9 tokens (256 single bytes + merges) from an iterator of strings, then add the specials."""
    check_vocab_size(vocab_size)
    bpe = rustbpe.Tokenizer()
    bpe.train_from_iterator(texts, vocab_size - len(SPECIAL_TOKENS), buffer_size=8192, pattern=SPLIT_PATTERN)
    ranks = {bytes(token): rank for token, rank in bpe.get_mergeable_ranks()}
    if len(ranks) + len(SPECIAL_TOKENS) != vocab_size:  # rustbpe stops early once no pair of tokens is left to merge
        raise UserError(f"the training text only supports a vocabulary of {len(ranks) + len(SPECIAL_TOKENS)}, not "
                        f"{vocab_size}: give it more text (--max-chars, more shards) or lower --vocab-size")
    return Tokenizer.from_ranks(ranks)


class TrainingText:
    """The text a tokenizer learns from: training-shard documents in order, each cut to doc_cap characters (None:
    whole), until more than max_chars characters have gone by. Counts what it yielded; iterate it once."""

    def __init__(self, dataset: str, max_chars: int, doc_cap: int | None):
        self.paths, _ = shards.list_shards(dataset)
        self.max_chars, self.doc_cap = max_chars, doc_cap
        self.chars = self.docs = 0

    def __iter__(self):
        with progress(total=self.max_chars, unit="char", unit_scale=True, desc="reading text") as bar:
            for text, _, _ in shards.iter_texts(self.paths):
                doc = text[:self.doc_cap]  # a few huge documents would otherwise dominate the pair counts
                self.chars += len(doc)
                self.docs += 1
                bar.update(len(doc))
                yield doc
                if self.chars > self.max_chars:
                    return


def check_round_trip(tokenizer: Tokenizer, text: str = ROUND_TRIP_SAMPLE) -> None:
    if tokenizer.decode(tokenizer.encode(text)) != text:
        raise RuntimeError("the trained tokenizer does not give back the round-trip sample text unchanged")


def char_count(value: str) -> int:
    """argparse type for a count of characters: 2e9 and 2000000000 both work."""
    try:
        count = float(value)
    except ValueError:
        raise ArgumentTypeError(f"{value!r} is not a number") from None
    if not count.is_integer() or count < 1:
        raise ArgumentTypeError(f"{value!r} is not a positive whole number")
    return int(count)


def add_arguments(parser) -> None:
    shards.add_dataset_argument(parser, "dataset whose training shards to learn from (OWNER/NAME or NAME under "
                                        "base_data/)")
    parser.add_argument("--vocab-size", type=int, default=32768,
                        help="final vocabulary size, the 9 special tokens included")
    parser.add_argument("--max-chars", type=char_count, default=2_000_000_000,
                        help="learn from about this many characters (2e9 accepted); fewer if the dataset is smaller")
    parser.add_argument("--doc-cap", type=char_count, default=10_000,
                        help="use only each document's first N characters")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a tokenizer that checkpoints were trained with (the old one is moved to "
                             "tokenizer_backup/, not deleted)")


def dependent_checkpoints() -> list[str]:
    """Checkpoint folders (<stage>_checkpoints/<tag>) that use the home tokenizer: those without a tokenizer.pkl of
    their own (imported models carry theirs)."""
    home = home_dir()
    return sorted(str(folder.relative_to(home)) for folder in home.glob("*_checkpoints/*/")
                  if any(folder.glob("meta_*.json")) and not (folder / "tokenizer.pkl").exists())


def move_aside(folder: Path) -> Path:
    """Rename the tokenizer folder to tokenizer_backup/<time>/ (never delete it): its checkpoints need it back."""
    backup = folder.parent / "tokenizer_backup" / time.strftime("%Y%m%d-%H%M%S")
    while backup.exists():  # two trainings within a second
        backup = backup.with_name(backup.name + "-1")
    backup.parent.mkdir(parents=True, exist_ok=True)
    folder.rename(backup)
    return backup


def main(args) -> None:
    check_vocab_size(args.vocab_size)
    folder = tokenizer_dir()
    users = dependent_checkpoints() if (folder / "tokenizer.pkl").exists() and not args.overwrite else []
    # A new tokenizer of the same size loads silently into their checkpoints and turns the output into garbage.
    # The same settings on the same data give the same tokenizer (a rerun, `speedrun --restart`): that one may
    # be written, once checked identical after training.
    refusal = (f"{folder} is the tokenizer that {', '.join(users)} {'was' if len(users) == 1 else 'were'} trained "
               f"with: add --overwrite to train a new one (the old one is moved to {folder.parent / 'tokenizer_backup'}"
               f"/), or set PRIMECHAT_HOME to another folder")
    args.dataset = shards.pick_dataset(args.dataset)
    settings = {"dataset": args.dataset, "vocab_size": args.vocab_size, "max_chars": args.max_chars,
                "doc_cap": args.doc_cap}
    if users and read_record(folder) not in (settings, {}):  # unrecorded (older): trained, then compared
        raise UserError(refusal)
    text = TrainingText(args.dataset, args.max_chars, args.doc_cap)
    print(f"training a {args.vocab_size:,}-token vocabulary on up to {args.max_chars:,} characters of "
          f"{len(text.paths)} training shard(s) of {args.dataset}", flush=True)
    t0 = time.time()
    tokenizer = train_tokenizer(iter(text), args.vocab_size)
    train_time = time.time() - t0
    print(f"trained on {text.chars:,} characters ({text.docs:,} documents) in {train_time:.1f} s")

    check_round_trip(tokenizer)
    if users and load_tokenizer(folder).enc._mergeable_ranks != tokenizer.enc._mergeable_ranks:
        raise UserError(refusal.replace(": add", " (the one this training gave differs from it): add"))
    if args.overwrite and (folder / "tokenizer.pkl").exists() and dependent_checkpoints():
        print(f"moved the old tokenizer to {move_aside(folder)}: restore it from there for the checkpoints "
              f"trained with it")
    tokenizer.save(folder)
    write_record(folder, **settings)
    print(f"saved {folder / 'tokenizer.pkl'} and {folder / 'token_bytes.pt'}")

    lengths = [n for n in tokenizer.token_byte_lengths() if n > 0]
    stats = {"token_bytes_min": min(lengths), "token_bytes_max": max(lengths),
             "token_bytes_mean": statistics.mean(lengths), "token_bytes_std": statistics.stdev(lengths)}
    print("bytes per token: " + ", ".join(f"{k.removeprefix('token_bytes_')} {v:.2f}" for k, v in stats.items()))
    report.log_section("Tokenizer training", {
        "dataset": args.dataset, "max_chars": args.max_chars, "doc_cap": args.doc_cap, "train_chars": text.chars,
        "vocab_size": tokenizer.vocab_size, "train_time": train_time, "num_special_tokens": len(SPECIAL_TOKENS),
        **stats,
    })


if __name__ == "__main__":
    from primechat.cli import run_module
    run_module(add_arguments, main)
