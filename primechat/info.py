"""`primechat info`: where things live and what has been produced so far.

Prints the home folder, the device and dtype training would use, library versions, then each stage's output:
datasets (shards, validation shard), the tokenizer, checkpoints by stage/tag/step, and report sections.
"""

import platform
from pathlib import Path

from primechat.common import autodetect_device, compute_dtype, home_dir, human_bytes, tokenizer_dir
from primechat.data.shards import read_manifest
from primechat.train.checkpoint import STAGE_DIRS, saved_steps


def dataset_source(manifest: dict) -> str:
    """Where a dataset's shards came from: its Hub repo, the demo's source, the files `data add` read, or by hand."""
    if named := manifest.get("repo") or manifest.get("source"):
        return named
    files = manifest.get("sources") or []
    if not files:
        return "shards copied in by hand"
    more = f" and {len(files) - 1} more" if len(files) > 1 else ""
    return f"{Path(files[0]).name}{more} (data add)"


def add_arguments(parser):
    pass


def folder_size(path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(args):
    import torch

    home = home_dir()
    device = autodetect_device()
    gpu = f" ({torch.cuda.device_count()}× {torch.cuda.get_device_name(0)})" if device == "cuda" else ""
    print(f"home:      {home}  (set PRIMECHAT_HOME to move it)")
    print(f"device:    {device}{gpu}, dtype {str(compute_dtype(device)).removeprefix('torch.')}")
    print(f"software:  python {platform.python_version()}, torch {torch.__version__}")

    print("\ndatasets (base_data/):")
    datasets = sorted(p for p in (home / "base_data").glob("*/") if any(p.glob("shard_*.parquet")))
    for folder in datasets:
        shards = sorted(folder.glob("shard_*.parquet"))
        manifest = read_manifest(folder)
        val = manifest.get("val_shard", shards[-1].name)
        source = dataset_source(manifest)
        print(f"  {folder.name}: {len(shards)} shards ({human_bytes(folder_size(folder))}), val {val}, from {source}")
    if not datasets:
        print("  none yet: `primechat data demo` (offline) or `primechat data download -n 8`")

    print("\ntokenizer:")
    pkl = tokenizer_dir() / "tokenizer.pkl"
    if pkl.exists():
        from primechat.tokenizer import load_tokenizer
        print(f"  {pkl} (vocab {load_tokenizer().vocab_size:,})")
    else:
        print("  none yet: `primechat tokenizer train`")

    print("\ncheckpoints:")
    found = False
    for stage, dirname in STAGE_DIRS.items():
        for tag in sorted((home / dirname).glob("*/")):
            if steps := saved_steps(tag):
                found = True
                print(f"  {stage} {tag.name}: steps {', '.join(map(str, steps))} ({human_bytes(folder_size(tag))})")
    if not found:
        print("  none yet: `primechat train base`")

    from primechat.report import read_sections
    sections = list(read_sections())
    card = home / "report" / "report.md"
    print(f"\nreport sections: {', '.join(sections) if sections else 'none yet'}"
          + (f"; card {card}" if card.exists() else ""))
