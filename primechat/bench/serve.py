"""Serving under load: N clients each streaming chat completions back to back for S seconds.

The server runs in this process on a free loopback port (or give --url of a running one). Each client sends one
request at a time and starts the next as soon as a reply ends. Printed: requests/s over the run, time to first
token (p50, p95: from sending the request to the first text arriving, queueing included), tokens/s per client
while its replies stream (p50), and errors. The last line printed is one JSON document with every figure.
"""

import asyncio
import importlib.util
import json
import statistics
import time

from primechat.common import UserError

PROMPT = "Tell me a story about a robot who learns to paint."


def add_arguments(parser) -> None:
    parser.add_argument("--url", help="a running server (http://host:port); default: start one here")
    parser.add_argument("--model", help="model id or alias (default: the server's default)")
    parser.add_argument("-c", "--clients", type=int, default=4, help="concurrent streaming clients")
    parser.add_argument("-d", "--duration", type=float, default=20.0, help="seconds of load")
    parser.add_argument("-m", "--max-tokens", type=int, default=128, help="tokens per reply")
    parser.add_argument("--api-key", help="for a --url server that wants one")
    parser.add_argument("-n", "--num-gpus", type=int, help="workers of the in-process server (default: every GPU)")
    parser.add_argument("--device-type", choices=["cuda", "mps", "cpu"], help="in-process server; default: autodetect")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def one_client(http, url: str, body: dict, deadline: float, results: dict) -> None:
    while time.perf_counter() < deadline:
        sent = time.perf_counter()
        first, tokens = None, 0
        try:
            async with http.stream("POST", url + "/v1/chat/completions", json=body) as r:
                if r.status_code != 200:
                    await r.aread()
                    results["errors"].append(f"HTTP {r.status_code}")
                    await asyncio.sleep(0.1)
                    continue
                async for line in r.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[len("data: "):])
                    if "error" in chunk:
                        results["errors"].append(chunk["error"].get("message", "error"))
                        break
                    if chunk.get("usage"):
                        tokens = chunk["usage"]["completion_tokens"]
                    for choice in chunk.get("choices", []):
                        if choice.get("delta", {}).get("content") and first is None:
                            first = time.perf_counter()
        except Exception as e:  # a dropped connection counts as an error, and the client goes on
            results["errors"].append(f"{type(e).__name__}: {e}")
            continue
        end = time.perf_counter()
        results["requests"] += 1
        if first is not None:
            results["ttft"].append(first - sent)
            if tokens > 1 and end > first:
                results["rates"].append((tokens - 1) / (end - first))


async def run_load(url: str, args) -> dict:
    import httpx

    body = {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": args.max_tokens, "stream": True,
            "stream_options": {"include_usage": True}}
    if args.model:
        body["model"] = args.model
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    results = {"requests": 0, "ttft": [], "rates": [], "errors": []}
    limits = httpx.Limits(max_connections=args.clients + 2)
    async with httpx.AsyncClient(timeout=httpx.Timeout(120.0), limits=limits, headers=headers) as http:
        health = await http.get(url + "/health")
        health.raise_for_status()
        # one request first, so that model loading is not counted as serving time
        warm = await http.post(url + "/v1/chat/completions", json={**body, "stream": False, "max_tokens": 1})
        if warm.status_code != 200:
            raise UserError(f"the server refused a request: HTTP {warm.status_code} {warm.text[:200]}")
        start = time.perf_counter()
        await asyncio.gather(*(one_client(http, url, body, start + args.duration, results)
                               for _ in range(args.clients)))
        elapsed = time.perf_counter() - start
        model = warm.json()["model"]
    return {"model": model, "clients": args.clients, "duration_s": round(elapsed, 2),
            "requests": results["requests"], "requests_per_s": round(results["requests"] / elapsed, 3),
            "ttft_p50_ms": round(percentile(results["ttft"], 0.5) * 1000, 1),
            "ttft_p95_ms": round(percentile(results["ttft"], 0.95) * 1000, 1),
            "tokens_per_s_p50": round(statistics.median(results["rates"]), 1) if results["rates"] else None,
            "errors": len(results["errors"]), "error_examples": sorted(set(results["errors"]))[:3]}


def main(args) -> None:
    if importlib.util.find_spec("httpx") is None:
        raise UserError("bench serve needs httpx: pip install httpx")
    if args.clients < 1 or args.duration <= 0 or args.max_tokens < 1:
        raise UserError("--clients and --max-tokens must be >= 1 and --duration > 0")
    if args.url:
        figures = asyncio.run(run_load(args.url.rstrip("/"), args))
    else:
        import torch

        from primechat.common import autodetect_device, compute_init
        from primechat.serve.api import Settings, create_app
        from primechat.serve.server import ServerThread

        device_type = args.device_type or autodetect_device()
        compute_init(device_type)
        workers = args.num_gpus or (torch.cuda.device_count() if device_type == "cuda" else 1)
        app = create_app(Settings(model=args.model, num_workers=workers, device_type=device_type,
                                  max_queue=max(32, args.clients), max_tokens=args.max_tokens))
        with ServerThread(app) as server:
            figures = asyncio.run(run_load(server.url, args))
        figures["workers"] = workers
    print(f"model {figures['model']} · {args.clients} clients · {figures['duration_s']} s · "
          f"{args.max_tokens} tokens per reply")
    print(f"requests        {figures['requests']} ({figures['requests_per_s']:.2f}/s)")
    print(f"TTFT            p50 {figures['ttft_p50_ms']:.0f} ms · p95 {figures['ttft_p95_ms']:.0f} ms")
    rate = figures["tokens_per_s_p50"]
    print(f"tokens/s        p50 {rate if rate is not None else '-'} per client")
    print(f"errors          {figures['errors']}" + (f" (e.g. {figures['error_examples'][0]})"
                                                      if figures["errors"] else ""))
    print(json.dumps(figures))


if __name__ == "__main__":
    from primechat.cli import run_module
    run_module(add_arguments, main)
