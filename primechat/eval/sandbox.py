"""Run model-written Python in a throwaway subprocess, for HumanEval: `execute_code(code) -> ExecutionResult`.

THIS IS NOT A SECURITY BOUNDARY. It keeps honest mistakes from hurting the machine (an infinite loop, a huge
allocation, a stray `os.remove` or `shutil.rmtree`), nothing more: the code can still open network connections, use
ctypes, read any file the user can, or undo the guards below. Run untrusted code inside a container or VM.

Each call starts a fresh `python -I -c GUARD CODE`:
- its own process group (start_new_session), and on the wall-clock timeout the whole group is killed;
- a new temporary folder as working directory, deleted afterwards;
- an environment of only PATH=/usr/bin:/bin (no tokens, no HOME), stdin from /dev/null;
- the guard sets resource limits (address space and data to `max_memory_bytes`, CPU seconds just above the
  timeout), disables destructive functions (os.system, os.kill, os.fork, os.remove, shutil.rmtree,
  subprocess.Popen, …, as nanochat's execution.py does), then runs the code as __main__ in fresh globals.
"""

import math
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

# Runs in the child before the model's code; argv[1] is the code, argv[2] the memory limit in bytes, argv[3] the CPU
# limit in seconds.
GUARD = r'''
import builtins, faulthandler, os, resource, shutil, subprocess, sys
code, memory, cpu = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sys.argv = ["<llm>"]
if memory > 0 and sys.platform != "darwin":  # macOS rejects RLIMIT_AS
    for limit in (resource.RLIMIT_AS, resource.RLIMIT_DATA):
        resource.setrlimit(limit, (memory, memory))
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
faulthandler.disable()

def disabled(name):
    def refuse(*args, **kwargs):
        raise PermissionError(f"{name} is disabled in the sandbox")
    return refuse

for module, names in ((os, "kill system putenv remove removedirs rmdir fchdir setuid fork forkpty killpg rename "
                          "renames truncate replace unlink fchmod fchown chmod chown chroot lchflags lchmod lchown "
                          "getcwd chdir"),
                      (shutil, "rmtree move chown"), (subprocess, "Popen"), (builtins, "exit quit help")):
    for name in names.split():
        if hasattr(module, name):
            setattr(module, name, disabled(f"{module.__name__}.{name}"))
for name in ("ipdb", "joblib", "resource", "psutil", "tkinter"):
    sys.modules[name] = None
exec(compile(code, "<llm>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
'''


@dataclass
class ExecutionResult:
    success: bool  # exited with status 0
    stdout: str
    stderr: str
    error: str  # the last line of stderr (the exception), or why it was stopped; "" on success
    timeout: bool = False  # stopped by the wall-clock or CPU-time limit
    memory_exceeded: bool = False  # died of MemoryError (the address-space limit)


def execute_code(code: str, timeout: float = 5.0, max_memory_bytes: int = 256 * 1024 * 1024) -> ExecutionResult:
    """Run `code` in a fresh sandboxed interpreter; see the module docstring for what that does and does not mean."""
    cpu_seconds = math.ceil(timeout) + 1
    with tempfile.TemporaryDirectory(prefix="primechat-sandbox-") as folder:
        proc = subprocess.Popen([sys.executable, "-I", "-c", GUARD, code, str(max_memory_bytes), str(cpu_seconds)],
                                cwd=folder, env={"PATH": "/usr/bin:/bin"}, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        timed_out = False
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)  # the group: children the code started die too
            out, err = proc.communicate()
    stdout, stderr = out.decode(errors="replace"), err.decode(errors="replace")
    timed_out = timed_out or proc.returncode == -signal.SIGXCPU
    memory = "MemoryError" in stderr
    if proc.returncode == 0 and not timed_out:
        return ExecutionResult(True, stdout, stderr, "")
    if timed_out:
        error = f"timed out after {timeout:g} s"
    else:
        lines = stderr.strip().splitlines()
        error = lines[-1] if lines else f"exited with status {proc.returncode}"
    return ExecutionResult(False, stdout, stderr, error, timeout=timed_out, memory_exceeded=memory)
