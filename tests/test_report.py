"""The report card (`primechat report`): sections stitched in pipeline order, the summary table's numbers in the
right columns, wall-clock time and cost, pictures that are real PNGs, a self-contained HTML page that runs no script
from a model's sample, and `--reset` archiving the previous card."""

import datetime
import json
import re

import pytest

from primechat import report

GPU_HEADER = """# primechat training report

## Environment

- gpus: 8× NVIDIA H100 80GB HBM3
- gpu count: 8

Run started: {started}

---
"""


def write_pipeline_sections():
    """Sections as the stages write them (keys of train/base.py, eval/base.py, train/chat.py, eval/chat.py, rl.py),
    logged out of pipeline order, with an extra section of unknown kind."""
    report.log_section("Chat evaluation sft", {"model": "sft_d4_000020", "max problems": "all", "num samples": 1,
                                               "temperature": 0.0, "ARC-Easy": 0.3876, "ARC-Challenge": 0.2807,
                                               "MMLU": 0.3151, "GSM8K": 0.0455, "HumanEval": 0.0854,
                                               "SpellingBee": 0.5, "Arithmetic": 0.125, "ChatCORE metric": 0.0884})
    report.log_section("Zebra notes", "written by hand")
    report.log_section("Tokenizer training", {"dataset": "pydocs", "vocab_size": 4096})
    report.log_section("Base model training", {"model tag": "d4", "depth": 4, "min validation bpb": 1.7237,
                                               "final validation bpb": 1.7301})
    report.log_section("Base model evaluation", {"model": "base_d4_000300", "CORE metric": 0.2219,
                                                 "max per task": -1}, "| Task | Accuracy |\n|---|---|\n| a | 0.5 |")
    report.log_section("Midtraining", {"source": "base d4 step 300", "min validation bpb": 0.2879,
                                       "SpellingBee": 0.9})  # measured during training: not an evaluation score
    report.log_section("Chat evaluation mid", {"model": "mid_d4_000108", "max problems": "all", "num samples": 1,
                                               "temperature": 0.0, "ARC-Easy": 0.3561, "ARC-Challenge": 0.2875,
                                               "MMLU": 0.3111, "GSM8K": 0.025, "HumanEval": 0.0671,
                                               "SpellingBee": 0.375, "ChatCORE metric": 0.073})
    report.log_section("Chat SFT", {"source": "mid d4 step 108", "min validation bpb": 0.2845})
    report.log_section("Chat RL", {"source": "sft d4 step 20", "task": "gsm8k", "pass@1": 0.08})
    report.log_section("Chat evaluation rl", {"model": "rl_d4_000012", "max problems": 64, "num samples": 1,
                                              "temperature": 0.0, "GSM8K": 0.0758, "Arithmetic": 0.5})
    report.log_section("Base model loss", {"val bpb": 1.7237, "sample 0": "The capital of France is Paris"})


def write_metrics(home):
    """metrics.jsonl for base, mid and RL (not SFT), as the training loops log them."""
    for folder, left, right in (("base_checkpoints", "loss", "val_bpb"), ("mid_checkpoints", "loss", "val_bpb"),
                                ("chatrl_checkpoints", "reward", "pass@1")):
        path = home / folder / "d4" / "metrics.jsonl"
        path.parent.mkdir(parents=True)
        records = [{"step": s, left: 5.0 / (s + 1)} for s in range(1, 30)]
        records += [{"step": s, right: 2.0 / (s + 1)} for s in range(0, 30, 10)]
        path.write_text("".join(json.dumps(r) + "\n" for r in records))


def table_rows(card: str) -> dict[str, list[str]]:
    summary = card[card.index("## Summary"):]
    rows = [line.strip("|").split("|") for line in summary.splitlines() if line.startswith("| ")]
    assert [c.strip() for c in rows[0]] == ["Metric", "BASE", "MID", "SFT", "RL"]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows[1:]}


def test_card_stitches_sections_in_order_with_summary_and_pictures(home, cli):
    write_pipeline_sections()
    write_metrics(home)
    result = cli("report")
    assert result.code == 0, result.err
    folder = home / "report"
    card = (folder / "report.md").read_text()
    assert str(folder / "report.md") in result.out and str(folder / "report.html") in result.out

    titles = re.findall(r"^## (.+)$", card, re.MULTILINE)
    assert titles == ["Environment", "Tokenizer training", "Base model training", "Base model loss",
                      "Base model evaluation", "Midtraining", "Chat evaluation mid", "Chat SFT",
                      "Chat evaluation sft", "Chat RL", "Chat evaluation rl", "Zebra notes", "Summary"]

    rows = table_rows(card)
    labels = list(rows)
    # ChatCORE right below its tasks; Arithmetic and SpellingBee, which it leaves out (nanochat's Oct 2025
    # definition), after it
    assert labels[0] == "CORE" and labels[-4:-1] == ["ChatCORE", "Arithmetic", "SpellingBee"]
    assert labels[1:-4] == sorted(labels[1:-4]) == ["ARC-Challenge", "ARC-Easy", "GSM8K", "HumanEval", "MMLU"]
    assert "validation bpb" in labels[-1]
    assert rows["CORE"] == ["0.2219", "-", "-", "-"]
    assert rows["GSM8K"] == ["-", "0.0250", "0.0455", "0.0758"]
    assert rows["HumanEval"] == ["-", "0.0671", "0.0854", "-"]
    assert rows["SpellingBee"] == ["-", "0.3750", "0.5000", "-"]  # the evaluation's, not mid-training's 0.9
    assert rows["ChatCORE"] == ["-", "0.0730", "0.0884", "-"]
    assert rows["Arithmetic"] == ["-", "-", "0.1250", "0.5000"]  # what RL changed
    assert "Arithmetic, SpellingBee: not part of ChatCORE, nanochat's mean over ARC-Easy, ARC-Challenge, MMLU, GSM8K, " \
           "HumanEval." in card
    assert rows[labels[-1]] == ["1.7237", "0.2879", "0.2845", "-"]
    assert "| CORE | 0.2219 |" in result.out  # the table is printed too
    assert "RL: chat tasks on at most 64 problems" in card
    assert report.summary_table(report.read_sections()) in card  # what `primechat push` reuses

    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", card)
    assert len(pictures) == 4  # base, mid and RL curves (SFT logged no metrics), and the scores' chart
    for name in pictures:
        data = (folder / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000, name
    assert not list(folder.glob(".*tmp*"))  # atomic writes leave no temporary files

    page = (folder / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4
    assert "<table>" in page and "Chat evaluation rl" in page


def test_sections_about_different_models_are_pointed_out(home, cli):
    write_pipeline_sections()
    assert "Mixed models" not in report.summary_table(report.read_sections())  # one pipeline: d4 throughout
    report.log_section("Base model training", {"model tag": "tryout", "depth": 2, "min validation bpb": 2.5})
    assert cli("report").code == 0
    card = (home / "report" / "report.md").read_text()
    assert "Mixed models: these sections describe models of different tags (tryout: base-model-training; d4: " in card


def test_imported_models_are_marked_and_the_environment_is_said_to_be_this_machines(home, cli):
    write_pipeline_sections()
    for stage_dir, step, extra in (("base_checkpoints", 300, {"imported_from": {
            "format": "nanochat", "layout": "oct2025", "path": "/nc/base_checkpoints/d4", "step": 300}}),
            ("mid_checkpoints", 108, {})):  # base imported from nanochat, mid trained here from it
        (home / stage_dir / "d4").mkdir(parents=True)
        (home / stage_dir / "d4" / f"meta_{step:06d}.json").write_text(json.dumps({"step": step, **extra}))
    assert cli("report").code == 0
    card = (home / "report" / "report.md").read_text()
    assert "- model: base_d4_000300 (imported from nanochat, oct2025 layout)" in card
    assert "- source: base d4 step 300 (imported from nanochat, oct2025 layout)" in card  # what mid trained from
    assert "- model: mid_d4_000108\n" in card and "- model: sft_d4_000020\n" in card  # trained here, or not on disk
    assert "Imported models: base d4 step 300 (from nanochat, oct2025 layout). The Environment above is the " \
           "machine and code that evaluated them here, not where they were trained." in card
    assert "Mixed models" not in card  # the marks do not change which model a section describes


def test_html_is_self_contained_and_shows_model_samples_as_text(home, cli):
    report.log_section("Base model loss", {"sample 0": "<script>alert(1)</script> [click](http://evil.example/)",
                                           "sample 1": "![x](http://evil.example/x.png) <http://evil.example/>"},
                       "<script>\nalert(2)\n</script>\n\n<img src=x onerror=alert(3)>")
    report.log_section("Chat evaluation sft", {"SpellingBee": 0.5})
    assert cli("report").code == 0
    page = (home / "report" / "report.html").read_text()
    assert "data:image/png;base64," in page  # the scores' chart, inlined
    assert "<script" not in page.lower() and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # still readable, as text
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//|javascript:)""", page)
    assert "<link" not in page


@pytest.mark.parametrize("gpu, price, rate", [(True, None, 8 * 3.00), (True, "2.5", 8 * 2.5), (False, "1.2", 1.2)])
def test_cost_is_hours_times_hourly_rate(home, cli, gpu, price, rate):
    started = datetime.datetime.now() - datetime.timedelta(hours=2)
    if gpu:
        (home / "report").mkdir(parents=True)
        (home / "report" / "header.md").write_text(GPU_HEADER.format(started=f"{started:%Y-%m-%d %H:%M:%S}"))
    else:
        report.reset()
        header = home / "report" / "header.md"
        header.write_text(re.sub(r"Run started: .*", f"Run started: {started:%Y-%m-%d %H:%M:%S}", header.read_text()))
    report.log_section("Chat evaluation sft", {"GSM8K": 0.05})
    result = cli("report", *(["--price", price] if price else []))
    assert result.code == 0, result.err
    seconds = float(re.search(r"Total wall-clock time: .*?\(([\d,]+) s", result.out).group(1).replace(",", ""))
    assert abs(seconds - 7200) < 60  # Run started to the last section
    cost = re.search(r"Estimated cost: \$([\d,.]+)", result.out).group(1)
    assert float(cost.replace(",", "")) == pytest.approx(seconds / 3600 * rate, abs=0.006)


def test_speedrun_total_sets_the_time_and_cpu_runs_cost_nothing(home, cli):
    report.reset()
    report.log_section("Chat evaluation mid", {"ARC-Easy": 0.3})
    report.log_section("Speedrun", {"tokenizer": 12.5, "base": 5000, "total seconds": 12345})
    result = cli("report")
    assert result.code == 0, result.err
    assert "Total wall-clock time: 3h 25m 45s (12,345 s" in result.out
    assert "Estimated cost: $0 (CPU)" in result.out


def test_an_rl_column_left_empty_says_how_to_fill_it(home):
    """RL measured pass@k while training, but the summary's RL column comes from `eval chat -i rl` alone."""
    write_pipeline_sections()
    hint = "- RL: empty until `primechat eval chat -i rl` runs; the Chat RL section has the pass@k measured during RL."
    assert hint not in report.summary_table(report.read_sections())  # it ran: the column has figures
    (home / "report" / "chat-evaluation-rl.md").unlink()
    table = report.summary_table(report.read_sections())
    assert hint in table.splitlines() and "RL: chat tasks on at most" not in table
    (home / "report" / "chat-rl.md").unlink()  # no RL at all: nothing to say
    assert "eval chat -i rl" not in report.summary_table(report.read_sections())


def test_partial_core_is_labelled(home, cli):
    report.log_section("Base model evaluation", {"CORE (partial, 3/22 tasks) metric": 0.15,
                                                 "missing tasks": "jeopardy, squad"})
    assert cli("report").code == 0
    rows = table_rows((home / "report" / "report.md").read_text())
    assert list(rows)[0] == "CORE (partial, 3/22 tasks)" and rows["CORE (partial, 3/22 tasks)"][0] == "0.1500"
    assert "jeopardy, squad missing" in (home / "report" / "report.md").read_text()


def test_reset_archives_the_old_card_and_starts_a_header(home, cli):
    write_pipeline_sections()
    assert cli("report").code == 0
    before = sorted(p.name for p in (home / "report").iterdir())
    assert cli("report", "--reset").code == 0
    folder = home / "report"
    assert sorted(p.name for p in folder.iterdir()) == ["archive", "header.md"]
    (archive,) = (folder / "archive").iterdir()
    assert re.fullmatch(r"\d{8}-\d{6}", archive.name)
    assert sorted(p.name for p in archive.iterdir()) == before  # sections, report.md/html and pictures: all kept
    header = (folder / "header.md").read_text()
    assert header.startswith("# primechat training report")
    for part in ("## Environment", "### Git", "### Hardware", "### Software", "### Code size", "- PyTorch: "):
        assert part in header
    assert re.search(r"^- gpu count: \d+$", header, re.MULTILINE)
    started = re.search(r"^Run started: (.+)$", header, re.MULTILINE).group(1)
    assert abs(datetime.datetime.strptime(started, "%Y-%m-%d %H:%M:%S") - datetime.datetime.now()).seconds < 60

    report.reset()  # again within the same second: a second archive, the first header kept in it
    assert len(list((folder / "archive").iterdir())) == 2


def test_no_sections_is_one_line_error(home, cli):
    result = cli("report")
    assert result.code == 2
    assert result.err.count("\n") == 1 and "no report sections in" in result.err and "speedrun" in result.err
    report.reset()  # a header alone is not a card
    assert cli("report").code == 2


def test_header_without_git(home, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no git program to be found
    assert report.git_lines() == ["- git: not a git checkout"]
