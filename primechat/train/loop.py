"""What every training loop (base, mid/SFT, RL) shares: stopping on a signal, the metrics log, console lines.

- StopRequest: SIGTERM or Ctrl-C asks the loop to finish its step, save and exit (code 128 + signal); resuming with
  --resume then continues exactly, and first does what the stop cut short (a validation, the task metrics).
- RunLog: metrics.jsonl beside the checkpoints (rank 0 only), cut back to the resumed step so a resumed run's log
  reads as one run, mirrored to Weights & Biases when the user asked for it (add_wandb_arguments: nanochat's
  --run NAME, and --wandb PROJECT).
- say: a console line from rank 0, printed above the progress bar; note_validation: a validation result recorded;
  StepReport: a training step's console line and metrics record (base and mid/SFT print the same columns).
- refuse_float16, out_of_memory: the errors every loop gives for fp16 (no gradient scaler yet) and for OOM.
- add_speed_arguments, training_model: --attention and --compile, the same in every trainer and in bench train.
- record_typed_flags: parsing notes which flags were typed (args.typed_flags), so a resume can take the others from
  the saved run (checkpoint.inherit_saved_flags).
- resume: --resume / --resume-from-step, one sequence for every trainer; check_horizon: a resumed run may change
  its number of steps, but not end before the step it resumes from.
- validation_batches: this rank's share of the validation rows, packed once.
"""

import argparse
import importlib
import json
import math
import signal

import torch
import torch.distributed as dist
from tqdm import tqdm

from primechat.attention import BACKENDS, use_backend
from primechat.common import UserError, atomic_path, is_master, peak_flops, print0
from primechat.train import checkpoint


class StopRequest:
    """SIGTERM or the first Ctrl-C asks the loop to save and stop after the current step; a second Ctrl-C kills.

    A signal may reach only some processes (one node preempted), so the loop asks `requested`, which every rank
    answers alike, and leaves with 128 + `agreed`, the signal the ranks agreed on."""

    def __init__(self):
        self.signum = self.agreed = 0
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.signum = signum
        signal.signal(signal.SIGINT, signal.default_int_handler)
        print0(f"\n{signal.Signals(signum).name}: saving a checkpoint after this step, then stopping")

    def pending(self) -> bool:
        """A signal arrived in this process (no synchronisation: for loops that must not wait for the step's end)."""
        return self.signum > 0

    def requested(self, device) -> bool:
        """Whether any rank got a signal (a collective: every rank must stop, and save, at the same step)."""
        signum = torch.tensor(float(self.signum), device=device)
        if dist.is_initialized():
            dist.all_reduce(signum, op=dist.ReduceOp.MAX)
        self.agreed = int(signum.item())
        return self.agreed > 0

    def exit_stopped(self, step: int, folder) -> None:
        if step == 0:  # nothing was trained: a checkpoint of the initial weights would only shadow real ones
            print0("stopped before the first step: nothing saved")
        else:
            print0(f"stopped at step {step}; checkpoint saved in {folder}. Continue with --resume")
        raise SystemExit(128 + self.agreed)


def add_wandb_arguments(p):
    p.add_argument("--run", default="dummy", help="Weights & Biases run name, as nanochat's (dummy: no W&B)")
    p.add_argument("--wandb", default=None, metavar="PROJECT", help="Weights & Biases project (default with --run: "
                   "primechat); alone, the run is named after the model tag")


def wandb_run(args) -> tuple[str | None, str | None]:
    """(project, run name) asked for by --wandb and nanochat's --run (whose default, dummy, means no W&B); the
    project is None without W&B. Checked before anything is loaded, on every process: wandb must be installed."""
    run = None if args.run == "dummy" else args.run
    project = args.wandb or (run and "primechat")
    if project:
        try:
            importlib.import_module("wandb")  # imported here by every process; RunLog uses it on rank 0
        except ImportError:
            flags = " and ".join(flag for flag, given in (("--run", run), ("--wandb", args.wandb)) if given)
            raise UserError(f"Weights & Biases (asked for by {flags}) is not installed: pip install wandb, or drop "
                            f"{flags}") from None
    return project, run


class RunLog:
    def __init__(self, path, resumed_step: int | None, args, name: str, config: dict):
        """name: the W&B run's name unless --run gives one."""
        self.path, self.wandb_run = path, None
        if not is_master():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        if resumed_step is not None and path.exists():  # drop records written after the checkpoint we resume from
            records = []
            for line in path.read_text().splitlines():
                try:
                    if json.loads(line)["step"] <= resumed_step:
                        records.append(line)
                except (json.JSONDecodeError, KeyError, TypeError):  # a line half written when a run was killed
                    print0(f"note: {path} had a damaged line, dropped: {line[:60]!r}")
            with atomic_path(path) as tmp:
                tmp.write_text("".join(r + "\n" for r in records))
        project, run = wandb_run(args)
        if project:
            import wandb
            self.wandb_run = wandb.init(project=project, name=run or name, config=config)

    def __call__(self, record: dict):
        if not is_master():
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.wandb_run:
            self.wandb_run.log(record, step=record["step"])


def say(line: str):
    if is_master():
        tqdm.write(line)


class StepReport:
    """A step's console line and metrics record as nanochat prints them: the smoothed loss (an EMA, debiased), the
    learning-rate multiplier, tok/s, and MFU against the devices' dense bf16 peak ("-" where the peak is unknown)."""

    def __init__(self, log: RunLog, tokens_per_step: int, flops_per_token: float, device, world: int):
        self.log, self.tokens_per_step, self.flops_per_token, self.world = log, tokens_per_step, flops_per_token, world
        self.peak = peak_flops(device)

    def __call__(self, loop: dict, step: int, of: str, done: float, eta: float, loss: float, lrm: float, dt: float,
                 **extra):
        loop["smooth_loss"] = 0.9 * loop["smooth_loss"] + 0.1 * loss
        smooth = loop["smooth_loss"] / (1 - 0.9 ** step)
        tok_per_sec = self.tokens_per_step / dt
        mfu = self.flops_per_token * tok_per_sec / (self.peak * self.world) * 100 if self.peak else None
        say(f"step {step:05d}{of} ({100 * done:.1f}%) | loss {smooth:.4f} | lrm {lrm:.2f} | dt {dt * 1000:.0f}ms | "
            f"tok/s {tok_per_sec:,.0f} | mfu {f'{mfu:.1f}%' if mfu is not None else '-'} | "
            f"time {loop['training_time'] / 60:.1f}m | eta {eta / 60:.1f}m")
        self.log({"step": step, "loss": smooth, "raw_loss": loss, "lrm": lrm, "dt": dt, "tok_per_sec": tok_per_sec,
                  "mfu": mfu, "training_time": loop["training_time"], **extra})


def due(step: int, every: int, last: bool) -> bool:
    """Whether a periodic task (validation, metrics, saving) runs at this step: every `every` steps and at the end."""
    return last or (every > 0 and step % every == 0)


def note_validation(step: int, val_bpb: float | None, loop: dict, log: RunLog) -> bool:
    """A validation's result into the loop state, the console and the metrics log; False if a stop abandoned it."""
    if val_bpb is None:
        say(f"step {step:05d} | validation abandoned: stopping")
        return False
    loop["val_bpb"], loop["min_val_bpb"] = val_bpb, min(loop["min_val_bpb"], val_bpb)
    loop["val_bpb_step"] = step  # a checkpoint saved by a stop between evaluations says how old its val_bpb is
    say(f"step {step:05d} | validation bpb {val_bpb:.4f}")
    log({"step": step, "val_bpb": val_bpb})
    return True


def refuse_float16(dtype: torch.dtype):
    if dtype == torch.float16:
        raise UserError("float16 training needs a gradient scaler, which primechat does not have yet: set "
                        "PRIMECHAT_DTYPE=bfloat16 (GPUs since Ampere) or float32")


def check_horizon(resumed_at: int, num_steps: int, saved_num_steps: int | None):
    """saved_num_steps: None where the saved run did not count steps (mid/SFT by epochs, older RL checkpoints)."""
    if resumed_at > num_steps:
        had = f" (the saved run had {saved_num_steps})" if saved_num_steps is not None else ""
        raise UserError(f"the checkpoint is at step {resumed_at}, past this run's {num_steps} steps: raise "
                        f"--num-iterations{had}")
    if saved_num_steps is not None and num_steps != saved_num_steps:
        print0(f"note: the saved run had {saved_num_steps:,} steps, this one {num_steps:,}: the learning-rate "
               f"schedule changes from step {resumed_at} on")


def resume(folder, args, loop: dict, num_steps: int | None, *, model, optimizer, model_config: dict, user_config: dict,
           rank: int, world: int, device, fresh_start: str, source: tuple[str, str] | None = None,
           tag_flag: str = "--model-tag", loader: bool = True) -> tuple[int | None, dict | None, dict | None]:
    """--resume / --resume-from-step, the same in every trainer: (the saved step this run continues from, its meta,
    this rank's data-loader state), or (None, None, None) for a new run. Loads the step's model and optimizer shard,
    takes back its loop state into `loop`, and refuses a step trained from another source (mid/SFT/RL: `source` is
    the (stage, tag) read) or past the run's num_steps (None: the run ends by epochs, checked by its trainer).
    Nothing on disk changes here: the trainer sets later steps aside once its own checks have passed too."""
    step = checkpoint.resume_point(folder, args.resume, args.resume_from_step, fresh_start, rank, device, tag_flag)
    if step is None:
        return None, None, None
    meta = checkpoint.resume_training(folder, step, model_config, model, optimizer, rank, world, device, user_config)
    if source is not None:
        checkpoint.refuse_other_source(meta, *source, folder, step)
    if num_steps is not None:
        check_horizon(step, num_steps, meta.get("num_iterations"))
    loop.update(meta["loop_state"])
    return step, meta, checkpoint.load_rank_state(folder, step, "loader", rank) if loader else None


def out_of_memory(device_batch_size: int) -> UserError:
    return UserError(f"out of GPU memory at --device-batch-size {device_batch_size}: lower it (e.g. "
                     f"{max(1, device_batch_size // 2)}); gradient accumulation keeps the result the same")


def add_speed_arguments(p):
    p.add_argument("--attention", choices=BACKENDS, default="auto", help="attention implementation (auto: "
                   "FlashAttention-3 on CUDA when it loads, else FlexAttention; SDPA on CPU/MPS)")
    p.add_argument("--compile", choices=["auto", "on", "off"], default="auto", help="torch.compile (auto: on CUDA)")


def record_typed_flags(parser: argparse.ArgumentParser):
    """Make parsing set args.typed_flags, the dests of the flags on the command line, which argparse does not tell
    (a typed value may equal the default). The words are parsed a second time with every default suppressed, so
    abbreviations and --flag=value count as typed as well."""
    parse = parser.parse_known_args

    def parse_known_args(args=None, namespace=None):
        result, rest = parse(args, namespace)
        defaults = {action: action.default for action in parser._actions}
        try:
            for action in defaults:
                action.default = argparse.SUPPRESS
            typed, _ = parse(args, None)
        finally:
            for action, default in defaults.items():
                action.default = default
        result.typed_flags = sorted(k for k in vars(typed) if k in {a.dest for a in defaults})
        return result, rest

    parser.parse_known_args = parse_known_args


def training_model(model, args, device) -> tuple[torch.nn.Module, str]:
    """The module to train (torch.compile'd where --compile says) and the attention backend it uses."""
    use_compile = args.compile == "on" or (args.compile == "auto" and device.type == "cuda")
    attention = use_backend(args.attention, device, model.activation_dtype(device), use_compile)
    return (torch.compile(model, dynamic=False) if use_compile else model), attention


def validation_batches(packer, eval_tokens: int, rank: int, world: int) -> list:
    """This rank's share of the first eval_tokens rows of a loader (base's or chat's), packed once and reused at
    every evaluation. Every rank packs the same stream and keeps batches rank, rank+world, …, so validation bpb is the
    same number whatever the process count (and works on a validation shard with fewer row groups than processes)."""
    total = max(world, math.ceil(eval_tokens / (packer.B * packer.T) / world) * world)
    return [batch for i in range(total) if (batch := packer.next_batch()) and i % world == rank]
