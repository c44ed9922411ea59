"""Rows of a Hugging Face dataset, read from its parquet files: `load_rows("openai/gsm8k", "main", "train")`.

Datasets on the Hub keep one parquet file (or a few) per subset (also called config) and split, either at
`<subset>/<split>-00000-of-00001.parquet` or, for datasets with one subset, `data/<split>-….parquet`. We download just
the files of the asked (subset, split) with huggingface_hub, so they sit in the usual HF cache (~/.cache/huggingface,
or $HF_HUB_CACHE), are shared with any other HF tool, and are never downloaded twice: online, a run costs one small
listing request; offline (no network, or HF_HUB_OFFLINE=1) the cached files are used as they are. HF_ENDPOINT and
HF_TOKEN work as everywhere else.

Rows are shuffled with numpy's default_rng(seed).permutation, which is the order `datasets.Dataset.shuffle(seed)`
gives: the same examples land in the same places as in nanochat, which shuffles with seed 42.
"""

import fnmatch
import logging
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from huggingface_hub import HfApi, snapshot_download
from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, HFValidationError, LocalEntryNotFoundError,
                                    OfflineModeIsEnabled, RepositoryNotFoundError)

from primechat.common import UserError

# snapshot_download logs "No files matched allow_patterns=…" just before parquet_files says the same with the fix; drop
# that one line (a filter, not the logger's level, which would also hide its progress bars)
logging.getLogger("huggingface_hub._snapshot_download").addFilter(lambda r: not r.getMessage().startswith("No files"))


class MissingDataset(UserError):
    """The Hub (or mirror) has no such dataset, or none of the asked subset/split. `problem` is the message without its
    fix, for a caller with a better one (a shipped mixture, which the user cannot edit)."""

    def __init__(self, problem: str, fix: str):
        super().__init__(f"{problem}; {fix}")
        self.problem = problem


def file_patterns(subset: str | None, split: str) -> list[str]:
    if subset:
        return [f"{subset}/{split}-*.parquet", f"{subset}/{split}/*.parquet"]
    return [f"data/{split}-*.parquet", f"{split}-*.parquet"]


def available(repo: str) -> str:
    """'subset/split, …' of the parquet files the repo has, for error messages (empty when it cannot be listed)."""
    try:
        files = HfApi().list_repo_files(repo, repo_type="dataset")
    except Exception:  # only an error message depends on it: say nothing rather than fail differently
        return ""
    pairs = sorted({re.sub(r"(-\d+-of-\d+)?\.parquet$", "", f) for f in files if f.endswith(".parquet")})
    return ", ".join(pairs[:20]) + (", …" if len(pairs) > 20 else "")


def parquet_files(repo: str, subset: str | None, split: str) -> list[Path]:
    """The local paths of the (subset, split) parquet files, downloaded into the HF cache if not there yet."""
    patterns = file_patterns(subset, split)
    where = f"{repo} (subset {subset}, split {split})" if subset else f"{repo} (split {split})"
    try:
        folder = Path(snapshot_download(repo, repo_type="dataset", allow_patterns=patterns))
    except HFValidationError:
        raise UserError(f"bad dataset repo id {repo!r}: use OWNER/NAME") from None
    except GatedRepoError:
        raise UserError(f"dataset {repo} is gated: accept its terms on the Hub, then set HF_TOKEN") from None
    except RepositoryNotFoundError:
        raise MissingDataset(f"dataset {repo} not found on {HfApi().endpoint}",
                             "check its name; for a private one set HF_TOKEN") from None
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, HfHubHTTPError, OSError) as e:
        reason = (str(e).strip() or type(e).__name__).splitlines()[0]
        raise UserError(f"cannot get {where} from {HfApi().endpoint} and it is not in the HF cache ({reason}): "
                        "connect to the network once, or set HF_ENDPOINT to a mirror") from None
    files = sorted(p for p in folder.rglob("*.parquet")
                   if any(fnmatch.fnmatch(p.relative_to(folder).as_posix(), pat) for pat in patterns))
    if not files:
        have = available(repo)
        raise MissingDataset(f"dataset {repo} has no parquet files for {'subset ' + subset + ', ' if subset else ''}"
                             f"split {split} (looked for {' or '.join(patterns)})" + (f": it has {have}" if have else ""),
                             "fix the subset/split")
    return files


class HubRows:
    """The rows of one (repo, subset, split), shuffled with `seed` (None: file order); row i is a dict."""

    def __init__(self, repo: str, subset: str | None, split: str, columns: list[str], seed: int | None = 42):
        files = parquet_files(repo, subset, split)
        schema = pq.read_schema(files[0])
        missing = [c for c in columns if c not in schema.names]
        if missing:
            raise UserError(f"dataset {repo} (subset {subset}, split {split}) has no column {', '.join(missing)}: "
                            f"its columns are {', '.join(schema.names)}")
        self.name = repo
        self.table = pa.concat_tables([pq.read_table(f, columns=columns) for f in files]).combine_chunks()
        n = self.table.num_rows
        self.order = np.arange(n) if seed is None else np.random.default_rng(seed).permutation(n)

    def __len__(self) -> int:
        return self.table.num_rows

    def __getitem__(self, index: int) -> dict:
        return self.table.slice(int(self.order[index]), 1).to_pylist()[0]
