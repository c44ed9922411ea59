"""The pretraining shard format, and which shard is validation.

A dataset is a folder base_data/<name>/ of parquet files `shard_XXXXX.parquet`, each with one `text` column written
in row groups of 1024 documents (zstd), exactly like nanochat's shards, so shards move freely between the two.

Validation split rule: the folder's `dataset.json` names the validation shard (`val_shard`); every other shard is
training data. Without a manifest (shards copied in by hand) the last shard in sorted order is validation, as in
nanochat. For Hub datasets the validation shard is the repo's highest-numbered shard (climbmix-400b-shuffle:
shard_06542, fineweb-edu-100b-shuffle: shard_01822), always downloaded first.
"""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from primechat.common import UserError, atomic_path, base_data_dir, dataset_dir, print0

DEFAULT_DATASET = "karpathy/climbmix-400b-shuffle"  # nanochat's current pretraining corpus
ROW_GROUP_SIZE = 1024
MANIFEST = "dataset.json"


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.parquet"


def write_shard(texts: list[str], path: Path) -> None:
    """Write one shard atomically: the file appears complete or not at all.

    Rank r of N reads row groups r, r+N, … of each shard, so a small shard (the demo corpus, a few books of your own)
    is still cut into at least 8 row groups: up to 8 processes then each get a share. One process reads the same
    documents in the same order either way."""
    table = pa.table({"text": pa.array(texts, type=pa.string())})
    row_group_size = max(1, min(ROW_GROUP_SIZE, -(-len(texts) // 8)))
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=row_group_size, compression="zstd", compression_level=3,
                       use_dictionary=False, write_statistics=False)


def read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    return json.loads(path.read_text()) if path.exists() else {}


def write_manifest(folder: Path, **fields) -> None:
    manifest = {**read_manifest(folder), **fields}
    with atomic_path(folder / MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")


def local_datasets() -> list[str]:
    """Names of the datasets under base_data/ that hold shards."""
    return sorted(p.name for p in base_data_dir().glob("*/") if any(p.glob("shard_*.parquet")))


def add_dataset_argument(parser, help: str, default: str = "") -> None:
    """--dataset, whose help ends with pick_dataset's rule, after `default`: a rule of the command's own first."""
    parser.add_argument("--dataset", default=None, help=f"{help} (default: {default}"
                        f"{DEFAULT_DATASET.split('/')[-1]}, or the only dataset present)")


def pick_dataset(name: str | None, choose: str | None = "choose another with --dataset") -> str:
    """--dataset's value; without one nanochat's corpus, unless it is absent and exactly one other dataset is there
    (a user who downloaded or added only that one means it), which is then named on the console, with `choose`:
    how the calling command picks another (None: it cannot)."""
    if name:
        return name
    present = local_datasets()
    if len(present) == 1 and present[0] != DEFAULT_DATASET.split("/")[-1]:
        print0(f"dataset: {present[0]} (the only one in {base_data_dir()}{'; ' + choose if choose else ''})")
        return present[0]
    return DEFAULT_DATASET


def dataset_label(dataset: str, train_shards: int) -> str:
    """A dataset as report sections name it: with the Hub repo it came from, if downloaded, and its training shards."""
    repo = read_manifest(dataset_dir(dataset)).get("repo")
    return f"{dataset} ({repo + ', ' if repo else ''}{train_shards} training shards)"


def refetch_hint(folder: Path) -> str:
    """How to get a dataset's shards back, by where they came from (dataset.json says)."""
    manifest = read_manifest(folder)
    if manifest.get("repo"):
        return f"run `primechat data download --dataset {manifest['repo']}` again"
    if manifest.get("sources"):  # data add
        return f"add the dataset again with `primechat data add FILES --name {folder.name} --overwrite`"
    if manifest.get("source"):  # data demo, which leaves an existing folder alone
        return f"delete {folder} and run `primechat data demo --name {folder.name}` again"
    return f"copy the shard back, or delete {folder} and download or add the dataset again"


def list_shards(dataset: str, choose: str | None = "pick one with --dataset") -> tuple[list[Path], Path]:
    """(train shards, validation shard) of a local dataset, or a UserError saying how to get some.

    `choose` is how the calling command picks another dataset (None: it cannot), named when this one has no shards.
    A validation shard that dataset.json names but that is missing is an error: falling back to the last shard
    would quietly validate on training data."""
    folder = dataset_dir(dataset)
    shards = sorted(folder.glob("shard_*.parquet"))
    if len(shards) < 2:
        have = local_datasets()
        hint = f" (datasets present: {', '.join(have)}{'; ' + choose if choose else ''})" if have else ""
        raise UserError(f"dataset {folder.name!r} needs at least 2 shards (train + val) in {folder}, found "
                        f"{len(shards)}: run `primechat data download -n 8`, `primechat data demo` or "
                        f"`primechat data add FILES`{hint}")
    val_name = read_manifest(folder).get("val_shard")
    if val_name and not (folder / val_name).exists():
        raise UserError(f"the validation shard {folder / val_name} (named in {folder / MANIFEST}) is missing: "
                        f"{refetch_hint(folder)}")
    val = folder / val_name if val_name else shards[-1]
    return [p for p in shards if p != val], val


def damaged(path: Path) -> UserError:
    hint = refetch_hint(path.parent)
    fix = f"delete it and {hint}" if read_manifest(path.parent).get("repo") else hint  # download fetches only gaps
    return UserError(f"shard {path} is damaged (not a readable parquet file): {fix}")


def open_shard(path: Path) -> pq.ParquetFile:
    """The shard's parquet file, or a UserError naming a damaged one (cut off by a full disk, a bad copy)."""
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise damaged(path) from None


def read_row_group(pf: pq.ParquetFile, path: Path, index: int) -> list[str]:
    """The texts of one row group; a UserError if this part of the shard cannot be decoded."""
    try:
        return pf.read_row_group(index, columns=["text"]).column("text").to_pylist()
    except (pa.ArrowException, OSError):
        raise damaged(path) from None


def iter_texts(paths: list[Path], start_rank: int = 0, stride: int = 1):
    """Yield (text, shard_index, row_group_index) over the row groups rank, rank+stride, … of every shard in turn."""
    for shard_index, path in enumerate(paths):
        pf = open_shard(path)
        for rg in range(start_rank, pf.num_row_groups, stride):
            for text in read_row_group(pf, path, rg):
                yield text, shard_index, rg
