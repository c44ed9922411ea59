"""`primechat data download|add|demo`: what lands in base_data/, and the one-line errors users see instead."""

import errno
import json
import subprocess
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from primechat.common import UserError
from primechat.data.loader import PretrainLoader
from primechat.tokenizer import Tokenizer
from primechat.data.shards import dataset_label, iter_texts, list_shards, shard_name


def shard_files(folder) -> list[str]:
    return sorted(p.name for p in folder.glob("shard_*.parquet"))


def read_all(paths) -> list[str]:
    return [text for text, _, _ in iter_texts(list(paths))]


def datasets(home) -> list[str]:
    """What is in base_data/, hidden folders included."""
    base = home / "base_data"
    return sorted(p.name for p in base.iterdir()) if base.exists() else []


def assert_one_line_error(result, *fragments):
    assert result.code == 2, result
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("primechat: error: "), result.err
    for fragment in fragments:
        assert fragment in lines[0]


# ---- download -------------------------------------------------------------------------------------------------------

def download(cli, *args):
    return cli("data", "download", "--dataset", "me/corpus", *args)


def resolved(hub, method: str | None = None) -> list[str]:
    """The file names the client asked the hub for (HEAD or GET, or only `method`), in order."""
    return [r.path.rsplit("/", 1)[-1] for r in hub.requests(method, contains="/resolve/")]


def test_download_fetches_val_shard_first_then_first_n_train_shards(fake_hub, cli, home):
    fake_hub.add_shard_dataset("me/corpus", num_shards=6)
    result = download(cli, "-n", "2", "--workers", "1")
    assert result.code == 0, result.err
    folder = home / "base_data" / "corpus"
    wanted = ["shard_00005.parquet", "shard_00000.parquet", "shard_00001.parquet"]
    assert shard_files(folder) == sorted(wanted)
    repo = fake_hub.root / "datasets" / "me" / "corpus"
    for name in wanted:
        assert (folder / name).read_bytes() == (repo / name).read_bytes()
    assert resolved(fake_hub, "GET") == wanted
    assert json.loads((folder / "dataset.json").read_text()) == {
        "repo": "me/corpus", "val_shard": "shard_00005.parquet", "num_repo_shards": 6}
    train, val = list_shards("corpus")
    assert [p.name for p in train] == wanted[1:] and val.name == wanted[0]
    assert "3 downloaded, 0 already present" in result.out
    assert dataset_label("corpus", len(train)) == "corpus (me/corpus, 2 training shards)"  # as the report names it
    assert "README.md" not in resolved(fake_hub)


def test_rerun_downloads_only_missing_shards_without_asking_about_present_ones(fake_hub, cli, home):
    fake_hub.page_size = 2  # the listing comes in pages, as climbmix's 6,543 files do
    fake_hub.add_shard_dataset("me/corpus", num_shards=5)
    assert download(cli, "-n", "1").code == 0
    fake_hub.log.clear()
    result = download(cli, "-n", "3")
    assert result.code == 0, result.err
    assert sorted(set(resolved(fake_hub))) == ["shard_00001.parquet", "shard_00002.parquet"]
    assert "2 downloaded, 2 already present" in result.out
    fake_hub.log.clear()
    result = download(cli, "-n", "-1")
    assert result.code == 0 and set(resolved(fake_hub)) == {"shard_00003.parquet"}
    assert shard_files(home / "base_data" / "corpus") == [shard_name(i) for i in range(5)]


def test_download_survives_a_connection_dropped_mid_file(fake_hub, cli, home):
    fake_hub.add_shard_dataset("me/corpus", num_shards=2, docs_per_shard=100)
    fake_hub.break_bodies(1)
    result = download(cli, "-n", "1", "--workers", "1")
    assert result.code == 0, result.err
    assert len(fake_hub.requests("GET", "shard_00001.parquet")) == 2  # it did break, and was fetched again
    repo = fake_hub.root / "datasets" / "me" / "corpus"
    for name in ("shard_00000.parquet", "shard_00001.parquet"):
        assert (home / "base_data" / "corpus" / name).read_bytes() == (repo / name).read_bytes()


def test_failed_download_says_rerun_and_the_rerun_completes(fake_hub, cli, home):
    fake_hub.add_shard_dataset("me/corpus", num_shards=3)
    fake_hub.fail_requests(1, status=500)
    result = cli.run("data", "download", "--dataset", "me/corpus", "-n", "2", "--workers", "1")
    assert_one_line_error(result, "re-run")
    folder, repo = home / "base_data" / "corpus", fake_hub.root / "datasets" / "me" / "corpus"
    assert "shard_00002.parquet" not in shard_files(folder)  # the one that failed; others may have finished
    assert download(cli, "-n", "2").code == 0
    assert shard_files(folder) == [shard_name(i) for i in range(3)]
    assert all((folder / n).read_bytes() == (repo / n).read_bytes() for n in shard_files(folder))


def test_killed_download_never_shows_a_partial_shard_and_a_rerun_completes(fake_hub, cli, home):
    texts = fake_hub.add_shard_dataset("me/corpus", num_shards=3, docs_per_shard=300, doc_chars=1000)
    repo = fake_hub.root / "datasets" / "me" / "corpus"
    folder = home / "base_data" / "corpus"

    def visible_shards_are_whole() -> list[str]:
        names = shard_files(folder)
        for name in names:
            assert (folder / name).read_bytes() == (repo / name).read_bytes(), f"{name} is partial"
        return names

    fake_hub.throttle = 0.05  # a shard takes ~0.5 s to arrive
    proc = cli.popen("data", "download", "--dataset", "me/corpus", "-n", "2", "--workers", "1",
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while not (visible_shards_are_whole() and len(fake_hub.requests("GET", "/resolve/")) >= 2):
            assert time.time() < deadline and proc.poll() is None, "the download never reached its second shard"
            time.sleep(0.01)
    finally:
        proc.kill()
        proc.wait()
    # Killed while shard_00000 was arriving: only the val shard is there, and whole.
    assert visible_shards_are_whole() == ["shard_00002.parquet"]
    assert fake_hub.requests("GET", "shard_00000.parquet")
    assert list(folder.rglob("*.incomplete")), "the cut-off shard should wait, hidden, for the next run"

    fake_hub.throttle = 0
    fake_hub.log.clear()
    result = download(cli, "-n", "2")
    assert result.code == 0, result.err
    assert visible_shards_are_whole() == [shard_name(i) for i in range(3)]
    assert "shard_00002.parquet" not in resolved(fake_hub)
    assert not list(folder.rglob("*.incomplete"))  # the killed run's partial file is gone
    assert read_all([folder / "shard_00000.parquet"]) == texts[0]


@pytest.mark.parametrize("args, fragments", [
    (["--dataset", "me/missing"], ["me/missing", "not found", "HF_TOKEN"]),
    (["--dataset", "me/readme-only"], ["me/readme-only", "no shard_"]),
    (["--dataset", "me/corpus", "--revision", "v9"], ["'v9'", "--revision"]),
    (["--dataset", "me/corpus", "-n", "-2"], ["-n -2"]),
    (["--dataset", "me/corpus", "--workers", "0"], ["--workers 0"]),
    (["--dataset", "corpus"], ["--dataset corpus", "OWNER/NAME"]),
])
def test_download_errors_are_one_line(fake_hub, cli, home, args, fragments):
    fake_hub.add_shard_dataset("me/corpus", num_shards=2)
    fake_hub.add_files("datasets/me/readme-only", {"README.md": "no shards here"})
    assert_one_line_error(cli("data", "download", *args), *fragments)
    assert datasets(home) == []


def test_download_refuses_to_mix_two_repos_in_one_folder(fake_hub, cli, home):
    fake_hub.add_shard_dataset("me/corpus", num_shards=2)
    fake_hub.add_shard_dataset("you/corpus", num_shards=2, seed=1)
    assert download(cli, "-n", "1").code == 0
    assert_one_line_error(cli("data", "download", "--dataset", "you/corpus"), "me/corpus", "you/corpus")
    # the short name other commands accept: download asks for OWNER/NAME and names what the folder holds
    assert_one_line_error(cli("data", "download", "--dataset", "corpus"), "OWNER/NAME", "me/corpus is already in")


def test_download_offline_says_so(fake_hub, cli, home, monkeypatch):
    fake_hub.add_shard_dataset("me/corpus", num_shards=2)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert_one_line_error(cli.run("data", "download", "--dataset", "me/corpus"), "HF_HUB_OFFLINE")
    assert not fake_hub.requests(contains="/me/corpus")


def test_download_disk_full_says_free_space(fake_hub, cli, home, monkeypatch):
    fake_hub.add_shard_dataset("me/corpus", num_shards=2)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("huggingface_hub.HfApi.hf_hub_download", disk_full)
    assert_one_line_error(download(cli, "-n", "0", "--workers", "1"), "free some space", "PRIMECHAT_HOME")


# ---- add -----------------------------------------------------------------------------------------------------------

def write_inputs(folder):
    """One input file of each kind; returns (paths, the documents they hold)."""
    (folder / "a.txt").write_text("A whole file is one document.\nEven with two lines. Ünïcode too.")
    (folder / "b.txt").write_bytes("\ufeffA file starting with a byte-order mark.".encode())
    lines = [{"text": "jsonl one", "id": 1}, {"text": "jsonl two, \"quoted\""}, {"text": ""}, {"text": "jsonl 3"}]
    (folder / "c.jsonl").write_text("\n".join(json.dumps(x) for x in lines[:2]) + "\n\n" +
                                    "\n".join(json.dumps(x) for x in lines[2:]) + "\n")
    parquet_docs = [f"parquet row {i} " * (i + 1) for i in range(12)]
    pq.write_table(pa.table({"id": list(range(13)), "text": parquet_docs + [None]}), folder / "d.parquet")
    docs = ["A whole file is one document.\nEven with two lines. Ünïcode too.",
            "A file starting with a byte-order mark.", "jsonl one", "jsonl two, \"quoted\"", "jsonl 3", *parquet_docs]
    return [folder / n for n in ("a.txt", "b.txt", "c.jsonl", "d.parquet")], docs


def test_add_turns_txt_jsonl_and_parquet_into_shards(tmp_path, home, cli):
    files, docs = write_inputs(tmp_path)
    result = cli("data", "add", *files, "--name", "mine", "--shard-chars", "100", "--val-fraction", "0.2")
    assert result.code == 0, result.err
    folder = home / "base_data" / "mine"
    train, val = list_shards("mine")
    names = shard_files(folder)
    assert val.name == names[-1] and [p.name for p in train] == names[:-1] and len(train) >= 2
    manifest = json.loads((folder / "dataset.json").read_text())
    assert manifest["val_shard"] == names[-1] and manifest["sources"] == [str(f) for f in files]
    assert sorted(read_all(train + [val])) == sorted(docs)  # every document exactly once
    assert len(read_all([val])) == round(len(docs) * 0.2)
    assert all(sum(map(len, read_all([p]))) >= 100 for p in train[:-1])  # shards are cut at ~--shard-chars
    assert datasets(home) == ["mine"]  # no temporary folder left beside it
    info = cli("info").out
    assert f"mine: {len(names)} shards" in info and f"val {names[-1]}, from a.txt and 3 more (data add)" in info

    # The same inputs give the same shards; an existing dataset is kept unless --overwrite.
    before = {n: (folder / n).read_bytes() for n in names}
    assert_one_line_error(cli("data", "add", *files, "--name", "mine"), "--overwrite")
    result = cli("data", "add", *files, "--name", "mine", "--shard-chars", "100", "--val-fraction", "0.2",
                 "--overwrite")
    assert result.code == 0 and {n: (folder / n).read_bytes() for n in shard_files(folder)} == before


def test_add_reads_the_text_field_given(tmp_path, home, cli):
    (tmp_path / "x.jsonl").write_text('{"body": "first"}\n{"body": "second"}\n{"body": "third"}\n')
    assert cli("data", "add", tmp_path / "x.jsonl", "--name", "bodies", "--text-field", "body").code == 0
    train, val = list_shards("bodies")
    assert sorted(read_all(train + [val])) == ["first", "second", "third"]


@pytest.fixture
def inputs(tmp_path):
    """A folder of input files, one per mistake users make, plus good.txt."""
    (tmp_path / "good.txt").write_text("a good document")
    (tmp_path / "empty.txt").write_text(" \n")
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9 au lait")
    (tmp_path / "latin1.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    (tmp_path / "broken.jsonl").write_text('{"text": "ok"}\n\n{"text": oops}\n')
    (tmp_path / "nofield.jsonl").write_text('{"text": "ok"}\n{"body": "where is text"}\n')
    (tmp_path / "notstring.jsonl").write_text('{"text": 42}\n')
    (tmp_path / "emptydocs.jsonl").write_text('{"text": ""}\n')
    (tmp_path / "data.csv").write_text("text\nhello\n")
    (tmp_path / "garbage.parquet").write_bytes(b"not parquet at all")
    pq.write_table(pa.table({"body": ["x", "y"]}), tmp_path / "nocolumn.parquet")
    return tmp_path


BAD_INPUTS = [  # (the file added beside good.txt, or None for good.txt alone; what the error line must say)
    ("nope.txt", ["nope.txt", "no such file"]),
    ("data.csv", ["data.csv", ".csv"]),
    ("empty.txt", ["empty.txt", "no text"]),
    ("latin1.txt", ["latin1.txt", "UTF-8", "offset 3"]),
    ("latin1.jsonl", ["latin1.jsonl:2", "UTF-8", "offset 28"]),
    ("broken.jsonl", ["broken.jsonl:3", "invalid JSON"]),
    ("nofield.jsonl", ["nofield.jsonl:2", "'text'", "--text-field"]),
    ("notstring.jsonl", ["notstring.jsonl:1", "not a string"]),
    ("emptydocs.jsonl", ["emptydocs.jsonl", "no text"]),
    ("garbage.parquet", ["garbage.parquet", "parquet"]),
    ("nocolumn.parquet", ["nocolumn.parquet", "'text'", "body"]),
    (None, ["good.txt", "at least 2"]),  # one paragraph: nothing to split
]


def test_add_splits_a_lone_txt_file_into_paragraphs(tmp_path, home, cli):
    (tmp_path / "book.txt").write_text("Chapter one.\nIt was a dark night.\n\n  \nChapter two.\n\n\nThe end.\n")
    result = cli("data", "add", tmp_path / "book.txt", "--name", "book")
    assert result.code == 0, result.err
    assert "split on blank lines into 3 paragraphs" in result.out
    train, val = list_shards("book")
    assert sorted(read_all(train + [val])) == ["Chapter one.\nIt was a dark night.", "Chapter two.", "The end."]


@pytest.mark.parametrize("bad, fragments", BAD_INPUTS, ids=[str(bad) for bad, _ in BAD_INPUTS])
def test_add_rejects_bad_input_with_one_line_naming_the_file(inputs, home, cli, bad, fragments):
    files = [inputs / "good.txt"] + ([inputs / bad] if bad else [])
    assert_one_line_error(cli("data", "add", *files, "--name", "mine"), *fragments)
    assert datasets(home) == []


@pytest.mark.parametrize("flag, fragment", [("--val-fraction=1.5", "--val-fraction"),
                                            ("--shard-chars=0", "--shard-chars")])
def test_add_rejects_bad_flags(tmp_path, home, cli, flag, fragment):
    files, _ = write_inputs(tmp_path)
    assert_one_line_error(cli("data", "add", *files, "--name", "mine", flag), fragment)


# ---- demo ----------------------------------------------------------------------------------------------------------

def test_demo_builds_a_deterministic_corpus_of_stdlib_docstrings(home, cli):
    result = cli("data", "demo")
    assert result.code == 0, result.err
    folder = home / "base_data" / "pydocs"
    train, val = list_shards("pydocs")
    assert len(train) >= 2 and val.name == shard_files(folder)[-1]
    docs = read_all(train + [val])
    assert len(docs) > 1000 and all(doc.strip() for doc in docs)
    assert any(doc.startswith("Module json\n") for doc in docs)
    assert 0.03 < len(read_all([val])) / len(docs) < 0.07

    rerun = cli("data", "demo")
    assert rerun.code == 0 and "already" in rerun.out

    assert cli("data", "demo", "--name", "pydocs2").code == 0
    again = home / "base_data" / "pydocs2"
    assert shard_files(again) == shard_files(folder)
    assert all((again / n).read_bytes() == (folder / n).read_bytes() for n in shard_files(folder))


def test_demo_will_not_touch_another_dataset(tmp_path, home, cli):
    files, _ = write_inputs(tmp_path)
    assert cli("data", "add", *files, "--name", "pydocs").code == 0
    assert_one_line_error(cli("data", "demo"), "another dataset")



# ---- a dataset with missing or damaged shards -----------------------------------------------------------------------

def test_missing_validation_shard_is_an_error_not_a_training_shard(fake_hub, cli, home, tmp_path):
    """Falling back to the last shard would validate on training data (train/val leakage) and say nothing."""
    fake_hub.add_shard_dataset("me/corpus", num_shards=6)
    assert download(cli, "-n", "2").code == 0
    (home / "base_data" / "corpus" / "shard_00005.parquet").unlink()
    with pytest.raises(UserError, match=r"shard_00005.parquet .*missing: run `primechat data download --dataset "
                                        r"me/corpus` again"):
        list_shards("corpus")
    files, _ = write_inputs(tmp_path)
    assert cli("data", "add", *files, "--name", "mine", "--shard-chars", "100").code == 0
    sorted((home / "base_data" / "mine").glob("shard_*.parquet"))[-1].unlink()  # the validation shard
    with pytest.raises(UserError, match=r"missing: add the dataset again with `primechat data add FILES --name mine"):
        list_shards("mine")


def test_a_damaged_shard_is_named_in_one_line(fake_hub, cli, home, tmp_path):
    fake_hub.add_shard_dataset("me/corpus", num_shards=6)
    assert download(cli, "-n", "2").code == 0
    folder = home / "base_data" / "corpus"
    shard = folder / shard_name(0)
    shard.write_bytes(shard.read_bytes()[:100])  # cut off, as by a full disk or a bad copy
    train, val = list_shards("corpus")
    with pytest.raises(UserError, match=r"shard_00000.parquet is damaged .*delete it and run `primechat data "
                                        r"download --dataset me/corpus` again"):
        read_all(train)
    tokenizer = type("Bytes", (), {"bos_id": 0, "encode": lambda self, texts, prepend: [[0, 1]] * len(texts)})()
    with pytest.raises(UserError, match="is damaged"):
        PretrainLoader(tokenizer, train, 1, 4).next_batch()
    Tokenizer.from_ranks({bytes([b]): b for b in range(256)}).save(home / "tokenizer")  # for tokenizer eval
    for command in (("tokenizer", "train", "--dataset", "corpus", "--vocab-size", "300"),
                    ("tokenizer", "eval", "--dataset", "corpus")):
        assert_one_line_error(cli(*command), "shard_00000.parquet is damaged", "primechat data download")
