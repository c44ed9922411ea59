"""English word lists for the spelling tasks, from an explicit, pluggable source.

nanochat downloads dwyl's words_alpha.txt (370K words) from GitHub. A source here is one of:
    builtin          words harvested from the docstrings of Python's own standard library: no download, the same
                     list for a given Python version (~3-4K words, cached under <home>/words/ after the first build)
    https://…/x.txt  a word list downloaded once (progress bar, atomic) into <home>/words/, reused afterwards; e.g.
                     https://raw.githubusercontent.com/dwyl/english-words/master/words_alpha.txt
    PATH             a local text file, one word per line
Only lowercase a-z words of 3+ letters are kept, deduplicated and sorted, so a list is the same wherever it comes from.
"""

import ast
import collections
import functools
import hashlib
import re
import sys
import urllib.request
from pathlib import Path

from primechat.common import UserError, atomic_path, home_dir, progress

WORD = re.compile(r"(?<![\w'])[a-z]{3,15}(?![\w'])")
WORD_LINE = re.compile(r"[a-z]{3,}")


def clean(lines) -> list[str]:
    return sorted({w for w in (line.strip().lower() for line in lines) if WORD_LINE.fullmatch(w)})


@functools.cache  # a few seconds of parsing; the answer never changes within one Python
def builtin_words() -> list[str]:
    """Lowercase words found in docstrings of at least 3 stdlib modules: common English, few identifiers."""
    from primechat.data.demo import stdlib_files
    seen_in = collections.Counter()
    for _, path in stdlib_files():
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError):
            continue
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                found.update(WORD.findall(ast.get_docstring(node) or ""))
        seen_in.update(found)
    return sorted(w for w, n in seen_in.items() if n >= 3)


FIX = "--words builtin"  # how the commands' flags pick the offline list; a mixture file says `words: builtin`


def download(url: str, path: Path, fix: str = FIX) -> None:
    print(f"downloading the word list {url} to {path}", file=sys.stderr)
    try:
        with urllib.request.urlopen(url, timeout=30) as response, atomic_path(path) as tmp, open(tmp, "wb") as f:
            size = int(response.headers.get("Content-Length") or 0) or None
            with progress(total=size, unit="B", unit_scale=True, desc="words") as bar:
                for block in iter(lambda: response.read(1 << 16), b""):
                    f.write(block)
                    bar.update(len(block))
    except OSError as e:
        raise UserError(f"cannot download the word list {url} ({e}): use {fix} (offline) or a local file") from None


def load_words(source: str = "builtin", base: Path | None = None, fix: str = FIX) -> list[str]:
    """The word list of a source (see the module docstring); relative paths are taken from `base`. `fix` is how the
    user picks another source in the command being run, named when this one fails."""
    folder = home_dir() / "words"
    if source == "builtin":
        path = folder / f"builtin-py{sys.version_info[0]}.{sys.version_info[1]}.txt"
        if not path.exists():
            with atomic_path(path) as tmp:
                tmp.write_text("\n".join(builtin_words()) + "\n")
    elif source.startswith(("http://", "https://")):
        name = re.sub(r"[^\w.-]", "_", source.rstrip("/").rsplit("/", 1)[-1])
        path = folder / f"{hashlib.sha1(source.encode()).hexdigest()[:8]}-{name}"
        if not path.exists():
            download(source, path, fix)
    else:
        path = Path(source).expanduser()
        if not path.is_absolute() and base is not None:
            path = base / path
        if not path.is_file():
            raise UserError(f"word list {path} not found: give a text file with one word per line, a URL, "
                            f"or use {fix}")
    stat = path.stat()
    words = read_words(path, stat.st_mtime_ns, stat.st_size)
    if not words:
        raise UserError(f"word list {source} has no words (lowercase a-z, 3+ letters, one per line)")
    return list(words)


@functools.cache  # cleaning nanochat's 370K words takes ~0.4 s, and a mixture, RL or the metrics ask several times
def read_words(path: Path, mtime_ns: int, size: int) -> tuple[str, ...]:
    """The clean word list of a file, cached for as long as the file is unchanged (mtime_ns and size)."""
    return tuple(clean(path.read_text(errors="replace").splitlines()))
