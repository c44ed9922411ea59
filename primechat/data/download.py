"""Download pretraining shards from a Hugging Face dataset repo: `primechat data download -n 8`.

Any dataset repo whose top folder holds `shard_XXXXX.parquet` files with a `text` column works: the default
karpathy/climbmix-400b-shuffle (6,543 shards of ~100 MB), karpathy/fineweb-edu-100b-shuffle, or your own.

Validation rule (the same as shards.py): the repo's highest-numbered shard is the validation shard. It is always
downloaded, and queued first; `-n N` adds the first N training shards in index order (-1 = all of them).
dataset.json records the repo and which shard is validation.

Shards land in base_data/<name>/ and appear there complete or not at all: huggingface_hub downloads each one into
the hidden folder .download/ beside them and we rename it into place once it is whole. Shards already present are
skipped without asking the Hub about them, so a re-run after a crash or Ctrl-C fetches only what is missing; a shard
that was cut off mid-way starts again from its beginning. Downloads go through huggingface_hub, so HF_ENDPOINT,
HF_TOKEN and HF_HUB_OFFLINE behave as everywhere else.
"""

import contextlib
import errno
import functools
import importlib
import os
import re
import shutil
from multiprocessing.pool import ThreadPool
from pathlib import Path

from filelock import FileLock, Timeout
from huggingface_hub import HfApi, RepoFile
from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, HFValidationError, LocalEntryNotFoundError,
                                    OfflineModeIsEnabled, RepositoryNotFoundError, RevisionNotFoundError)
from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

from primechat.common import UserError, dataset_dir, human_bytes, progress
from primechat.data.shards import DEFAULT_DATASET, read_manifest, write_manifest

SHARD_RE = re.compile(r"shard_(\d+)\.parquet")
STAGING = ".download"  # huggingface_hub's work folder inside the dataset folder: partial files never sit beside shards


def add_arguments(parser):
    parser.add_argument("-n", "--num-shards", type=int, default=8,
                        help="training shards to download, the first N in index order (-1 = all); "
                             "the validation shard always comes too")
    parser.add_argument("--dataset", default=DEFAULT_DATASET, help="Hugging Face dataset repo, OWNER/NAME")
    parser.add_argument("-w", "--workers", type=int, default=4, help="shards downloaded in parallel")
    parser.add_argument("--revision", default="main", help="branch, tag or commit of the repo")


def list_repo_shards(api: HfApi, repo: str, revision: str) -> dict[int, RepoFile]:
    """{shard index: file} for the shard_XXXXX.parquet files in the repo's top folder."""
    shards = {}
    for entry in api.list_repo_tree(repo, repo_type="dataset", revision=revision):
        match = SHARD_RE.fullmatch(entry.path)
        if match and isinstance(entry, RepoFile):
            shards[int(match.group(1))] = entry
    return shards


def _network_errors() -> tuple:
    """What a refused, dropped or failing connection raises after huggingface_hub's own retries. Its HTTP library
    changed over the versions we support (0.x requests, 1.x httpx, 2.x httpx2), so take whichever are installed."""
    errors = [HfHubHTTPError, LocalEntryNotFoundError, ConnectionError, TimeoutError]
    for module, name in (("requests", "RequestException"), ("httpx", "HTTPError"), ("httpx2", "HTTPError")):
        with contextlib.suppress(ImportError):
            errors.append(getattr(importlib.import_module(module), name))
    return tuple(errors)


def explain(error: Exception, repo: str, revision: str, endpoint: str) -> str | None:
    """One line saying what went wrong and how to fix it, or None when the error is a bug to show in full."""
    if isinstance(error, HFValidationError):
        return f"bad dataset repo id {repo!r}: use --dataset OWNER/NAME"
    if isinstance(error, GatedRepoError):
        return f"dataset repo {repo} is gated: accept its terms on the Hub, then set HF_TOKEN to a token of yours"
    if isinstance(error, RepositoryNotFoundError):
        return (f"dataset repo {repo} not found at {endpoint}: check the name (--dataset OWNER/NAME); "
                f"for a private repo set HF_TOKEN")
    if isinstance(error, RevisionNotFoundError):
        return f"revision {revision!r} not found in dataset repo {repo}: check --revision"
    if isinstance(error, OfflineModeIsEnabled):
        return "HF_HUB_OFFLINE is set, so nothing can be downloaded: unset it and re-run"
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return "disk full: free some space, or set PRIMECHAT_HOME to a folder on a bigger disk, then re-run"
    if isinstance(error, _network_errors()):
        reason = (str(error).strip() or type(error).__name__).splitlines()[0]
        return (f"download from {endpoint} failed ({reason}): check your connection and re-run, "
                f"finished shards are kept and skipped")
    return None


def download_shard(api: HfApi, repo: str, revision: str, name: str, folder: Path) -> int:
    """Download one shard into the staging folder, then rename it into place. Returns its size."""
    path = api.hf_hub_download(repo, name, repo_type="dataset", revision=revision, local_dir=folder / STAGING)
    os.replace(path, folder / name)
    return (folder / name).stat().st_size


def download(repo: str, num_shards: int, workers: int, revision: str) -> None:
    folder = dataset_dir(repo)
    previous = read_manifest(folder).get("repo")
    if "/" not in repo.strip("/"):
        held = f" ({previous} is already in {folder})" if previous else ""
        raise UserError(f"--dataset {repo}: downloads take the Hub's OWNER/NAME, e.g. {DEFAULT_DATASET}{held}")
    if previous and previous != repo:
        raise UserError(f"{folder} holds shards of {previous}, not {repo}: delete that folder, or move it aside")
    api = HfApi()
    shards = list_repo_shards(api, repo, revision)
    if not shards:
        raise UserError(f"dataset repo {repo} (revision {revision}) has no shard_XXXXX.parquet files in its top "
                        f"folder: pick a pretraining dataset such as {DEFAULT_DATASET}")
    val_index = max(shards)
    train = sorted(i for i in shards if i != val_index)
    wanted = [shards[i] for i in [val_index] + (train if num_shards == -1 else train[:num_shards])]

    folder.mkdir(parents=True, exist_ok=True)
    # One download per folder at a time: each run clears the staging folder that the other would be writing into.
    with FileLock(folder / ".download.lock", timeout=0):
        shutil.rmtree(folder / STAGING, ignore_errors=True)  # partial files of a killed run
        write_manifest(folder, repo=repo, val_shard=shards[val_index].path, num_repo_shards=len(shards))
        todo = [f for f in wanted if not (folder / f.path).exists()]
        if todo:
            total = sum(f.size for f in todo)
            short = f" (the repo has only {len(train)} training shards)" if num_shards > len(train) else ""
            print(f"downloading {len(todo)} of {len(wanted)} shards{short}, {human_bytes(total)}, from {repo} "
                  f"to {folder}", flush=True)
            # Daemon worker threads: Ctrl-C or an error ends the program at once instead of waiting for the other
            # downloads to finish; whatever they leave in the staging folder is cleared by the next run.
            with ThreadPool(workers) as pool, progress(total=total, unit="B", unit_scale=True, desc="shards") as bar:
                fetch = functools.partial(download_shard, api, repo, revision, folder=folder)
                for size in pool.imap_unordered(fetch, [f.path for f in todo]):
                    bar.update(size)
        shutil.rmtree(folder / STAGING, ignore_errors=True)
    print(f"shards: {len(todo)} downloaded, {len(wanted) - len(todo)} already present, in {folder}")


def main(args):
    if args.num_shards < -1:
        raise UserError(f"-n {args.num_shards}: give a number of training shards, 0 or more, or -1 for all")
    if args.workers < 1:
        raise UserError(f"--workers {args.workers}: give 1 or more")
    hf_bars_were_off = are_progress_bars_disabled()
    disable_progress_bars()  # one bar of our own instead of one per file
    try:
        download(args.dataset, args.num_shards, args.workers, args.revision)
    except Timeout:
        raise UserError(f"another `primechat data download` is writing to {dataset_dir(args.dataset)}: "
                        f"let it finish first") from None
    except Exception as e:
        message = explain(e, args.dataset, args.revision, HfApi().endpoint)
        if message is None:
            raise
        raise UserError(message) from None
    finally:
        if not hf_bars_were_off:
            enable_progress_bars()
