"""The serving machinery under the API: which checkpoints exist, one worker per GPU, the wait queue, generation jobs.

Catalog     every saved checkpoint as a model id "stage/tag/step" ("sft/d20/650"); "stage/tag" and "stage" are
            aliases of the latest step of that tag / of the stage's default tag. Rescanned on every lookup, so a
            checkpoint saved while the server runs shows up without a restart.
Worker      one device (cuda:i, or the CPU / MPS) with its own thread: everything slow (loading a model, prefill,
            decoding) runs there, never on the event loop, so /health answers while a reply is being written. Models
            load on first use and stay cached, least recently used first out when the cache is full or CUDA runs out
            of memory.
WorkerPool  free workers and a bounded line of requests waiting for one; a full line is refused at once (503).
Job         one request's generation: it streams events (ready, text, finish, done / error) from the worker thread
            to the request's event loop. Text is decoded incrementally (a UTF-8 character is never split) and held
            back while it could still be the start of a stop string, so no part of a stop string is ever sent. A
            cancelled job (the client went away, or the server is stopping) stops at the next token and frees its
            worker.
"""

import asyncio
import threading
import time
import traceback
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from primechat.common import UserError, home_dir
from primechat.engine import Engine, StreamDecoder, tool_call_specials
from primechat.train.checkpoint import (STAGE_DIRS, checkpoint_dir, default_tag, load_meta, load_model,
                                        saved_steps)

DEFAULT_PREFERENCE = ("sft", "rl", "mid", "base")  # the default model: the first of these stages that has checkpoints


class ApiError(Exception):
    """An error answered to the client: OpenAI's {"error": {...}} on /v1, {"detail": message} elsewhere.

    Defined here rather than in api.py because the workers raise it too (an unknown model, a prompt longer than the
    context, out of memory): api.py imports this module, so this one cannot import api.py."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}


# --------------------------------------------------------------------------------------------------------------------
# The catalog of checkpoints

@dataclass(frozen=True)
class ModelRef:
    stage: str
    tag: str
    step: int

    @property
    def id(self) -> str:
        return f"{self.stage}/{self.tag}/{self.step}"

    @property
    def chat(self) -> bool:
        return self.stage != "base"  # a base model has no chat format: plain completion only

    def created(self) -> int:
        meta = checkpoint_dir(self.stage, self.tag) / f"meta_{self.step:06d}.json"
        try:
            return int(meta.stat().st_mtime)
        except OSError:
            return 0

    def trained_context(self) -> int | None:
        """The sequence length the model was trained on, from its saved meta (None if unreadable). It can be served
        longer (Engine.context, its RoPE tables), but its answers get worse past this."""
        try:
            return load_meta(checkpoint_dir(self.stage, self.tag), self.step)["model_config"]["sequence_len"]
        except (OSError, ValueError, KeyError):
            return None


def scan_checkpoints() -> list[ModelRef]:
    """Every complete checkpoint: stages in pipeline order, tags by name, latest step first."""
    refs = []
    for stage, dirname in STAGE_DIRS.items():
        root = home_dir() / dirname
        if not root.is_dir():
            continue
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            refs += [ModelRef(stage, folder.name, step) for step in reversed(saved_steps(folder))]
    return refs


def resolve_name(name: str) -> ModelRef | None:
    """The checkpoint a model id or alias names, None if there is none."""
    parts = name.strip().split("/")
    if not parts or parts[0] not in STAGE_DIRS or len(parts) > 3 or not all(parts):
        return None
    stage = parts[0]
    try:
        tag = parts[1] if len(parts) > 1 else default_tag(stage)
    except UserError:
        return None
    if tag in (".", "..") or "\\" in tag:
        return None
    folder = checkpoint_dir(stage, tag)
    steps = saved_steps(folder) if folder.is_dir() else []
    if not steps:
        return None
    if len(parts) < 3:
        return ModelRef(stage, tag, steps[-1])
    try:
        step = int(parts[2])
    except ValueError:
        return None
    return ModelRef(stage, tag, step) if step in steps else None


class Catalog:
    """The models this server offers: all checkpoints, or those `allowed` names (ids or aliases, resolved once at
    start) and the default one (the `default` name, else the first allowed, else the preferred stage's latest)."""

    def __init__(self, allowed: list[str] | None = None, default: str | None = None):
        if not scan_checkpoints():
            raise UserError(f"no checkpoints to serve under {home_dir()}: train a model first (`primechat speedrun "
                            "--preset demo`, `primechat train base`, …) or import one into the home folder")
        self.allowed = None
        if allowed:
            refs = []
            for name in allowed:
                ref = resolve_name(name)
                if ref is None:
                    raise UserError(f"--models: no checkpoint named {name!r}; {self._available_hint()}")
                refs.append(ref)
            self.allowed = list(dict.fromkeys(refs))
        self.default_name = default
        if default is not None:
            ref = resolve_name(default)
            if ref is None or (self.allowed is not None and ref not in self.allowed):
                raise UserError(f"--model: no checkpoint named {default!r} among those served; "
                                f"{self._available_hint()}")

    def _available_hint(self) -> str:
        """The models a name could pick: the served ones once --models is read, every checkpoint before."""
        ids = [ref.id for ref in (scan_checkpoints() if self.allowed is None else self.allowed)]
        return f"available: {', '.join(ids[:12])}{' …' if len(ids) > 12 else ''}" if ids else "there are none"

    def default(self) -> ModelRef | None:
        if self.default_name is not None:
            ref = resolve_name(self.default_name)
            if ref is not None:
                return ref
        if self.allowed is not None:
            return self.allowed[0]
        for stage in DEFAULT_PREFERENCE:
            ref = resolve_name(stage)
            if ref is not None:
                return ref
        return None

    def models(self) -> list[ModelRef]:
        """The served models, the default one first."""
        refs = [ref for ref in scan_checkpoints() if self.allowed is None or ref in self.allowed]
        default = self.default()
        if default in refs:
            refs.remove(default)
            refs.insert(0, default)
        return refs

    def lookup(self, name: str | None) -> ModelRef:
        """The model a request names (None or "": the default); ApiError 404 if it is not served."""
        ref = self.default() if not name else resolve_name(name)
        if ref is None or (self.allowed is not None and ref not in self.allowed):
            raise ApiError(404, f"The model '{name}' does not exist or is not served here; GET /v1/models lists "
                           "the models", param="model", code="model_not_found")
        return ref


# --------------------------------------------------------------------------------------------------------------------
# Text of one reply: decoding, stop strings

class ReplyText:
    """Turns one row's tokens into the text that may be sent: UTF-8-safe, cut before the first stop string, and
    holding back any tail that could still grow into a stop string."""

    def __init__(self, decoder: StreamDecoder, stops: list[str]):
        self.decoder, self.stops = decoder, stops
        self.pending = ""
        self.stopped = False  # a stop string was met
        self.tokens = 0

    def push(self, token: int) -> str:
        self.tokens += 1
        return self._feed(self.decoder.push(token))

    def _feed(self, text: str) -> str:
        if self.stopped:
            return ""
        self.pending += text
        if not self.stops:
            out, self.pending = self.pending, ""
            return out
        cuts = [i for i in (self.pending.find(stop) for stop in self.stops) if i >= 0]
        if cuts:
            out, self.pending, self.stopped = self.pending[:min(cuts)], "", True
            return out
        hold = 0
        for k in range(min(len(self.pending), max(map(len, self.stops)) - 1), 0, -1):
            if any(stop.startswith(self.pending[-k:]) for stop in self.stops):
                hold = k
                break
        out, self.pending = self.pending[:len(self.pending) - hold], self.pending[len(self.pending) - hold:]
        return out

    def close(self) -> str:
        """The rest of the text at the end of the reply (a held-back tail that never became a stop string)."""
        out = self._feed(self.decoder.flush())
        if not self.stopped:
            out, self.pending = out + self.pending, ""
        return out


# --------------------------------------------------------------------------------------------------------------------
# Jobs

@dataclass
class Sampling:
    max_tokens: int
    temperature: float
    top_k: int  # 0: off
    top_p: float | None = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    n: int = 1
    seed: int = 0
    stops: list[str] = field(default_factory=list)


class Job:
    """One request's generation. Created on the request's event loop; the worker thread reports through emit()."""

    def __init__(self, ref: ModelRef, build_prompt, sampling: Sampling, started: float | None = None,
                 prompt_param: str = "messages"):
        self.ref, self.build_prompt, self.sampling = ref, build_prompt, sampling
        self.prompt_param = prompt_param  # the request field the prompt comes from, named if it is too long
        self.started = started if started is not None else time.perf_counter()  # the request's arrival
        self.loop = asyncio.get_running_loop()
        self.queue = asyncio.Queue()
        self.cancelled = threading.Event()
        self.worker = None

    def emit(self, event: tuple) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
        except RuntimeError:  # the loop is closed: the server is shutting down
            self.cancelled.set()

    def cancel(self) -> None:
        self.cancelled.set()

    async def next(self) -> tuple:
        return await self.queue.get()


# --------------------------------------------------------------------------------------------------------------------
# Workers and the pool

@dataclass
class Loaded:
    model: object
    tokenizer: object
    engine: Engine


class Worker:
    def __init__(self, gpu_id: int, device: torch.device, max_models: int = 2):
        self.gpu_id, self.device, self.max_models = gpu_id, torch.device(device), max(1, max_models)
        self.models: OrderedDict[str, Loaded] = OrderedDict()  # least recently used first
        self.thread = ThreadPoolExecutor(1, thread_name_prefix=f"primechat-worker{gpu_id}")
        self.job: Job | None = None
        self.last_model: str | None = None
        self.lock = threading.Lock()  # the model cache changes in the worker's thread while /stats reads it

    def info(self) -> dict:
        with self.lock:
            loaded = list(self.models)
        return {"gpu_id": self.gpu_id, "device": str(self.device), "model": self.last_model,
                "busy": self.job is not None, "loaded_models": loaded}

    def submit(self, job: Job, pool: "WorkerPool") -> None:
        self.job, job.worker = job, self
        self.thread.submit(self._run, job, pool)

    # ---- in the worker's thread ----

    def _evict(self, keep: str | None = None) -> bool:
        """Unload the least recently used model other than `keep`; False if there is none."""
        for name in self.models:
            if name != keep:
                with self.lock:
                    del self.models[name]
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                return True
        return False

    def _load(self, ref: ModelRef) -> Loaded:
        if ref.id in self.models:
            with self.lock:
                self.models.move_to_end(ref.id)
            return self.models[ref.id]
        while len(self.models) >= self.max_models and self._evict():
            pass
        while True:
            try:
                model, tokenizer, _ = load_model(ref.stage, ref.tag, ref.step, self.device)
                break
            except torch.OutOfMemoryError:
                if not self._evict():
                    raise
            except (UserError, OSError) as e:
                raise ApiError(404, f"could not load {ref.id}: {e}", param="model", code="model_not_found") from e
        loaded = Loaded(model, tokenizer, Engine(model, tokenizer))
        with self.lock:
            self.models[ref.id] = loaded
        return loaded

    def _run(self, job: Job, pool: "WorkerPool") -> None:
        final = None
        try:
            if job.cancelled.is_set():
                final = ("error", stopping_error() if pool.closed else ApiError(499, "the client went away"))
                return
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            loaded = self._load(job.ref)
            self.last_model = job.ref.id
            prompt = job.build_prompt(loaded.tokenizer)
            if len(prompt) >= loaded.engine.context:
                what = "conversation" if job.prompt_param == "messages" else job.prompt_param
                raise ApiError(400, f"the prompt is {len(prompt):,} tokens but {job.ref.id} holds at most "
                               f"{loaded.engine.context:,} tokens of context: shorten the {what}",
                               param=job.prompt_param, code="context_length_exceeded")
            job.emit(("ready", len(prompt)))
            stats = self._generate(job, loaded, prompt)
            # cut short: by its client, who reads no more, or by the server stopping, which its client is told
            final = ("error", stopping_error()) if job.cancelled.is_set() and pool.closed else ("done", stats)
        except ApiError as e:
            final = ("error", e)
        except torch.OutOfMemoryError:
            self._evict(keep=job.ref.id)
            final = ("error", ApiError(503, "out of GPU memory: retry shortly", type="server_error",
                                       code="out_of_memory", headers={"Retry-After": "1"}))
        except Exception as e:  # a bug, not the client's fault: keep the worker alive and say what happened
            traceback.print_exc()
            final = ("error", ApiError(500, f"generation failed: {type(e).__name__}: {e}", type="server_error"))
        finally:
            self.job = None
            pool.release(self)  # before the final event, so that a client's next request finds the worker free
            if final is not None:
                job.emit(final)

    def _generate(self, job: Job, loaded: Loaded, prompt: list[int]) -> dict:
        s = job.sampling
        engine = loaded.engine
        specials = tool_call_specials(loaded.tokenizer)
        rows = [ReplyText(StreamDecoder(loaded.tokenizer, specials), s.stops) for _ in range(s.n)]
        finish = [None] * s.n
        first = None
        generating = time.perf_counter()

        def end_row(i: int, reason: str):
            tail = rows[i].close()
            if tail:
                job.emit(("text", i, tail))
            finish[i] = "stop" if rows[i].stopped else reason
            job.emit(("finish", i, finish[i]))

        steps = engine.generate(prompt, num_samples=s.n, max_tokens=s.max_tokens, temperature=s.temperature,
                                top_k=s.top_k or None, top_p=s.top_p, seed=s.seed,
                                frequency_penalty=s.frequency_penalty, presence_penalty=s.presence_penalty)
        try:
            for column, _ in steps:
                if first is None:
                    first = time.perf_counter()
                for i, token in enumerate(column):
                    if finish[i] is not None:
                        continue
                    if token in engine.ends:
                        end_row(i, "stop")
                        continue
                    text = rows[i].push(token)
                    if text:
                        job.emit(("text", i, text))
                    if rows[i].stopped:
                        end_row(i, "stop")
                if job.cancelled.is_set() or all(reason is not None for reason in finish):
                    break
        finally:
            steps.close()
        for i in range(s.n):
            if finish[i] is None and not job.cancelled.is_set():  # a cancelled reply did not reach its length
                end_row(i, "length")
        end = time.perf_counter()
        completion = sum(row.tokens for row in rows)
        first = first or end
        later = completion - s.n  # tokens after the first step, whose time the time to first token holds
        if later > 0 and end > first:
            rate = later / (end - first)
        else:  # a reply of one step: its tokens over the whole generation
            rate = completion / (end - generating) if completion and end > generating else 0.0
        return {
            "usage": {"prompt_tokens": len(prompt), "completion_tokens": completion,
                      "total_tokens": len(prompt) + completion},
            "timings": {"ttft_ms": round((first - job.started) * 1000, 2),
                        "tokens_per_second": round(rate, 2),
                        "total_ms": round((end - job.started) * 1000, 2)},
        }


class QueueFull(Exception):
    pass


class ShuttingDown(Exception):
    pass


def stopping_error() -> ApiError:
    return ApiError(503, "the server is shutting down", type="server_error", code="server_shutting_down")


class WorkerPool:
    """Free workers, and requests waiting for one in arrival order: at most max_queue wait, the next is refused.

    Thread-safe and not tied to one event loop: workers are released from their own threads, and each waiter is a
    future on its own request's loop."""

    def __init__(self, workers: list[Worker], max_queue: int = 32):
        self.workers = workers
        self.max_queue = max_queue
        self._lock = threading.Lock()
        self._free = deque(workers)
        self._waiting = deque()  # (loop, future)
        self.closed = False

    @property
    def available(self) -> int:
        return len(self._free)

    @property
    def queued(self) -> int:
        return len(self._waiting)

    async def acquire(self) -> Worker:
        with self._lock:
            if self.closed:
                raise ShuttingDown()
            if self._free:
                return self._free.popleft()
            if len(self._waiting) >= self.max_queue:
                raise QueueFull()
            loop = asyncio.get_running_loop()
            waiter = (loop, loop.create_future())
            self._waiting.append(waiter)
        try:
            return await waiter[1]
        except asyncio.CancelledError:  # the request was abandoned while waiting
            with self._lock:
                if waiter in self._waiting:
                    self._waiting.remove(waiter)
            future = waiter[1]
            if future.done() and not future.cancelled():  # a worker was handed over just as it gave up
                self.release(future.result())
            raise

    def release(self, worker: Worker) -> None:
        with self._lock:
            while self._waiting:
                loop, future = self._waiting.popleft()
                try:
                    loop.call_soon_threadsafe(self._hand_over, future, worker)
                    return
                except RuntimeError:  # that request's loop is gone
                    continue
            self._free.append(worker)

    def _hand_over(self, future, worker: Worker) -> None:
        if future.done():  # cancelled meanwhile: the next in line gets it
            self.release(worker)
        else:
            future.set_result(worker)

    def close(self) -> None:
        """The server is stopping: running replies end at their next token (their clients are told), waiting requests
        and new ones are turned away, so that open connections finish now; uvicorn waits for them."""
        with self._lock:
            self.closed = True
            waiting, self._waiting = self._waiting, deque()
        for loop, future in waiting:
            try:
                loop.call_soon_threadsafe(self._turn_away, future)
            except RuntimeError:  # that request's loop is gone
                pass
        for worker in self.workers:
            job = worker.job
            if job is not None:
                job.cancel()

    @staticmethod
    def _turn_away(future) -> None:
        if not future.done():
            future.set_exception(ShuttingDown())

    def shutdown(self) -> None:
        self.close()
        for worker in self.workers:
            worker.thread.shutdown(wait=False, cancel_futures=True)


def make_workers(num_workers: int, device_type: str, max_models: int) -> list[Worker]:
    """One worker per GPU (cuda:0 … cuda:N-1); on the CPU or MPS, N workers sharing the one device."""
    if device_type == "cuda":
        visible = torch.cuda.device_count()
        if num_workers > visible:
            raise UserError(f"--num-gpus {num_workers} but only {visible} CUDA GPU(s) are visible")
        return [Worker(i, torch.device("cuda", i), max_models) for i in range(num_workers)]
    return [Worker(i, torch.device(device_type), max_models) for i in range(num_workers)]
