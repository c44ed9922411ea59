"""The HumanEval sandbox (primechat/eval/sandbox.py): results, limits, the process group, blocked calls, isolation."""

import time
from pathlib import Path

import pytest

from primechat.eval.sandbox import execute_code


def test_success_captures_stdout_and_stderr():
    result = execute_code("import sys\nprint('hello')\nprint('warn', file=sys.stderr)")
    assert result.success and result.error == ""
    assert result.stdout == "hello\n" and result.stderr == "warn\n"
    assert not result.timeout and not result.memory_exceeded


def test_exception_is_a_failure_with_its_last_line_as_error():
    result = execute_code("def f():\n    raise ValueError('bad input')\nf()")
    assert not result.success and not result.timeout
    assert result.error == "ValueError: bad input"
    assert "Traceback" in result.stderr


def test_timeout_kills_the_whole_process_group():
    # the code starts a grandchild (posix_spawn is not among the blocked calls), reports its pid, then spins
    code = ("import os, sys\npid = os.posix_spawn('/bin/sleep', ['sleep', '60'], {})\n"
            "print(pid, flush=True)\nwhile True: pass")
    start = time.time()
    result = execute_code(code, timeout=1.0)
    assert time.time() - start < 5
    assert result.timeout and not result.success and "timed out" in result.error
    pid = int(result.stdout.split()[0])
    deadline = time.time() + 5
    while time.time() < deadline:
        status = Path(f"/proc/{pid}/status")
        if not status.exists() or "\nState:\tZ" in status.read_text():  # gone, or dead and waiting to be reaped
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"grandchild {pid} outlived the timeout")


def test_memory_limit():
    result = execute_code("x = bytearray(1024 * 1024 * 1024)", max_memory_bytes=256 * 1024 * 1024)
    assert not result.success and result.memory_exceeded
    assert execute_code("x = bytearray(16 * 1024 * 1024)\nprint(len(x))").success


@pytest.mark.parametrize("call", [
    "import os; os.system('echo hi')", "import os; os.kill(os.getpid(), 9)", "import os; os.fork()",
    "import os; os.remove('x')", "import os; os.unlink('x')", "import shutil; shutil.rmtree('.')",
    "import subprocess; subprocess.Popen(['echo', 'hi'])", "import subprocess; subprocess.run(['echo', 'hi'])",
])
def test_destructive_calls_are_blocked(call):
    result = execute_code(call)
    assert not result.success
    assert "disabled in the sandbox" in result.error, result.stderr


def test_each_run_has_fresh_globals_and_runs_as_main():
    assert execute_code("x = 1\nassert __name__ == '__main__'").success
    result = execute_code("print(x)")
    assert not result.success and "NameError" in result.error
    # the guard's own names do not leak into the code's globals either
    assert execute_code("assert set(globals()) == {'__name__', '__builtins__'}, sorted(globals())").success


def test_environment_is_scrubbed(monkeypatch):
    monkeypatch.setenv("SECRET_TOKEN", "hunter2")
    result = execute_code("import os\nprint(sorted(k for k in os.environ if k != 'LC_CTYPE'), os.environ['PATH'])")
    assert result.success
    assert result.stdout.strip() == "['PATH'] /usr/bin:/bin"


def test_stdin_is_empty():
    result = execute_code("input()")
    assert not result.success and "EOFError" in result.error


def test_runs_in_a_temporary_folder_that_is_removed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # os.getcwd is blocked (as in nanochat), so ask the kernel where the process runs
    result = execute_code("import os\nopen('out.txt', 'w').write('x')\nprint(os.readlink('/proc/self/cwd'))")
    assert result.success, result.stderr
    folder = Path(result.stdout.strip())
    assert folder != tmp_path and not (tmp_path / "out.txt").exists()
    assert not folder.exists()


def test_code_with_quotes_and_newlines_passes_through_unchanged():
    code = "s = '''a \"quoted\" \\\\ string\nwith lines'''\nprint(repr(s))"
    result = execute_code(code)
    assert result.success and result.stdout.strip() == repr("a \"quoted\" \\ string\nwith lines")
