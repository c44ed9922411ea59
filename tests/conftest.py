"""Fixtures shared by all tests: an isolated home folder, a fake Hugging Face Hub, and ways to run `primechat`.

    home       PRIMECHAT_HOME (and huggingface_hub's HF_HOME and cache) in a tmp folder; no HF token, not offline,
               no Xet, and HF_ENDPOINT aimed at a closed local port, so nothing ever reaches the real Hub (a test that
               tries fails after huggingface_hub's ~20 s of retries). Returns the home folder.
    fake_hub   a started tests/fakehub.py FakeHub whose root is a tmp folder, with HF_ENDPOINT pointing at it.
               hub.add_shard_dataset("me/corpus", num_shards=4) makes a dataset repo of generated shards.
    cli        cli("data", "add", ...) runs the command in-process -> Result(code, out, err);
               cli.run(...) runs it as a subprocess (`python -m primechat.cli ...`), cli.popen(...) starts one.

huggingface_hub reads its environment variables once, when imported, so besides setting them for subprocesses we
also patch its copies (huggingface_hub.constants) for code running in the test process.
"""

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import huggingface_hub.constants
import pytest

from fakehub import FakeHub

REPO_ROOT = Path(__file__).resolve().parents[1]
CLOSED_ENDPOINT = "http://127.0.0.1:9"  # the discard port: connections are refused at once


def set_hf_env(monkeypatch, env: str, value, constant: str | None = None, constant_value=None) -> None:
    """Set (value None: unset) an HF environment variable and, for in-process code, huggingface_hub's copy of it."""
    if value is None:
        monkeypatch.delenv(env, raising=False)
    else:
        monkeypatch.setenv(env, str(value))
    if constant:
        monkeypatch.setattr(huggingface_hub.constants, constant, constant_value, raising=False)


def set_hf_endpoint(monkeypatch, url: str) -> None:
    set_hf_env(monkeypatch, "HF_ENDPOINT", url, "ENDPOINT", url)
    monkeypatch.setattr(huggingface_hub.constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        url + "/{repo_id}/resolve/{revision}/{filename}")


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    hf_home = tmp_path / "hf_home"
    monkeypatch.setenv("PRIMECHAT_HOME", str(home))
    monkeypatch.delenv("PRIMECHAT_PROGRESS", raising=False)
    set_hf_env(monkeypatch, "HF_HOME", hf_home, "HF_HOME", str(hf_home))
    set_hf_env(monkeypatch, "HF_HUB_CACHE", hf_home / "hub", "HF_HUB_CACHE", str(hf_home / "hub"))
    set_hf_env(monkeypatch, "HF_HUB_DISABLE_XET", 1, "HF_HUB_DISABLE_XET", True)
    set_hf_env(monkeypatch, "HF_HUB_OFFLINE", None, "HF_HUB_OFFLINE", False)
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_PROGRESS_BARS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(hf_home / "token"), raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_STORED_TOKENS_PATH", str(hf_home / "stored_tokens"),
                        raising=False)
    set_hf_endpoint(monkeypatch, CLOSED_ENDPOINT)
    return home


@pytest.fixture
def fake_hub(home, tmp_path, monkeypatch):
    with FakeHub(tmp_path / "hub") as hub:
        set_hf_endpoint(monkeypatch, hub.url)
        yield hub


@dataclass
class Result:
    code: int
    out: str
    err: str


class CLI:
    """Runs `primechat ARGS...` in this process (call it) or in a child process (run, popen)."""

    def __init__(self, capsys):
        self.capsys = capsys

    def __call__(self, *args) -> Result:
        from primechat.cli import main

        self.capsys.readouterr()  # drop what earlier steps printed
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        out, err = self.capsys.readouterr()
        return Result(code, out, err)

    def command(self, *args) -> list[str]:
        return [sys.executable, "-m", "primechat.cli", *map(str, args)]

    def env(self) -> dict:
        """The test's environment (with the fixtures' settings) and this checkout importable."""
        path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
        return {**os.environ, "PYTHONPATH": path}

    def run(self, *args, timeout: float = 120) -> Result:
        done = subprocess.run(self.command(*args), env=self.env(), capture_output=True, text=True, timeout=timeout)
        return Result(done.returncode, done.stdout, done.stderr)

    def popen(self, *args, **kwargs) -> subprocess.Popen:
        return subprocess.Popen(self.command(*args), env=self.env(), **kwargs)


@pytest.fixture
def cli(capsys) -> CLI:
    return CLI(capsys)
