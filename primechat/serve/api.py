"""The HTTP side of `primechat serve`: an OpenAI-compatible API, nanochat's endpoints, and the web page.

    GET  /                      the chat page (static/index.html); /static/… its files
    GET  /v1/models             every servable checkpoint, id "stage/tag/step", the default model first, with the
                                context it was trained on (max_model_len, context_length)
    POST /v1/chat/completions   chat models; OpenAI's fields plus top_k; streamed as server-sent events or not
    POST /v1/completions        plain text completion (base models, and chat models too), of one prompt or a list
    POST /chat/completions      nanochat's streaming endpoint: data: {"token", "gpu"} … data: {"done": true}
    GET  /health, /stats        liveness and the server's sampling defaults, and what the workers are doing

Errors on /v1 have OpenAI's shape {"error": {"message", "type", "param", "code"}} (400 names the bad field in
param); elsewhere {"detail": message}. With an API key set, /v1 and /chat/completions want `Authorization: Bearer
<key>`. Beside `usage`, replies carry a non-standard `timings` {ttft_ms, tokens_per_second, total_ms} measured here.
"""

import asyncio
import json
import random
import secrets
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from primechat.serve.workers import (ApiError, Catalog, Job, QueueFull, Sampling, ShuttingDown, WorkerPool,
                                     make_workers, stopping_error)
from primechat.tokenizer import ConversationError

STATIC_DIR = Path(__file__).parent / "static"

# nanochat's limits, for both APIs
MAX_MESSAGES = 500
MAX_MESSAGE_CHARS = 8000
MAX_TOTAL_CHARS = 32000
MAX_TOKENS = 4096
MAX_STOPS = 16  # api.openai.com takes 4, but editors' autocompletion (Continue) sends more to other hosts
MAX_STOP_CHARS = 128  # each; a reply holds back a tail as long as the longest, checked at every token
MAX_N = 16
MAX_PROMPTS = 32  # a text completion's list of prompts (LangChain batches 20)


@dataclass
class Settings:
    models: list[str] | None = None  # the served models (ids or aliases); None: every checkpoint
    model: str | None = None  # the default model; None: the first of sft, rl, mid, base present
    num_workers: int = 1
    device_type: str = "cpu"
    max_queue: int = 32
    max_models_per_worker: int = 2
    api_key: str | None = None
    # sampling, for requests that give none (ServerDefaulted); `serve`'s flags default to these
    temperature: float = 0.8
    top_k: int = 50
    max_tokens: int = 512


# --------------------------------------------------------------------------------------------------------------------
# Request bodies. Unknown fields are accepted and ignored, as OpenAI clients send many; known ones that would change
# what a reply means, and that primechat cannot honour, are refused by name when set (SamplingFields.asked).

class _Body(BaseModel):
    # so a misspelt field, in a request or in a model here, is ignored too: a new field that "does nothing" may be one
    model_config = ConfigDict(extra="allow")


class ContentPart(_Body):
    type: str  # only "text" can be read; others (image_url, input_audio …) are refused by name in check_messages
    text: str = ""


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant"]  # developer: OpenAI's newer name for system
    content: str | list[ContentPart] | None = None  # None: an assistant turn that only called tools


class StreamOptions(_Body):
    include_usage: bool | None = False


class ResponseFormat(_Body):
    type: str = "text"


UNSUPPORTED = {  # OpenAI's fields that primechat cannot honour: what each asks for
    "tools": "primechat models cannot call the tools a request gives (tool_choice 'none' leaves them out)",
    "functions": "primechat models cannot call the functions a request gives (function_call 'none' leaves them out)",
    "response_format": "primechat cannot hold a reply to a format: only {'type': 'text'}",
    "logprobs": "primechat does not return log probabilities",
    "top_logprobs": "primechat does not return log probabilities",
    "logit_bias": "primechat does not apply logit biases",
    "echo": "primechat does not echo the prompt",
    "best_of": "primechat does not rank samples: ask for n replies instead",
    "suffix": "primechat models cannot fill in text before a suffix",
}


class ServerDefaulted(_Body):
    """The sampling fields of both APIs that the server has a default for (the Settings field of the same name):
    left out (None), they take it. `serve` checks its flags for these defaults against the same bounds."""
    temperature: float | None = Field(None, ge=0, le=2)
    top_k: int | None = Field(None, ge=0, le=200)
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)


class SamplingFields(ServerDefaulted):
    """OpenAI's fields beyond those, for /v1/chat/completions and /v1/completions."""
    top_k: int | None = Field(None, ge=-1, le=200)  # not OpenAI's: -1 is vLLM's spelling of off, as 0 is ours
    model: str | None = None
    # null means the default for these too: OpenAI's types declare them Optional, and SDKs generated from its spec
    # send every field
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(1, ge=1, le=MAX_N)
    top_p: float | None = Field(None, gt=0, le=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    stop: str | list[str] | None = None
    seed: int | None = None
    frequency_penalty: float | None = Field(None, ge=-2, le=2)  # OpenAI's: lower a token's logit per time it was
    presence_penalty: float | None = Field(None, ge=-2, le=2)  # written, and once if it was written at all
    # in UNSUPPORTED: only their off values (null, false, 0, {}) are accepted, which many clients send
    logprobs: bool | int | None = None  # chat: a bool; completions: how many alternatives per token
    top_logprobs: int | None = None
    logit_bias: dict[str, float] | None = None

    def asked(self) -> dict[str, bool]:
        """Whether each field in UNSUPPORTED that this request has asks for its feature."""
        return {name: bool(getattr(self, name)) for name in ("logprobs", "top_logprobs", "logit_bias")}


class ChatRequest(SamplingFields):
    messages: list[Message]
    tools: list | None = None
    tool_choice: str | dict | None = None
    functions: list | None = None  # the older form of tools, with function_call
    function_call: str | dict | None = None
    response_format: ResponseFormat | None = None

    def asked(self) -> dict[str, bool]:
        calls = "none" not in (self.tool_choice, self.function_call)
        return {**super().asked(), "tools": calls and bool(self.tools), "functions": calls and bool(self.functions),
                "response_format": self.response_format is not None and self.response_format.type != "text"}


class CompletionRequest(SamplingFields):
    # text, or token ids of the served model's tokenizer; a list of either: a batch (_prompts)
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool | None = False
    best_of: int | None = Field(None, ge=1)
    suffix: str | None = None

    def asked(self) -> dict[str, bool]:
        return {**super().asked(), "echo": bool(self.echo), "best_of": (self.best_of or 1) > 1,
                "suffix": bool(self.suffix)}


class NanochatMessage(_Body):
    role: str
    content: str


class NanochatRequest(ServerDefaulted):
    messages: list[NanochatMessage]


# fields of an OpenAI chat request that nanochat's body never has (its page sends messages, temperature, top_k and
# max_tokens): one of them on /chat/completions is an OpenAI client whose base_url lacks /v1
OPENAI_ONLY = frozenset(ChatRequest.model_fields) - frozenset(NanochatRequest.model_fields)


# --------------------------------------------------------------------------------------------------------------------
# Checks shared by the endpoints

def refuse_unsupported(body: SamplingFields) -> None:
    """400 naming the first field that asks for what primechat cannot do: ignored, it would give a reply that looks
    right but is not what was asked for (a tool never called, JSON that is not JSON). vLLM and llama.cpp refuse too."""
    for name, asked in body.asked().items():
        if asked:
            raise ApiError(400, f"{name}: {UNSUPPORTED[name]}", param=name, code="unsupported_parameter")


def misdirected_openai_request(body: NanochatRequest) -> JSONResponse | None:
    """The 400 for an OpenAI request sent to nanochat's endpoint, None for nanochat's own: answered, its stream of
    {"token"} events would reach an OpenAI client as a 200 it turns into a string or into chunks without choices.
    Both error shapes: nanochat's {"detail"}, and OpenAI's {"error"}, the one an OpenAI client shows."""
    fields = sorted(OPENAI_ONLY & set(body.model_extra or {}))
    if not fields:
        return None
    message = (f"this is nanochat's endpoint, which takes no {', '.join(fields)}: the OpenAI API is at "
               "/v1/chat/completions (an OpenAI client's base_url ends in /v1)")
    error = {"message": message, "type": "invalid_request_error", "param": None, "code": None}
    return JSONResponse({"detail": message, "error": error}, status_code=400)


def _text(content, param: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    for j, part in enumerate(content):
        if part.type != "text":
            raise ApiError(400, f"{param}[{j}]: primechat models read text only, got a part of type {part.type!r}",
                           param=f"{param}[{j}]")
    return "\n".join(part.text for part in content)  # as vLLM: parts are blocks (context, then the question)


def check_messages(messages, openai: bool) -> list[dict]:
    """nanochat's limits, then the conversation in the tokenizer's shape: an optional system message, then user and
    assistant alternating (consecutive messages of one role joined), ending with the user's turn. nanochat's endpoint
    takes only that; OpenAI's (openai) takes the orders api.openai.com takes, rendered in that shape:
    - system (or developer) messages: the leading ones are joined into the system message, which the tokenizer folds
      into the first user turn; a later one is read as the user's text where it stands (joined to the user turn
      after it, or before it), as the model has no system role;
    - an assistant message first (a chat app's greeting), or only system messages: see _user_first;
    - an assistant message last: its continuation is asked for (Open WebUI's "Continue Response")."""
    if not messages:
        raise ApiError(400, "messages: at least one message is required", param="messages")
    if len(messages) > MAX_MESSAGES:
        raise ApiError(400, f"messages: at most {MAX_MESSAGES} messages per request, got {len(messages)}",
                       param="messages")
    total = 0
    out = []
    for i, message in enumerate(messages):
        param = f"messages[{i}].content"
        text = _text(message.content, param)
        if not text and message.role != "assistant":  # an assistant turn that only called tools has none
            raise ApiError(400, f"{param}: a message must not be empty", param=param)
        if len(text) > MAX_MESSAGE_CHARS:
            raise ApiError(400, f"{param}: at most {MAX_MESSAGE_CHARS:,} characters per message, got {len(text):,}",
                           param=param)
        total += len(text)
        role = message.role
        if not openai and role not in ("user", "assistant"):  # nanochat's rule; OpenAI's roles are checked by type
            raise ApiError(400, f"messages[{i}].role: must be 'user' or 'assistant', got {role!r}",
                           param=f"messages[{i}].role")
        if role in ("system", "developer"):
            role = "system" if all(m["role"] == "system" for m in out) else "user"
        if out and out[-1]["role"] == role:
            out[-1]["content"] = "\n\n".join(part for part in (out[-1]["content"], text) if part)
        else:
            out.append({"role": role, "content": text})
    if total > MAX_TOTAL_CHARS:
        raise ApiError(400, f"messages: at most {MAX_TOTAL_CHARS:,} characters in all, got {total:,}",
                       param="messages")
    if openai:
        return _user_first(out)
    if out[0]["role"] != "user":
        raise ApiError(400, f"messages: the conversation must start with a user message, got {out[0]['role']!r}",
                       param="messages")
    if out[-1]["role"] != "user":
        raise ApiError(400, f"messages: the last message must be the user's, got {out[-1]['role']!r}",
                       param="messages")
    return out


def _user_first(out: list[dict]) -> list[dict]:
    """A conversation in the tokenizer's shape, user first, when the assistant opens it (a chat app's greeting) or
    there are only system messages. The greeting stays the assistant's own turn, words the model reads as its own
    (folded into the user's text, they would read as the user's); the system message becomes the user turn before it,
    its text where it would be folded anyway, or, with none, that turn is empty: the one turn unlike those the model
    was trained on, and a short one."""
    system = out[0]["content"] if out[0]["role"] == "system" else None
    turns = out[1:] if system is not None else out
    if turns and turns[0]["role"] == "user":
        return out
    return [{"role": "user", "content": system or ""}, *turns]


def _stops(stop) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > MAX_STOPS:
        raise ApiError(400, f"stop: at most {MAX_STOPS} stop sequences, got {len(stops)}", param="stop")
    if any(not s for s in stops):
        raise ApiError(400, "stop: stop sequences must not be empty", param="stop")
    longest = max(stops, key=len, default="")
    if len(longest) > MAX_STOP_CHARS:
        raise ApiError(400, f"stop: at most {MAX_STOP_CHARS} characters per stop sequence, got {len(longest)}",
                       param="stop")
    return stops


def _sampling(body: ServerDefaulted, settings: Settings) -> Sampling:
    """A request's sampling, the server's defaults where it gives none. A nanochat request reads as an OpenAI one
    that leaves out OpenAI's own fields: one reply, no top-p, no stop strings, a fresh seed."""
    openai = body if isinstance(body, SamplingFields) else SamplingFields()
    return Sampling(max_tokens=openai.max_completion_tokens or body.max_tokens or settings.max_tokens,
                    temperature=settings.temperature if body.temperature is None else body.temperature,
                    top_k=settings.top_k if body.top_k is None else max(body.top_k, 0),
                    top_p=openai.top_p, n=openai.n or 1, frequency_penalty=openai.frequency_penalty or 0.0,
                    presence_penalty=openai.presence_penalty or 0.0,
                    seed=random.randint(0, 2**31 - 1) if openai.seed is None else openai.seed % 2**63,
                    stops=_stops(openai.stop))


def _param(loc) -> str | None:
    """A pydantic error location as OpenAI's param: ("body", "messages", 0, "content") -> "messages[0].content"."""
    parts = [p for p in loc if p != "body"]
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        elif p in ("str", "int", "bool") or "[" in str(p) or str(p).startswith("function-"):
            continue  # a union member's name, not a field
        else:
            out += ("." if out else "") + str(p)
    return out or None


def _validation_message(error: dict, param: str | None) -> str:
    """A request's first validation error in words, naming the field; or, for the body as a whole, what it must be."""
    if error.get("type") == "json_invalid":
        return f"the request body is not valid JSON: {error.get('msg')}"
    if param is None:  # the body itself: empty, or not a JSON object (curl -d sends a form unless told otherwise)
        if error.get("type") == "missing":
            return "the request body is empty: send a JSON object (Content-Type: application/json)"
        return "the request body must be a JSON object (Content-Type: application/json)"
    if error.get("type") == "missing":
        return f"{param}: a required field is missing"
    return f"{param}: {error.get('msg')}"


def _key_refusal(header: str) -> str:
    """Why an Authorization header is refused: absent, without its scheme (which may be the right key), or wrong."""
    if not header:
        return "Missing API key: send the header 'Authorization: Bearer <key>'"
    if header.partition(" ")[0].lower() != "bearer":
        return "the Authorization header must read 'Bearer <key>'"
    return "Incorrect API key provided"


class ApiKeyMiddleware:
    """With an API key set, /v1 and /chat/completions want `Authorization: Bearer <key>` (401 otherwise); the page,
    /health and /stats stay open, and CORS preflights pass (they carry no credentials)."""

    def __init__(self, app, key: str, respond):
        self.app, self.key, self.respond = app, key.encode(), respond

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        guarded = path == "/v1" or path.startswith("/v1/") or path == "/chat/completions"
        if scope["type"] == "http" and guarded and scope.get("method") != "OPTIONS":
            header = Request(scope).headers.get("authorization", "")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), self.key):
                message = _key_refusal(header)
                error = ApiError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
                await self.respond(Request(scope), error)(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def disconnected(request: Request) -> None:
    """Returns when the client has gone away: with the body read, the next message the server gives is that."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _sse(obj) -> bytes:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()


def _prompts(prompt) -> list:
    """A text completion's prompts: OpenAI's prompt is a text, token ids, or a list of either (a batch)."""
    if not isinstance(prompt, list) or (prompt and isinstance(prompt[0], int)):
        return [prompt]
    if not 1 <= len(prompt) <= MAX_PROMPTS:
        raise ApiError(400, f"prompt: 1 to {MAX_PROMPTS} prompts per request, got {len(prompt)}", param="prompt")
    return prompt


def _completion_prompt(prompt, ref, param: str, tokenizer) -> list[int]:
    """A text completion's prompt tokens: text, or token ids of the model's tokenizer, after <|bos|>."""
    if isinstance(prompt, str):
        return tokenizer.encode(prompt, prepend="<|bos|>")
    bad = next((token for token in prompt if not 0 <= token < tokenizer.vocab_size), None)
    if bad is not None:
        raise ApiError(400, f"{param}: token id {bad} is not in {ref.id}'s vocabulary (0 to "
                       f"{tokenizer.vocab_size - 1})", param=param)
    bos = tokenizer.encode_special("<|bos|>")  # as a text prompt gets: the models saw it open every text
    return prompt if prompt[:1] == [bos] else [bos, *prompt]


def _reply_head(chat: bool, model: str, created: int) -> dict:
    """The fields a reply, and each chunk of a stream, opens with: system_fingerprint (and service_tier in chat),
    null here, are fields OpenAI always sends, for clients that read them without checking."""
    return {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion" if chat else "text_completion", "created": created, "model": model,
            "system_fingerprint": None, **({"service_tier": None} if chat else {})}


def _choice(chat: bool, index: int, text: str, reason: str | None, streamed: bool) -> dict:
    """One choice of a reply: chat replies carry a message (a delta when streamed), completions plain text."""
    if not chat:
        content = {"text": text}
    elif streamed:
        content = {"delta": {"content": text} if text else {}}
    else:
        content = {"message": {"role": "assistant", "content": text, "refusal": None}}
    return {"index": index, **content, "logprobs": None, "finish_reason": reason}


def whole_reply(chat: bool, model: str, results: list[tuple], created: int) -> dict:
    """A reply as one JSON object from each prompt's (texts, reasons, stats): as OpenAI numbers them, prompt i's j-th
    reply is choice i*n + j, and the usage is summed; timings: the first prompt's time to first token, the last's
    total (both from the request's arrival), the tokens per second over all."""
    replies = [(text, reason) for texts, reasons, _ in results for text, reason in zip(texts, reasons)]
    choices = [_choice(chat, i, text, reason, streamed=False) for i, (text, reason) in enumerate(replies)]
    usage = {key: sum(stats["usage"][key] for *_, stats in results)
             for key in ("prompt_tokens", "completion_tokens", "total_tokens")}
    seconds = sum(stats["usage"]["completion_tokens"] / stats["timings"]["tokens_per_second"]
                  for *_, stats in results if stats["timings"]["tokens_per_second"])
    timings = {"ttft_ms": results[0][2]["timings"]["ttft_ms"],
               "tokens_per_second": round(usage["completion_tokens"] / seconds, 2) if seconds else 0.0,
               "total_ms": results[-1][2]["timings"]["total_ms"]}
    return {**_reply_head(chat, model, created), "choices": choices, "usage": usage, "timings": timings}


# --------------------------------------------------------------------------------------------------------------------
# The app

def create_app(settings: Settings, pool: WorkerPool | None = None) -> FastAPI:
    """The server's app; raises UserError when there is nothing to serve or a named model does not exist."""
    catalog = Catalog(settings.models, settings.model)
    if pool is None:
        pool = WorkerPool(make_workers(settings.num_workers, settings.device_type, settings.max_models_per_worker),
                          settings.max_queue)

    @asynccontextmanager
    async def lifespan(app):
        yield
        pool.shutdown()

    app = FastAPI(title="primechat", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.settings, app.state.catalog, app.state.pool = settings, catalog, pool

    def openai_path(request: Request) -> bool:
        return request.url.path.startswith("/v1/") or request.url.path == "/v1"

    def error_response(request: Request, error: ApiError) -> JSONResponse:
        if openai_path(request):
            content = {"error": {"message": error.message, "type": error.type, "param": error.param,
                                 "code": error.code}}
        else:
            content = {"detail": error.message}
        return JSONResponse(content, status_code=error.status, headers=error.headers)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError):
        return error_response(request, error)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError):
        first = error.errors()[0] if error.errors() else {"loc": (), "msg": "invalid request"}
        param = _param(first.get("loc", ()))
        return error_response(request, ApiError(400, _validation_message(first, param), param=param))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        if openai_path(request):
            code = "not_found" if error.status_code == 404 else None
            return error_response(request, ApiError(error.status_code, f"{request.method} {request.url.path}: "
                                                    f"{error.detail}", code=code, headers=error.headers))
        return JSONResponse({"detail": error.detail}, status_code=error.status_code, headers=error.headers)

    if settings.api_key:
        app.add_middleware(ApiKeyMiddleware, key=settings.api_key, respond=error_response)

    # any page may call the API, also a public one calling a server on this machine or the LAN (Chrome's Private
    # Network Access preflight), and read when to retry a 503
    app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["*"], allow_headers=["*"],
                       allow_private_network=True, expose_headers=["Retry-After"])

    # ---- running a job ----

    async def start(job: Job) -> tuple:
        """Wait for a worker (or be refused), hand it the job, wait until the prompt is ready: (worker, prompt
        tokens). Errors found before any text (unknown model, prompt too long) are raised as ApiError."""
        try:
            worker = await pool.acquire()
        except QueueFull:
            workers = len(pool.workers)
            busy = "the worker is busy" if workers == 1 else f"all {workers} workers are busy"
            waiting = {0: "no request may wait", 1: "1 request is already waiting"}.get(
                pool.max_queue, f"{pool.max_queue} requests are already waiting")
            raise ApiError(503, f"{busy} and {waiting}: retry shortly", type="server_error",
                           code="server_overloaded", headers={"Retry-After": "1"})
        except ShuttingDown:
            raise stopping_error() from None
        worker.submit(job, pool)
        try:
            event = await job.next()
        except BaseException:
            job.cancel()
            raise
        if event[0] == "error":
            raise event[1]
        return worker, event[1]

    async def while_connected(request: Request, work):
        """Await `work` (a coroutine) unless the client goes away first: then cancel it, which takes a request waiting
        for a worker out of the line, or stops its job at the next token. Starlette does this for a streamed response
        but not for a plain one, whose handler would otherwise keep a worker for a reply no one reads."""
        task = asyncio.ensure_future(work)
        gone = asyncio.ensure_future(disconnected(request))
        try:
            done, _ = await asyncio.wait((task, gone), return_when=asyncio.FIRST_COMPLETED)
        finally:  # also when this handler is cancelled
            gone.cancel()
            task.cancel()  # nothing if it has finished
        if task in done:
            return task.result()
        await asyncio.wait((task,))  # its cleanup: out of the line, the job cancelled
        raise ApiError(499, "the client went away")

    async def events(job: Job):
        """The job's events after "ready", up to and including "done" or "error"."""
        while True:
            event = await job.next()
            yield event
            if event[0] in ("done", "error"):
                return

    async def collect(job: Job, n: int) -> tuple[list[str], list[str], dict]:
        texts, reasons = [""] * n, ["length"] * n
        try:
            async for event in events(job):
                if event[0] == "text":
                    texts[event[1]] += event[2]
                elif event[0] == "finish":
                    reasons[event[1]] = event[2]
                elif event[0] == "error":
                    raise event[1]
                elif event[0] == "done":
                    return texts, reasons, event[1]
        finally:
            job.cancel()
        raise ApiError(500, "generation ended without a result", type="server_error")

    def streaming(body) -> StreamingResponse:
        return StreamingResponse(body, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def stream_error(error: ApiError) -> bytes:
        return _sse({"error": {"message": error.message, "type": error.type, "param": error.param,
                               "code": error.code}})

    def stream_reply(job: Job, body, chat: bool, created: int) -> StreamingResponse:
        """The job's reply as SSE chunks ending in [DONE]."""
        n, head = job.sampling.n, _reply_head(chat, job.ref.id, created)
        if chat:
            head["object"] = "chat.completion.chunk"
        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        def chunk(choices, **extra) -> bytes:
            obj = {**head, "choices": choices}
            if include_usage:
                obj["usage"] = None
            return _sse({**obj, **extra})

        async def body_stream():
            try:
                for i in range(n if chat else 0):  # chat streams open each choice with the assistant's role
                    yield chunk([{"index": i, "delta": {"role": "assistant"}, "logprobs": None,
                                  "finish_reason": None}])
                async for event in events(job):
                    if event[0] == "text":
                        yield chunk([_choice(chat, event[1], event[2], None, streamed=True)])
                    elif event[0] == "finish":
                        yield chunk([_choice(chat, event[1], "", event[2], streamed=True)])
                    elif event[0] == "error":
                        yield stream_error(event[1])
                    elif event[0] == "done" and include_usage:
                        yield chunk([], usage=event[1]["usage"], timings=event[1]["timings"])
                yield b"data: [DONE]\n\n"
            finally:
                job.cancel()  # the client went away (or we are done): the worker stops at the next token

        return streaming(body_stream())

    # ---- the page ----

    @app.get("/", include_in_schema=False)
    async def index():
        page = STATIC_DIR / "index.html"
        if not page.is_file():
            raise StarletteHTTPException(404, "the web page is not installed (primechat/serve/static/index.html)")
        return FileResponse(page, headers={"Cache-Control": "no-cache"})

    @app.get("/logo.svg", include_in_schema=False)
    async def logo():  # where nanochat's chat_web serves it (pages written for nanochat link it there)
        return FileResponse(STATIC_DIR / "logo.svg")

    app.mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static")

    # ---- OpenAI-compatible API ----

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [model_card(ref) for ref in catalog.models()]}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str):
        if not name:  # /v1/models/, as a client that builds base + "/models/" asks: the list, not the default's card
            return await list_models()
        return model_card(catalog.lookup(name))

    def model_card(ref) -> dict:
        # the trained context under the names clients read (vLLM's max_model_len, OpenRouter's context_length); a
        # longer prompt is still served, up to the RoPE tables' 10×, as nanochat does, with worse answers
        context = ref.trained_context()
        return {"id": ref.id, "object": "model", "created": ref.created(), "owned_by": "primechat",
                "stage": ref.stage, "tag": ref.tag, "step": ref.step, "chat": ref.chat, "max_model_len": context,
                "context_length": context}

    async def answer(jobs: list[Job], body, chat: bool):
        """An OpenAI request's answer: its whole reply, or once a worker has the prompt ready, its stream. A list of
        prompts has a job each, run one after another, and is not streamed."""
        created = int(time.time())  # when the request came, as OpenAI stamps it, not when the last reply ended
        if body.stream:
            await start(jobs[0])
            return stream_reply(jobs[0], body, chat, created)
        results = []
        for job in jobs:
            await start(job)
            results.append(await collect(job, job.sampling.n))
        return whole_reply(chat, jobs[0].ref.id, results, created)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        started = time.perf_counter()
        ref = catalog.lookup(body.model)
        if not ref.chat:
            raise ApiError(400, f"{ref.id} is a base model: it has no chat format. Use /v1/completions for plain "
                           "text completion, or pick a mid, sft or rl model", param="model", code="model_not_chat")
        refuse_unsupported(body)
        messages = check_messages(body.messages, openai=True)
        sampling = _sampling(body, settings)
        # A conversation that ends with the assistant's message asks for its continuation (Open WebUI's "Continue
        # Response", vLLM's continue_final_message): that turn stays open and the reply holds only what comes next.
        opening = messages.pop()["content"] if messages[-1]["role"] == "assistant" else ""

        def build_prompt(tokenizer):
            try:
                ids = tokenizer.render_for_completion(messages + [{"role": "assistant", "content": ""}])
            except ConversationError as e:
                raise ApiError(400, f"messages: {e}", param="messages") from e
            return ids + tokenizer.encode(opening)

        job = Job(ref, build_prompt, sampling, started)
        return await while_connected(request, answer([job], body, chat=True))

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        started = time.perf_counter()
        ref = catalog.lookup(body.model)
        refuse_unsupported(body)
        prompts = _prompts(body.prompt)
        if len(prompts) > 1 and body.stream:
            raise ApiError(400, "prompt: a list of prompts is answered whole, not streamed: send one prompt per "
                           "streamed request", param="prompt")
        jobs = []
        for i, prompt in enumerate(prompts):
            param = "prompt" if len(prompts) == 1 else f"prompt[{i}]"
            if isinstance(prompt, str) and len(prompt) > MAX_TOTAL_CHARS:
                raise ApiError(400, f"{param}: at most {MAX_TOTAL_CHARS:,} characters, got {len(prompt):,}",
                               param=param)
            sampling = _sampling(body, settings)  # without a seed, each prompt its own
            jobs.append(Job(ref, partial(_completion_prompt, prompt, ref, param), sampling, started,
                            prompt_param=param))
        return await while_connected(request, answer(jobs, body, chat=False))

    # ---- nanochat's endpoints ----

    @app.post("/chat/completions")
    async def nanochat_completions(body: NanochatRequest, request: Request):
        started = time.perf_counter()
        misdirected = misdirected_openai_request(body)
        if misdirected is not None:
            return misdirected
        ref = catalog.lookup(None)
        if not ref.chat:
            raise ApiError(400, f"the default model {ref.id} is a base model, which cannot chat: start the server "
                           "with --model set to a chat model")
        try:
            messages = check_messages(body.messages, openai=False)
        except ApiError as e:
            raise ApiError(400, e.message) from e
        sampling = _sampling(body, settings)

        def build_prompt(tokenizer):
            try:
                return tokenizer.render_for_completion(messages + [{"role": "assistant", "content": ""}])
            except ConversationError as e:
                raise ApiError(400, str(e)) from e

        job = Job(ref, build_prompt, sampling, started)
        worker, _ = await while_connected(request, start(job))

        async def body_stream():
            try:
                async for event in events(job):
                    if event[0] == "text":
                        yield _sse({"token": event[2], "gpu": worker.gpu_id})
                    elif event[0] == "error":
                        yield _sse({"error": event[1].message})
                yield _sse({"done": True})
            finally:
                job.cancel()

        return streaming(body_stream())

    @app.get("/health")
    async def health():
        # the sampling a request that gives none gets (serve -t/-k/-m), for the page to start from
        defaults = {"temperature": settings.temperature, "top_k": settings.top_k, "max_tokens": settings.max_tokens}
        return {"status": "ok", "ready": bool(pool.workers), "num_gpus": len(pool.workers),
                "available_workers": pool.available, "sampling_defaults": defaults}

    @app.get("/stats")
    async def stats():
        return {"total_workers": len(pool.workers), "available_workers": pool.available,
                "busy_workers": len(pool.workers) - pool.available, "queue_length": pool.queued,
                "max_queue": pool.max_queue, "workers": [worker.info() for worker in pool.workers]}

    return app
