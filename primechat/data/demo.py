"""Build the offline demo corpus: the docstrings of Python's own standard library, `primechat data demo`.

It needs no download, so the whole pipeline can be tried on any machine in minutes. The stdlib's .py sources are
parsed with `ast` (never imported, so nothing runs) and every docstring is kept, headed by what it documents:
one document per module docstring, and one per top-level class or function, a class together with its methods.
Test suites (test/, tests/, idle_test/) and site-packages are left out. The corpus is the same for a given Python
version: files are read in sorted order and the documents shuffled with seed 42, then cut into shards the same way as
`primechat data add` (last shard = validation, ~5% of the documents).
"""

import ast
import os
import platform
import sysconfig
from pathlib import Path

from primechat.common import UserError, dataset_dir, progress
from primechat.data.local import build_dataset
from primechat.data.shards import read_manifest

SOURCE = "docstrings of the Python standard library"
SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
SHARD_CHARS = 500_000  # small shards, so even this small corpus has several training shards
VAL_FRACTION = 0.05


def add_arguments(parser):
    parser.add_argument("--name", default="pydocs", help="dataset name: the shards go to base_data/NAME/")


def stdlib_files() -> list[tuple[str, Path]]:
    """(module name, path) of every stdlib source file outside test suites and site-packages, sorted by name."""
    root = Path(sysconfig.get_paths()["stdlib"])
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.startswith("config-")]
        for file in files:
            if file.endswith(".py") and not file.startswith("test_"):
                parts = (Path(folder) / file).relative_to(root).with_suffix("").parts
                module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
                found.append((module, Path(folder) / file))
    return sorted(found)


def _signature(node, qualname: str) -> str:
    """`def qualname(args) -> ret` or `class qualname(bases)`, rendered by ast.unparse (fixed per Python version)."""
    if isinstance(node, ast.ClassDef):
        bases = [ast.unparse(b) for b in node.bases] + [ast.unparse(k) for k in node.keywords]
        return f"class {qualname}({', '.join(bases)})" if bases else f"class {qualname}"
    prefix = "async def" if isinstance(node, ast.AsyncFunctionDef) else "def"
    returns = f" -> {ast.unparse(node.returns)}" if node.returns else ""
    return f"{prefix} {qualname}({ast.unparse(node.args)}){returns}"


def _describe(node, qualname: str) -> list[str]:
    """Blocks 'signature + docstring' for a class or function and, for a class, its methods and inner classes."""
    blocks = []
    doc = ast.get_docstring(node)
    if doc:
        blocks.append(f"{_signature(node, qualname)}\n{doc}")
    if isinstance(node, ast.ClassDef):
        for child in node.body:
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                blocks += _describe(child, f"{qualname}.{child.name}")
    return blocks


def module_documents(module: str, tree: ast.Module) -> list[str]:
    """The module docstring as one document, then one document per documented top-level class or function."""
    docs = []
    if doc := ast.get_docstring(tree):
        docs.append(f"Module {module}\n\n{doc}")
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            if blocks := _describe(node, f"{module}.{node.name}"):
                docs.append("\n\n".join(blocks))
    return docs


def main(args):
    folder = dataset_dir(args.name)
    if folder.exists():
        manifest = read_manifest(folder)
        if manifest.get("source") != SOURCE:
            raise UserError(f"{folder} holds another dataset: pick another --name, or delete that folder")
        print(f"the demo corpus is already built in {folder} ({manifest['documents']:,} documents): nothing to do")
        return
    docs, skipped = [], 0
    files = stdlib_files()
    for module, path in progress(files, unit="file", desc="parsing stdlib"):
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError):  # a few data files in the stdlib are not Python 3
            skipped += 1
            continue
        docs += module_documents(module, tree)
    chars = sum(map(len, docs))
    num_shards = build_dataset(folder, docs, SHARD_CHARS, VAL_FRACTION, source=SOURCE,
                               python=platform.python_version(), documents=len(docs), characters=chars)
    print(f"{len(docs):,} documents, {chars:,} characters from {len(files) - skipped:,} stdlib files -> "
          f"{num_shards} shards ({num_shards - 1} train + 1 validation) in {folder}")
