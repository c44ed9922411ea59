"""Shared plumbing: the home folder, user errors, atomic files, progress bars, child processes, device, dtype and
distributed setup, and the hardware tables (GPU peak FLOPs and bandwidth, prices, measured MFU) from which training,
`bench` and `plan` tell speed and cost.

Everything primechat produces lives under one home folder ($PRIMECHAT_HOME, else ~/.cache/primechat) with nanochat's
layout, so a user can find, copy or delete any stage's output by hand:

    base_data/<dataset>/shard_XXXXX.parquet   tokenizer/{tokenizer.pkl,token_bytes.pt}   eval_bundle/
    base_checkpoints/<tag>/   mid_checkpoints/<tag>/   chatsft_checkpoints/<tag>/   chatrl_checkpoints/<tag>/
    base_eval/   report/
"""

import contextlib
import os
import sys
from pathlib import Path

from tqdm import tqdm


CONFIGS_DIR = Path(__file__).parent / "configs"  # shipped presets, mixtures and the identity conversations


class UserError(Exception):
    """A mistake the user can fix (bad flag, missing input). The CLI prints it as one line and exits with code 2."""


def home_dir() -> Path:
    # absolute, so that a relative $PRIMECHAT_HOME names the same folder for a child started in another folder
    home = Path(os.environ.get("PRIMECHAT_HOME") or Path.home() / ".cache" / "primechat").expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    return home


def base_data_dir() -> Path:
    return home_dir() / "base_data"


def dataset_dir(name: str) -> Path:
    """Shards of one pretraining corpus: `karpathy/climbmix-400b-shuffle` and `climbmix-400b-shuffle` name the same."""
    short = name.rstrip("/").split("/")[-1]
    if not short or short in (".", ".."):
        raise UserError(f"bad dataset name {name!r}: use OWNER/NAME or NAME")
    return base_data_dir() / short


def tokenizer_dir() -> Path:
    return home_dir() / "tokenizer"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside `path`; on success rename it onto `path`, on any failure delete it.

    Readers therefore see either the old complete file or the new complete file, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        # the data on disk before the rename: after a power cut the name must not point at blocks never written
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def show_progress() -> bool:
    """Progress bars on a terminal, or anywhere with PRIMECHAT_PROGRESS=1; in logs they are lines of escape codes."""
    return sys.stderr.isatty() or os.environ.get("PRIMECHAT_PROGRESS") == "1"


def progress(iterable=None, **kwargs):
    """A tqdm bar (rate and ETA) on stderr, from the first process only (under torchrun all share one terminal)."""
    return tqdm(iterable, disable=not (show_progress() and is_master()), dynamic_ncols=True, **kwargs)


def quiet_hub_progress():
    """huggingface_hub's download bars follow the same rule as ours."""
    if not show_progress():
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read when huggingface_hub is imported
        if "huggingface_hub" in sys.modules:
            from huggingface_hub.utils import disable_progress_bars
            disable_progress_bars()


def run_child(command: list[str], log, on_line=None, env: dict | None = None) -> tuple[int, str | None, int]:
    """Run a `primechat` subprocess to its end, its output appended to the open text file `log` (and each line handed
    to `on_line`, e.g. sys.stdout.write). Returns its exit code, its own one-line reason if it gave one (a
    "primechat: error: " line, which under torchrun is buried in torchrun's failure report) and the stop signal passed
    on to it (0: none). Ctrl-C and SIGTERM are passed on, and the child runs in its own session so that a Ctrl-C at
    the terminal reaches it once, through us (twice would kill it mid-save), and a `kill -INT` of this process alone
    reaches it too; a hangup (the terminal or ssh session closing) reaches it as SIGTERM, since it no longer gets the
    terminal's own. The child saves a checkpoint and exits, and we keep relaying until it has: leaving early would
    kill it mid-save. A child that fails after a stop was asked for counts as stopped by it (exit 128 + signal):
    torchrun exits 1 once its workers have saved and stopped. One that exits 0 had finished its work when the stop
    came: the caller keeps that work and stops before starting the next child. If we are killed (SIGKILL: no
    chance to relay anything), Linux kills the child too, rather than leave it running unseen where a rerun would
    collide with it; every file is written atomically, so its last checkpoint is whole and the rerun resumes from it."""
    import ctypes
    import signal
    import subprocess
    error, stops = None, []
    prctl, parent = ctypes.CDLL(None).prctl if sys.platform == "linux" else None, os.getpid()  # looked up before fork

    def die_with_us():  # runs in the child between fork and exec
        # SIGKILL, not SIGTERM: its output goes to our pipe, so it could not print its way through a save anyway
        prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # we died before prctl: no signal will come
            os._exit(1)
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True, preexec_fn=die_with_us if prctl else None) as proc:
        def on_stop(signum, frame):
            signum = signal.SIGTERM if signum == signal.SIGHUP else signum
            stops.append(signum)
            proc.send_signal(signum)
        before = {sig: signal.signal(sig, on_stop) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        try:
            for line in proc.stdout:
                if on_line:
                    on_line(line)
                if error is None and line.startswith("primechat: error: "):
                    error = line.strip().removeprefix("primechat: error: ")
                log.write(line)
                log.flush()
        finally:
            for sig, handler in before.items():
                signal.signal(sig, handler)
    stop = int(stops[0]) if stops else 0
    if stop and proc.returncode not in (0, 128 + stop):
        return 128 + stop, error, stop
    return proc.returncode, error, stop


def shipped_configs(key: str) -> dict[str, Path]:
    """The YAML files in configs/ that have `key` at the top ("stages": speedrun presets, "train": chat mixtures)."""
    import yaml
    return {p.stem: p for p in sorted(CONFIGS_DIR.glob("*.yaml")) if key in yaml.safe_load(p.read_text())}


def stopped_exit_code(code: int) -> int | None:
    """The exit code to pass on when a child stopped on Ctrl-C or SIGTERM (it saved; rerunning continues), else None."""
    import signal
    stops = (signal.SIGINT, signal.SIGTERM)
    if code in [128 + s for s in stops] + [-s for s in stops]:
        return code if code > 0 else 128 - code
    return None


def physical_ram() -> int:
    """Bytes of RAM in this machine (POSIX)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def aligned_rows(rows: list[tuple[str, object]]) -> str:
    """(label, value) pairs as an indented two-column table: the start-up tables of the trainers and the planner."""
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"  {label:<{width}}  {value}" for label, value in rows)


def hours_text(hours: float) -> str:
    return f"{hours * 60:.1f} min" if hours < 1 else f"{int(hours)}h{round(hours % 1 * 60):02d}m ({hours:.1f} h)"


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000


# --------------------------------------------------------------------------------------------------------------------
# Device, dtype, distributed. torch is imported lazily so that data and tokenizer commands start fast.

def autodetect_device() -> str:
    import torch
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def compute_dtype(device_type: str):
    """bf16 on CUDA GPUs that have it (SM 8.0+), fp32 elsewhere; PRIMECHAT_DTYPE=bfloat16|float16|float32 overrides."""
    import torch
    name = os.environ.get("PRIMECHAT_DTYPE")
    if name:
        if name not in ("bfloat16", "float16", "float32"):
            raise UserError(f"PRIMECHAT_DTYPE={name} is not one of bfloat16, float16, float32")
        return getattr(torch, name)
    if device_type == "cuda" and torch.cuda.get_device_capability()[0] >= 8:
        return torch.bfloat16
    return torch.float32


def dist_info() -> tuple[bool, int, int, int]:
    """(is_distributed, rank, local_rank, world_size) from torchrun's environment variables."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return True, int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ["WORLD_SIZE"])
    return False, 0, 0, 1


def is_master() -> bool:
    return dist_info()[1] == 0


def print0(*args, **kwargs):
    if is_master():
        print(*args, **kwargs, flush=True)


def compute_init(device_type: str = ""):
    """Seed, pick the device and join the process group when launched by torchrun. Returns (device, rank, world)."""
    import torch
    import torch.distributed as dist
    device_type = device_type or autodetect_device()
    if device_type not in ("cuda", "mps", "cpu"):
        raise UserError(f"--device-type {device_type!r} is not a device: use cuda, mps or cpu (or leave it out)")
    if device_type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device-type cuda asked for, but this torch sees no CUDA GPU: drop the flag to use the CPU")
    if device_type == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device-type mps asked for, but this machine has no Apple GPU: drop the flag to use the CPU")
    torch.manual_seed(42)
    ddp, rank, local_rank, world = dist_info()
    if device_type == "cuda":
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        # launchers that show each process only its own GPU (SLURM) number it 0 whatever the local rank
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device(device_type)
    # a torchrun worker dies with its torchrun, as run_child's children die with theirs (only under torchrun: other
    # launchers may mean their workers to outlive them)
    if "TORCHELASTIC_RUN_ID" in os.environ and sys.platform == "linux":
        import ctypes
        import signal
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if ddp and not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend, device_id=device if device_type == "cuda" else None)
    return device, rank, world


def compute_cleanup():
    import torch.distributed as dist
    if dist.is_initialized():
        dist.barrier()  # a rank that leaves while others still talk to it makes them abort
        dist.destroy_process_group()



# Vendors' datasheet peaks, for MFU (dense bf16 tensor-core FLOP/s) and MBU (memory bandwidth, bytes/s). A device
# takes the first entry whose key is part of its name, so specific names (H100 PCIe) come before general ones (H100).
PEAK_BF16_FLOPS = [("GH200", 989e12), ("H200", 989e12), ("H100 PCIe", 756e12), ("H100 NVL", 835e12),
                   ("H100", 989e12), ("H800", 989e12), ("B200", 2250e12), ("A100", 312e12), ("A800", 312e12),
                   ("L40S", 362e12), ("L4", 121e12), ("A10G", 70e12), ("A10", 125e12), ("RTX 4090", 165e12),
                   ("RTX 3090", 71e12)]  # no V100: it has no bf16 tensor cores
PEAK_BANDWIDTH = [("GH200", 4.0e12), ("H200", 4.8e12), ("H100 PCIe", 2.0e12), ("H100 NVL", 3.9e12),
                  ("H100", 3.35e12), ("H800", 3.35e12), ("B200", 8.0e12), ("A100-SXM4-80GB", 2.039e12),
                  ("A100 80GB PCIe", 1.935e12), ("A100", 1.555e12), ("L40S", 0.864e12), ("L4", 0.3e12),
                  ("A10G", 0.6e12), ("A10", 0.6e12), ("RTX 4090", 1.008e12), ("RTX 3090", 0.936e12)]


# On-demand cloud price per GPU-hour in US$, for cost estimates (report card, planner); --price overrides. H100, A100
# and V100 are nanochat's report figures; H200 has none there and takes a typical late-2026 rate.
GPU_HOURLY_PRICE = [("H200", 3.50), ("H100", 3.00), ("A100", 1.79), ("V100", 0.55)]
DEFAULT_GPU_HOURLY_PRICE = 2.00


def gpu_hourly_price(gpu_name: str) -> float:
    return next((price for key, price in GPU_HOURLY_PRICE if key in gpu_name), DEFAULT_GPU_HOURLY_PRICE)


def _datasheet(device, table) -> float | None:
    """The device's entry in a datasheet table, or None where unknown (CPU, MPS, unlisted GPUs: the ratio that needs
    it is then not shown)."""
    import torch
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((value for key, value in table if key in name), None)


def peak_flops(device) -> float | None:
    return _datasheet(device, PEAK_BF16_FLOPS)


def peak_bandwidth(device) -> float | None:
    return _datasheet(device, PEAK_BANDWIDTH)


# Model FLOPs utilisation: MEASURED figures only, each with its source. primechat has measured no GPU yet
# (docs/benchmarks.md, "Training (GPU)"), so the one entry is nanochat's; other GPUs borrow it, and say so.
MEASURED_MFU = {"H100": (0.50, "nanochat's published figure (d32 at ~1.574 s/step, MFU ~50%), "
                               "not measured by primechat")}
# A CPU has no datasheet peak to take a share of: this is the achieved rate primechat measured (fp32, no compile).
CPU_RATE = (0.059e12, "primechat's measured 0.059 TFLOP/s (docs/benchmarks.md: 2-core CPU, d4, fp32); "
                      "other CPUs differ")


def measured_mfu(gpu_name: str) -> tuple[float, str]:
    """The MFU to expect on this GPU and where the figure comes from: its measured one, else H100's."""
    for key, (mfu, source) in MEASURED_MFU.items():
        if key in gpu_name:
            return mfu, source
    mfu, h100_source = MEASURED_MFU["H100"]
    return mfu, f"no measured figure for {gpu_name}: assumed equal to H100's, {h100_source}"


def device_rate(device, world: int) -> tuple[float | None, str]:
    """The FLOP/s that `world` devices like this live one should reach together (None: unknown), and its source;
    train base turns it into the expected time of its start-up table."""
    if device.type == "cpu":
        return CPU_RATE
    import torch
    peak = peak_flops(device)
    if peak is None:
        return None, f"no datasheet peak for this {device.type} device"
    mfu, source = measured_mfu(torch.cuda.get_device_name(device))
    return mfu * peak * world, f"MFU {mfu:.0%}: {source}"
