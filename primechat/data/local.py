"""Turn your own text into pretraining shards: `primechat data add notes.txt chats.jsonl --name mine`.

Inputs: a `.txt` file is one document (a lone .txt is split into paragraphs, at blank lines, instead); a `.jsonl` file holds one JSON object per line with the text in --text-field;
a `.parquet` file holds one document per row of the --text-field column. Empty documents are dropped.

All documents are read into memory, shuffled with a fixed seed (42) so the same inputs always give the same shards,
and split: the last shard is validation and holds --val-fraction of the documents (at least one); the training shards
before it are cut every ~--shard-chars characters. The dataset is built in a hidden folder beside
base_data/<name>/ and renamed into place at the end, so a dataset is always complete or absent.
"""

import errno
import json
import os
import random
import re
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from primechat.common import UserError, dataset_dir, progress
from primechat.data.shards import shard_name, write_manifest, write_shard

SEED = 42
EXTENSIONS = (".txt", ".jsonl", ".parquet")


def add_arguments(parser):
    parser.add_argument("files", nargs="+", metavar="FILE", help="text files: .txt, .jsonl or .parquet")
    parser.add_argument("--name", required=True, help="dataset name: the shards go to base_data/NAME/")
    parser.add_argument("--text-field", default="text", help="the JSON key (.jsonl) or column (.parquet) with text")
    parser.add_argument("--shard-chars", type=int, default=250_000_000,
                        help="characters per training shard (nanochat's shards hold ~250M)")
    parser.add_argument("--val-fraction", type=float, default=0.05, help="share of documents kept for validation")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset of that name")


# ---- reading ---------------------------------------------------------------------------------------------------------

def _decode(data: bytes, where: str, offset: int = 0) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{where}: not UTF-8 text (bad byte at offset {offset + e.start}): "
                        f"convert the file to UTF-8, e.g. with iconv") from None


def read_txt(path: Path) -> list[str]:
    text = _decode(path.read_bytes(), str(path)).removeprefix("\ufeff")  # a byte-order mark is not text
    return [text] if text.strip() else []


def read_jsonl(path: Path, field: str, bar) -> list[str]:
    docs, offset = [], 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            where = f"{path}:{lineno}"
            line = _decode(raw, where, offset)
            if lineno == 1:
                line = line.removeprefix("\ufeff")
            offset += len(raw)
            bar.update(len(raw))
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{where}: invalid JSON ({e.msg}, column {e.colno}): "
                                f"each line must be one JSON object") from None
            if not isinstance(obj, dict) or field not in obj:
                raise UserError(f"{where}: no {field!r} field in this line: "
                                f"name the field holding the text with --text-field")
            if not isinstance(obj[field], str):
                raise UserError(f"{where}: field {field!r} is {type(obj[field]).__name__}, not a string")
            if obj[field].strip():
                docs.append(obj[field])
    return docs


def read_parquet(path: Path, field: str) -> list[str]:
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"{path}: not a readable parquet file ({e})") from None
    if field not in schema.names:
        raise UserError(f"{path}: no column {field!r} (columns: {', '.join(schema.names)}): "
                        f"name the text column with --text-field")
    column_type = schema.field(field).type
    if not (pa.types.is_string(column_type) or pa.types.is_large_string(column_type)):
        raise UserError(f"{path}: column {field!r} holds {column_type}, not text")
    texts = pq.read_table(path, columns=[field]).column(field).to_pylist()
    return [t for t in texts if t and t.strip()]


def read_documents(files: list[str], field: str) -> list[str]:
    """Every non-empty document of every file, in order; a UserError names the first bad file (and line)."""
    paths = [Path(f) for f in files]
    for path in paths:
        if not path.is_file():
            raise UserError(f"{path}: no such file")
        if path.suffix.lower() not in EXTENSIONS:
            raise UserError(f"{path}: unsupported file type {path.suffix or '(none)'}: use .txt, .jsonl or .parquet")
    docs = []
    with progress(total=sum(p.stat().st_size for p in paths), unit="B", unit_scale=True, desc="reading") as bar:
        for path in paths:
            suffix = path.suffix.lower()
            if suffix == ".jsonl":
                found = read_jsonl(path, field, bar)  # moves the bar line by line: one file can be huge
            else:
                found = read_txt(path) if suffix == ".txt" else read_parquet(path, field)
                bar.update(path.stat().st_size)
            if not found:
                raise UserError(f"{path}: no text in this file (empty, or only empty documents)")
            docs += found
    return docs


# ---- writing ---------------------------------------------------------------------------------------------------------

def split_shards(docs: list[str], shard_chars: int, val_fraction: float) -> list[list[str]]:
    """Shuffle (seed 42), then cut training shards of ~shard_chars characters; the validation shard comes last."""
    docs = list(docs)
    random.Random(SEED).shuffle(docs)
    num_val = min(len(docs) - 1, max(1, round(len(docs) * val_fraction)))
    shards, current, chars = [], [], 0
    for doc in docs[:-num_val]:
        current.append(doc)
        chars += len(doc)
        if chars >= shard_chars:
            shards.append(current)
            current, chars = [], 0
    if current:
        shards.append(current)
    return shards + [docs[-num_val:]]


def build_dataset(folder: Path, docs: list[str], shard_chars: int, val_fraction: float, **manifest) -> int:
    """Write docs as shards into `folder` (replacing it if present) plus dataset.json; returns the shard count.

    Everything is written into a hidden folder beside `folder` and renamed into place at the end.
    """
    shards = split_shards(docs, shard_chars, val_fraction)
    tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
    old = folder.with_name(f".{folder.name}.old{os.getpid()}")
    for leftover in (tmp, old):  # of a killed run that had our process id
        shutil.rmtree(leftover, ignore_errors=True)
    try:
        for index, texts in enumerate(progress(shards, unit="shard", desc="writing")):
            write_shard(texts, tmp / shard_name(index))
        write_manifest(tmp, val_shard=shard_name(len(shards) - 1), **manifest)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            raise UserError(f"disk full while writing {folder}: free some space, or set PRIMECHAT_HOME to a folder "
                            f"on a bigger disk") from None
        raise
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
    return len(shards)


def main(args):
    folder = dataset_dir(args.name)
    if folder.exists() and not args.overwrite:
        raise UserError(f"dataset {folder.name!r} already exists in {folder}: pick another --name, "
                        f"or add --overwrite to replace it")
    if args.shard_chars < 1:
        raise UserError(f"--shard-chars {args.shard_chars}: give a positive number of characters")
    if not 0 < args.val_fraction < 1:
        raise UserError(f"--val-fraction {args.val_fraction}: give a fraction between 0 and 1, e.g. 0.05")
    docs = read_documents(args.files, args.text_field)
    if len(docs) == 1 and len(args.files) == 1 and args.files[0].lower().endswith(".txt"):
        # one book in one file: its paragraphs (blocks between blank lines) become the documents
        paragraphs = [p.strip("\n") for p in re.split(r"\n(?:[ \t]*\n)+", docs[0]) if p.strip()]
        if len(paragraphs) >= 2:
            print(f"{args.files[0]} is one document: split on blank lines into {len(paragraphs):,} paragraphs, "
                  f"one document each")
            docs = paragraphs
    if len(docs) < 2:
        raise UserError(f"only 1 document in {', '.join(args.files)}: at least 2 are needed "
                        f"(one for training, one for validation)")
    num_shards = build_dataset(folder, docs, args.shard_chars, args.val_fraction,
                               sources=[str(Path(f).resolve()) for f in args.files])
    chars = sum(map(len, docs))
    print(f"{len(docs):,} documents, {chars:,} characters -> {num_shards} shards "
          f"({num_shards - 1} train + 1 validation) in {folder}")
