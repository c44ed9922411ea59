"""`primechat serve`: a web page and an OpenAI-compatible API over the saved checkpoints.

    server.py    the command: flags, the worker pool, uvicorn
    api.py       the FastAPI app: /v1/models, /v1/chat/completions, /v1/completions, nanochat's /chat/completions,
                 /health, /stats, the page (static/)
    workers.py   the checkpoint catalog, one worker per GPU with its own thread and model cache, the wait queue,
                 generation jobs (stop strings, UTF-8-safe streaming, timings)
"""
