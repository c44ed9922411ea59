"""Serve the saved models: a ChatGPT-like web page at / and an OpenAI-compatible API at /v1.

Every checkpoint in the home folder is offered as a model "stage/tag/step" (GET /v1/models); "stage/tag" and
"stage" name the latest; --model (or nanochat's -i/-g/-s) picks the default. One worker per GPU (or one on the CPU /
MPS) loads models on first use and keeps the most recent --max-models-per-worker of them; requests wait for a free
worker, at most --max-queue of them, and the next is told to retry (503). Any OpenAI client works:

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
    client.chat.completions.create(model="sft", messages=[{"role": "user", "content": "Hi!"}])
"""

import errno
import os
import socket
import threading
import time

from pydantic import ValidationError

from primechat.common import UserError, autodetect_device, compute_init
from primechat.serve.api import ServerDefaulted, Settings, create_app
from primechat.train.checkpoint import STAGE_DIRS, default_tag


def add_arguments(parser) -> None:
    parser.add_argument("--models", help="serve only these models: comma-separated ids or aliases "
                        "(sft/d20/650, sft/d20, sft); default: every checkpoint")
    parser.add_argument("--model", help="the default model (id or alias); default: the latest of sft, rl, mid, base")
    # nanochat's chat_web flags for the default model: another spelling of --model stage/tag/step
    parser.add_argument("-i", "--source", choices=tuple(STAGE_DIRS), help="the default model's stage (as --model; "
                        "with -g or -s alone: sft, nanochat's default)")
    parser.add_argument("-g", "--model-tag", help="the default model's tag (default: the stage's deepest d<N>)")
    parser.add_argument("-s", "--step", type=int, help="the default model's step (default: the latest)")
    parser.add_argument("-n", "--num-gpus", type=int, help="workers, one per GPU (default: every visible GPU; "
                        "on the CPU or MPS: 1)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("-p", "--port", type=int, default=8000, help="port to listen on (0: a free one)")
    parser.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on the API "
                        "(default: $PRIMECHAT_API_KEY; unset: no key; --api-key '': no key, whatever the variable)")
    parser.add_argument("-t", "--temperature", type=float, default=Settings.temperature,
                        help="when a request gives none")
    parser.add_argument("-k", "--top-k", type=int, default=Settings.top_k, help="when a request gives none (0 = off)")
    parser.add_argument("-m", "--max-tokens", type=int, default=Settings.max_tokens, help="when a request gives none")
    parser.add_argument("--max-queue", type=int, default=Settings.max_queue, help="requests that may wait for a "
                        "busy worker; more are answered 503 with Retry-After")
    parser.add_argument("--max-models-per-worker", type=int, default=Settings.max_models_per_worker,
                        help="models each worker keeps loaded (least recently used out first)")
    parser.add_argument("--device-type", choices=["cuda", "mps", "cpu"], help="default: autodetect")


def default_model(args) -> str | None:
    """The name of the default model: --model, or the one -i/-g/-s spell, "stage/tag/step" with what is left out
    defaulted as --model's aliases do (stage: sft; tag: the stage's deepest; step: the latest)."""
    if args.source is None and args.model_tag is None and args.step is None:
        return args.model
    if args.model:
        raise UserError(f"--model {args.model} and -i/-g/-s both choose the default model: give one or the other")
    stage = args.source or "sft"
    if args.step is None:
        return "/".join(filter(None, (stage, args.model_tag)))
    return f"{stage}/{args.model_tag or default_tag(stage)}/{args.step}"


def settings_from_args(args) -> Settings:
    sampling = dict(temperature=args.temperature, top_k=args.top_k, max_tokens=args.max_tokens)
    try:  # a default must be a value a request could give: checked against the API's own bounds
        ServerDefaulted(**sampling)
    except ValidationError as e:
        error = e.errors()[0]
        raise UserError(f"--{error['loc'][0].replace('_', '-')} {error['input']}: {error['msg']}") from None
    if args.max_queue < 0 or args.max_models_per_worker < 1:
        raise UserError("--max-queue must be >= 0 and --max-models-per-worker >= 1")
    device_type = args.device_type or autodetect_device()
    if args.num_gpus is not None:
        if args.num_gpus < 1:
            raise UserError("--num-gpus must be >= 1")
        num_workers = args.num_gpus
    elif device_type == "cuda":
        import torch
        num_workers = torch.cuda.device_count()
    else:
        num_workers = 1
    models = [name.strip() for name in args.models.split(",") if name.strip()] if args.models else None
    return Settings(models=models, model=default_model(args), num_workers=num_workers, device_type=device_type,
                    max_queue=args.max_queue, max_models_per_worker=args.max_models_per_worker,
                    api_key=api_key(args), **sampling)


def api_key(args) -> str | None:
    """--api-key, or else $PRIMECHAT_API_KEY; an empty one (--api-key '') means no key."""
    key = args.api_key if args.api_key is not None else os.environ.get("PRIMECHAT_API_KEY")
    return key or None


class ServerThread:
    """A uvicorn server for `app` in a background thread (port 0: a free one), for tests and `bench serve`:

        with ServerThread(app) as server:
            httpx.get(server.url + "/health")
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        self.server = uvicorn_server(app, host=host, port=port, log_level="warning")
        self.thread = threading.Thread(target=self.server.run, daemon=True, name="primechat-uvicorn")
        self.url = None

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)


def uvicorn_server(app, **config):
    """A uvicorn server for `app` whose shutdown (Ctrl-C, SIGTERM) first ends the replies being written and turns
    away the requests waiting for a worker. uvicorn waits for open connections before the app's own shutdown, so a
    stream would otherwise hold it until timeout_graceful_shutdown, then be cancelled with a traceback; that timeout
    is left for what cannot stop at once (a model loading)."""
    import uvicorn

    class Server(uvicorn.Server):
        async def shutdown(self, sockets=None):
            app.state.pool.close()
            await super().shutdown(sockets)

    return Server(uvicorn.Config(app, timeout_graceful_shutdown=5, **config))


def listening_socket(host: str, port: int) -> socket.socket:
    """Bound before anything else, so a busy port is one line at once rather than uvicorn's error after the banner."""
    try:
        return socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise UserError(f"port {port} on {host} is already in use (another server?): pick another with "
                            f"--port") from None
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror or e}): check --host and --port") from None


def main(args) -> None:
    settings = settings_from_args(args)
    sock = listening_socket(args.host, args.port)
    compute_init(settings.device_type)  # checks the device, sets TF32 matmuls on CUDA
    app = create_app(settings)
    default = app.state.catalog.default()
    count = len(app.state.catalog.models())
    shown = "localhost" if args.host in ("0.0.0.0", "::") else args.host
    port = sock.getsockname()[1]  # --port 0: the free port the system gave
    print(f"primechat serve: http://{shown}:{port}/  (OpenAI API: http://{shown}:{port}/v1)")
    print(f"{count} model{'s' if count != 1 else ''}, default {default.id if default else '-'} · "
          f"{settings.num_workers} worker{'s' if settings.num_workers != 1 else ''} on {settings.device_type}"
          f"{' · API key required' if settings.api_key else ''}", flush=True)
    uvicorn_server(app, log_level="info").run(sockets=[sock])


if __name__ == "__main__":
    from primechat.cli import run_module
    run_module(add_arguments, main)
