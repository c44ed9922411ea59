"""The chat page (primechat/serve/static/) in a real browser: Debian's chromium driven by Playwright.

The page talks to a scripted fake of `primechat serve` started here (http.server on a loopback port): it serves the
static folder like the real server and answers the OpenAI-compatible API with canned streams, recording every request
and every client that hangs up mid-stream. The reply depends on the last user message:

    "code ..."  a markdown answer with a python code block
    "xss ..."   an answer holding <script>, <img onerror> and a javascript: link, which must stay inert
    "slow ..."  200 pieces, 50 ms apart (for the stop button)
    "sum ..."   a GSM8K-style answer ending in the line "#### 42"
    otherwise   "Hello from <model>! You said: <text>. Reply number <n>."

Run as a script (`python tests/test_serve_page.py`) it writes docs/screenshots/chat-{light,dark}.png.
"""

import json
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
STATIC = REPO_ROOT / "primechat" / "serve" / "static"
CHROMIUM = "/usr/bin/chromium"
MODELS = [
    {"id": "sft/d20/650", "object": "model", "owned_by": "primechat", "stage": "sft", "tag": "d20", "step": 650, "chat": True},
    {"id": "mid/d20/800", "object": "model", "owned_by": "primechat", "stage": "mid", "tag": "d20", "step": 800, "chat": True},
    {"id": "base/d20/21400", "object": "model", "owned_by": "primechat", "stage": "base", "tag": "d20", "step": 21400, "chat": False},
]
PROMPT_TOKENS = 11
TIMINGS = {"ttft_ms": 25.0, "tokens_per_second": 42.5, "total_ms": 310.0}
CODE_REPLY = "Here is a function:\n\n```python\ndef add(a, b):\n    return a + b\n```\n\nCall `add(1, 2)`."
XSS_REPLY = ('Careful <script>window.__pwned = 1; alert("script")</script> and '
             '<img src="x" onerror="window.__pwned = 2; alert(\'img\')"> and '
             '[a link](javascript:window.__pwned=3) and <b onmouseover="window.__pwned=4">bold</b> end.')
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png"}


# ---------------------------------------------------------------------------------------------------- the fake server

class FakeServer:
    """A thread running http.server on 127.0.0.1 with the API contract of primechat serve, scripted."""

    def __init__(self):
        self.requests: list[dict] = []  # {"path", "body"} of every POST
        self.disconnects = 0  # streams the client hung up on
        self.healthy = True
        self.sampling_defaults = None  # what GET /health says `primechat serve -t/-k/-m` set, when a test sets it
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def send_json(self, status, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                path = self.path.split("?")[0]
                if path == "/health":
                    if fake.healthy:
                        extra = {"sampling_defaults": fake.sampling_defaults} if fake.sampling_defaults else {}
                        return self.send_json(200, {"status": "ok", "ready": True, **extra})
                    return self.send_json(503, {"error": {"message": "no workers"}})
                if path == "/v1/models":
                    return self.send_json(200, {"object": "list", "data": MODELS})
                file = STATIC / "index.html" if path == "/" else STATIC / path.removeprefix("/static/")
                file = file.resolve()
                if not path.startswith(("/static/", "/")) or STATIC not in file.parents or not file.is_file():
                    return self.send_json(404, {"error": {"message": "not found"}})
                data = file.read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPES.get(file.suffix, "application/octet-stream"))
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    fake.requests.append({"path": self.path, "body": body})
                    number = len(fake.requests)
                if self.path not in ("/v1/chat/completions", "/v1/completions"):
                    return self.send_json(404, {"error": {"message": "not found"}})
                if body.get("model") not in [m["id"] for m in MODELS]:
                    return self.send_json(404, {"error": {"message": f"model {body.get('model')!r} not found"}})
                chat = self.path == "/v1/chat/completions"
                text = body["messages"][-1]["content"] if chat else body["prompt"]
                delay = 0.01
                if text.startswith("code"):
                    reply = CODE_REPLY
                elif text.startswith("xss"):
                    reply = XSS_REPLY
                elif text.startswith("slow"):
                    reply, delay = " ".join(f"word{i}" for i in range(200)), 0.05
                elif text.startswith("sum"):
                    reply = "40 + 2 = 42.\n#### 42"
                elif text.startswith("fail"):
                    return self.send_json(400, {"error": {"message": "the fake server refuses this", "type": "invalid_request_error"}})
                else:
                    reply = f"Hello from {body['model']}! You said: {text}. Reply number {number}."
                pieces = re.findall(r"\s*\S+\s*", reply)
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()

                def chunk(piece=None, finish=None, **extra):
                    if chat:
                        choice = {"index": 0, "delta": {} if piece is None else {"content": piece}, "finish_reason": finish}
                        event = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": body["model"], "choices": [choice]}
                    else:
                        choice = {"index": 0, "text": piece or "", "finish_reason": finish}
                        event = {"id": "cmpl-1", "object": "text_completion", "created": 0, "model": body["model"], "choices": [choice]}
                    event.update(extra)
                    self.wfile.write(b"data: " + json.dumps(event).encode() + b"\n\n")
                    self.wfile.flush()

                try:
                    if chat:
                        self.wfile.write(b"data: " + json.dumps({"object": "chat.completion.chunk", "model": body["model"], "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}).encode() + b"\n\n")
                    for piece in pieces:
                        time.sleep(delay)
                        chunk(piece)
                    chunk(finish="stop")
                    usage = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": len(pieces), "total_tokens": PROMPT_TOKENS + len(pieces)}
                    self.wfile.write(b"data: " + json.dumps({"object": "chat.completion.chunk", "model": body["model"], "choices": [], "usage": usage, "timings": TIMINGS}).encode() + b"\n\n")
                    self.wfile.write(b"data: [DONE]\n\n")
                except (BrokenPipeError, ConnectionResetError):
                    with fake.lock:
                        fake.disconnects += 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


# ---------------------------------------------------------------------------------------------------- fixtures

def launch_browser(playwright):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: the chat page tests need Debian's chromium (apt-get install chromium)")
    return playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = launch_browser(p)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server():
    fake = FakeServer()
    yield fake
    fake.close()


@pytest.fixture
def page(browser, server):
    """A fresh context (so empty localStorage) with clipboard access, on the chat page, models loaded."""
    server.requests.clear()
    server.healthy, server.sampling_defaults = True, None
    context = browser.new_context(base_url=server.url, viewport={"width": 1280, "height": 800})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
    page = context.new_page()
    page.dialogs = []

    def on_dialog(dialog):
        page.dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.errors = []
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    open_page(page)
    yield page
    assert page.errors == [], page.errors
    context.close()


def open_page(page):
    page.goto("/")
    page.wait_for_function("document.querySelectorAll('#model option').length === 3")


def send(page, text):
    page.fill("#input", text)
    page.press("#input", "Enter")


def wait_answer(page, count):
    """Wait until `count` answers are on the page and none is streaming; return the last one."""
    from playwright.sync_api import expect
    answers = page.locator(".msg.assistant")
    expect(answers).to_have_count(count)
    expect(page.locator(".msg.assistant.streaming")).to_have_count(0)
    expect(page.locator("#send")).to_be_visible()
    return answers.last


def stat(answer, key):
    return answer.locator(f'.stats [data-stat="{key}"] b').inner_text()


# ---------------------------------------------------------------------------------------------------- tests

def test_send_streams_answer_with_stats(page, server):
    from playwright.sync_api import expect
    expect(page.locator("#welcome")).to_be_visible()
    send(page, "hello there")
    answer = wait_answer(page, 1)
    expect(answer.locator(".bubble")).to_have_text("Hello from sft/d20/650! You said: hello there. Reply number 1.")
    expect(page.locator(".msg.user .bubble")).to_have_text("hello there")
    expect(page.locator("#welcome")).to_be_hidden()
    # the request follows the contract
    request = server.requests[-1]
    assert request["path"] == "/v1/chat/completions"
    body = request["body"]
    assert body["model"] == "sft/d20/650" and body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["messages"] == [{"role": "user", "content": "hello there"}]
    assert body["temperature"] == 0.8 and body["top_k"] == 50 and body["max_tokens"] == 512
    # stats for nerds: the server's measured figures and usage
    pieces = len(re.findall(r"\s*\S+\s*", "Hello from sft/d20/650! You said: hello there. Reply number 1."))
    assert stat(answer, "ttft") == "25 ms"
    assert float(stat(answer, "tps")) == 42.5
    assert stat(answer, "prompt") == str(PROMPT_TOKENS)
    assert stat(answer, "completion") == str(pieces)
    assert stat(answer, "total") == str(PROMPT_TOKENS + pieces)
    assert stat(answer, "finish") == "stop"
    assert stat(answer, "model") == "sft/d20/650"
    expect(answer.locator(".model-label")).to_have_text("sft/d20/650")
    # the stats toggle hides them, and is remembered
    page.click("#toggle-stats")
    expect(answer.locator(".stats")).to_be_hidden()
    page.reload()
    expect(page.locator(".msg.assistant .stats")).to_be_hidden()
    page.click("#toggle-stats")
    expect(page.locator(".msg.assistant .stats")).to_be_visible()


def test_second_turn_sends_history_and_system_prompt(page, server):
    from playwright.sync_api import expect
    page.click("#open-settings")
    page.fill("#set-system", "Be brief.")
    page.fill("#set-max-tokens", "64")
    page.locator("#set-max-tokens").dispatch_event("change")
    page.click("#close-settings")
    send(page, "one")
    wait_answer(page, 1)
    send(page, "two")
    wait_answer(page, 2)
    messages = server.requests[-1]["body"]["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[0]["content"] == "Be brief." and messages[2]["content"].startswith("Hello from")
    assert server.requests[-1]["body"]["max_tokens"] == 64
    # Shift+Enter is a new line, not a send
    page.fill("#input", "line one")
    page.press("#input", "Shift+Enter")
    page.keyboard.type("line two")
    assert page.input_value("#input") == "line one\nline two"
    expect(page.locator(".msg.user")).to_have_count(2)


def test_copy_message_and_code_block(page):
    send(page, "code please")
    answer = wait_answer(page, 1)
    answer.locator(".copy-code").click()
    assert page.evaluate("navigator.clipboard.readText()") == "def add(a, b):\n    return a + b\n"
    answer.locator(".msg-actions .copy-msg").click()
    assert page.evaluate("navigator.clipboard.readText()") == CODE_REPLY
    page.locator(".msg.user").hover()
    page.locator(".msg.user .copy-msg").click()
    assert page.evaluate("navigator.clipboard.readText()") == "code please"


def test_markdown_renders_highlighted_code(page):
    send(page, "code please")
    answer = wait_answer(page, 1)
    code = answer.locator(".code-block pre code")
    assert "hljs" in code.get_attribute("class") and "language-python" in code.get_attribute("class")
    assert code.locator("span.hljs-keyword").first.inner_text() == "def"
    assert answer.locator(".code-head span").first.inner_text() == "python"
    assert answer.locator("p code").inner_text() == "add(1, 2)"  # inline code
    # highlighted in the theme's colours: a keyword is not the plain text colour
    colors = code.evaluate("c => [getComputedStyle(c.querySelector('.hljs-keyword')).color, getComputedStyle(c).color]")
    assert colors[0] != colors[1]


def test_model_output_cannot_run_script(page):
    send(page, "xss attempt")
    answer = wait_answer(page, 1)
    assert "Careful" in answer.inner_text() and "end." in answer.inner_text()
    answer.locator(".bubble b").hover()
    page.wait_for_timeout(200)  # time for an <img onerror> to have fired
    assert page.evaluate("window.__pwned") is None
    assert page.dialogs == []
    bubble = answer.locator(".bubble")
    assert bubble.locator("script, img, [onerror], [onmouseover]").count() == 0
    assert "javascript:" not in (bubble.locator("a").get_attribute("href") or "")
    # the user's own text is never HTML either
    send(page, "<img src=x onerror=window.__pwned=5>")
    wait_answer(page, 2)
    assert page.evaluate("window.__pwned") is None and page.locator(".msg.user img").count() == 0


def test_model_picker_switches_models(page, server):
    from playwright.sync_api import expect
    send(page, "first")
    expect(wait_answer(page, 1).locator(".model-label")).to_have_text("sft/d20/650")
    page.select_option("#model", "mid/d20/800")
    send(page, "second")
    second = wait_answer(page, 2)
    assert server.requests[-1]["body"]["model"] == "mid/d20/800"
    expect(second.locator(".bubble")).to_contain_text("Hello from mid/d20/800!")
    expect(second.locator(".model-label")).to_have_text("mid/d20/800")
    assert stat(second, "model") == "mid/d20/800"
    expect(page.locator(".msg.assistant").first.locator(".model-label")).to_have_text("sft/d20/650")  # keeps its writer
    # a base model completes text through /v1/completions
    page.select_option("#model", "base/d20/21400")
    send(page, "Once upon a time")
    third = wait_answer(page, 3)
    assert server.requests[-1]["path"] == "/v1/completions"
    assert server.requests[-1]["body"]["prompt"] == "Once upon a time"
    expect(third.locator(".model-label")).to_have_text("base/d20/21400")
    # the choice belongs to the conversation: it survives a reload, a new chat starts on the last one picked
    page.reload()
    page.wait_for_function("document.querySelectorAll('#model option').length === 3")
    assert page.input_value("#model") == "base/d20/21400"


def test_edit_user_message(page, server):
    from playwright.sync_api import expect
    send(page, "alpha")
    wait_answer(page, 1)
    send(page, "beta")
    wait_answer(page, 2)
    page.locator(".msg.user .bubble").first.click()  # nanochat: click a question to edit it
    assert page.input_value("#input") == "alpha"
    expect(page.locator(".msg")).to_have_count(0)
    page.fill("#input", "alpha edited")
    page.press("#input", "Enter")
    answer = wait_answer(page, 1)
    expect(answer.locator(".bubble")).to_contain_text("You said: alpha edited.")
    assert server.requests[-1]["body"]["messages"] == [{"role": "user", "content": "alpha edited"}]
    # the Edit button does the same
    page.locator(".msg.user").hover()
    page.locator(".msg.user .edit-msg").click()
    assert page.input_value("#input") == "alpha edited"


def test_regenerate_answer(page, server):
    from playwright.sync_api import expect
    send(page, "again")
    first = wait_answer(page, 1)
    expect(first.locator(".bubble")).to_contain_text("Reply number 1.")
    first.locator(".regen-msg").click()
    answer = wait_answer(page, 1)
    expect(answer.locator(".bubble")).to_contain_text("Reply number 2.")
    assert server.requests[-1]["body"]["messages"] == server.requests[-2]["body"]["messages"]
    page.locator(".msg.assistant .bubble").click()  # nanochat: click an answer to write it again
    answer = wait_answer(page, 1)
    expect(answer.locator(".bubble")).to_contain_text("Reply number 3.")
    expect(page.locator(".msg.user")).to_have_count(1)


def test_stop_aborts_the_stream(page, server):
    from playwright.sync_api import expect
    before = server.disconnects
    send(page, "slow please")
    expect(page.locator("#stop")).to_be_visible()
    expect(page.locator(".msg.assistant .bubble")).to_contain_text("word3")
    expect(page.locator(".msg.assistant .stats")).to_contain_text("tok/s")  # a live estimate while streaming
    page.click("#stop")
    answer = wait_answer(page, 1)
    deadline = time.time() + 5
    while server.disconnects == before and time.time() < deadline:
        time.sleep(0.05)
    assert server.disconnects == before + 1, "the server never saw the client hang up"
    text = answer.locator(".bubble").inner_text()
    assert "word0" in text and "word199" not in text and "(stopped)" in text
    assert stat(answer, "finish") == "stopped"
    # the page is usable again
    send(page, "after stop")
    answer = wait_answer(page, 2)
    expect(answer.locator(".bubble")).to_contain_text("You said: after stop.")


def test_reload_keeps_conversations_and_sidebar(page):
    from playwright.sync_api import expect
    send(page, "remember me")
    wait_answer(page, 1)
    page.click("#new-chat")
    expect(page.locator(".msg")).to_have_count(0)
    send(page, "second chat")
    wait_answer(page, 1)
    page.reload()
    expect(page.locator(".msg.user .bubble")).to_have_text("second chat")
    items = page.locator("#conversations .conv-item")
    expect(items).to_have_count(2)
    expect(items.first).to_have_class(re.compile("active"))
    page.locator("#conversations .conv-open", has_text="remember me").click()
    expect(page.locator(".msg.user .bubble")).to_have_text("remember me")
    expect(page.locator(".msg.assistant .bubble")).to_contain_text("You said: remember me.")
    expect(page.locator(".msg.assistant .stats [data-stat=tps]")).to_be_visible()  # stats survive too
    page.locator("#conversations .conv-item.active .conv-delete").click()
    expect(items).to_have_count(1)
    expect(page.locator(".msg.user .bubble")).to_have_text("second chat")
    page.reload()
    expect(page.locator("#conversations .conv-item")).to_have_count(1)


def test_slash_commands(page, server):
    from playwright.sync_api import expect
    send(page, "/help")
    expect(page.locator(".msg.console").last).to_contain_text("/temperature")
    send(page, "/temperature 0.3")
    expect(page.locator(".msg.console").last).to_contain_text("Temperature set to 0.3")
    send(page, "/topk 0")
    expect(page.locator(".msg.console").last).to_contain_text("Top-k is off")
    send(page, "/temperature 7")
    expect(page.locator(".msg.console").last).to_contain_text("from 0 to 2")
    send(page, "/model 2")
    expect(page.locator(".msg.console").last).to_contain_text("mid/d20/800")
    assert server.requests == []  # commands never reach the server
    send(page, "hi")
    wait_answer(page, 1)
    body = server.requests[-1]["body"]
    assert body["temperature"] == 0.3 and body["top_k"] == 0 and body["model"] == "mid/d20/800"
    assert body["messages"] == [{"role": "user", "content": "hi"}]  # console notes are not sent
    send(page, "/clear")
    expect(page.locator(".msg.user")).to_have_count(0)
    expect(page.locator(".msg.console")).to_have_text(["Conversation cleared."])
    send(page, "/nonsense")
    expect(page.locator(".msg.console").last).to_contain_text("Unknown command")


def test_errors_and_engine_not_running(page, server):
    from playwright.sync_api import expect
    send(page, "fail now")
    expect(page.locator("#error")).to_be_visible()
    expect(page.locator("#error-text")).to_have_text("the fake server refuses this")
    expect(page.locator(".msg.assistant")).to_have_count(0)
    expect(page.locator("#send")).to_be_visible()
    # the question goes back into the input, so that sending it again does not send it twice
    expect(page.locator(".msg.user")).to_have_count(0)
    assert page.input_value("#input") == "fail now"
    send(page, "fail again")
    expect(page.locator(".msg.user")).to_have_count(0)
    assert server.requests[-1]["body"]["messages"] == [{"role": "user", "content": "fail again"}]
    server.healthy = False
    page.reload()
    expect(page.locator("#error-text")).to_contain_text("Engine not running")


def test_sampling_defaults_come_from_the_server_until_changed_here(page, server):
    server.sampling_defaults = {"temperature": 0.3, "top_k": 7, "max_tokens": 99}  # primechat serve -t 0.3 -k 7 -m 99
    # then what this browser changes wins, and is remembered across reloads
    for turn, (command, expected) in enumerate([(None, (0.3, 7, 99)), ("/temperature 1.1", (1.1, 7, 99))], 1):
        if command:
            send(page, command)
        page.reload()
        page.wait_for_function("document.getElementById('set-topk').value === '7'")
        send(page, f"turn {turn}")
        wait_answer(page, turn)
        body = server.requests[-1]["body"]
        assert (body["temperature"], body["top_k"], body["max_tokens"]) == expected


def test_gsm8k_answer_line_is_text_not_a_heading(page):
    from playwright.sync_api import expect
    send(page, "sum 40 and 2")
    answer = wait_answer(page, 1)
    expect(answer.locator(".bubble h4")).to_have_count(0)
    expect(answer.locator(".bubble")).to_contain_text("#### 42")


def test_theme_toggle_and_phone_layout(page, browser, server):
    from playwright.sync_api import expect
    theme = page.evaluate("document.documentElement.dataset.theme")
    page.click("#toggle-theme")
    other = "light" if theme == "dark" else "dark"
    assert page.evaluate("document.documentElement.dataset.theme") == other
    page.reload()
    assert page.evaluate("document.documentElement.dataset.theme") == other
    # prefers-color-scheme is followed while the setting is "auto"
    context = browser.new_context(base_url=server.url, color_scheme="dark", viewport={"width": 390, "height": 844},
                                  is_mobile=True, has_touch=True)
    try:
        phone = context.new_page()
        open_page(phone)
        assert phone.evaluate("document.documentElement.dataset.theme") == "dark"
        expect(phone.locator("#sidebar")).not_to_be_in_viewport()
        expect(phone.locator("#open-settings")).to_be_in_viewport(ratio=1)
        phone.click("#open-sidebar")
        expect(phone.locator("#sidebar")).to_be_in_viewport()
        phone.click("#close-sidebar")
        phone.fill("#input", "hello from a phone")
        phone.click("#send")
        wait_answer(phone, 1)
        assert phone.evaluate("document.scrollingElement.scrollWidth") <= 390
        box = phone.locator("#composer").bounding_box()
        assert box["y"] + box["height"] <= 844
    finally:
        context.close()


def test_real_server_with_a_tiny_model(browser, tmp_path, monkeypatch):
    """The page on `primechat serve`'s real app (ServerThread) with tiny random checkpoints sft/d2/5 and base/d2/5,
    behind an API key: the page asks for it, then streams an answer with the server's own stats."""
    import torch
    from playwright.sync_api import expect

    from primechat.serve.api import Settings, create_app
    from primechat.serve.server import ServerThread
    from primechat.train.checkpoint import checkpoint_dir, save_checkpoint
    from test_chat_cli import tiny_model, tiny_tokenizer

    monkeypatch.setenv("PRIMECHAT_HOME", str(tmp_path))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    tokenizer = tiny_tokenizer()
    tokenizer.save(tmp_path / "tokenizer")
    model = tiny_model(tokenizer.vocab_size)
    for stage in ("sft", "base"):
        save_checkpoint(checkpoint_dir(stage, "d2"), 5, model.state_dict(), {"step": 5, "model_config": model.config.to_dict()})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        with ServerThread(create_app(Settings(api_key="sesame", max_tokens=8))) as server:
            real = context.new_page()
            errors = []
            real.on("pageerror", lambda error: errors.append(str(error)))
            real.goto(server.url + "/")
            expect(real.locator("#error-text")).to_contain_text("API key")
            assert real.locator("#model option").all_text_contents() == ["no models"]
            expect(real.locator("#model")).to_be_disabled()
            real.click("#open-settings")
            real.fill("#set-api-key", "sesame")
            real.locator("#set-api-key").dispatch_event("change")
            real.wait_for_function("document.querySelectorAll('#model option').length === 2")
            assert real.input_value("#model") == "sft/d2/5"
            real.click("#close-settings")
            send(real, "hello there")  # the page takes max_tokens 8 from the server's settings
            answer = wait_answer(real, 1)
            expect(real.locator("#error")).to_be_hidden()
            completion = int(stat(answer, "completion"))
            assert 1 <= completion <= 8 and int(stat(answer, "prompt")) > 0
            assert int(stat(answer, "total")) == int(stat(answer, "prompt")) + completion
            assert float(stat(answer, "tps")) > 0 and stat(answer, "ttft").endswith(("ms", " s"))
            assert stat(answer, "finish") in ("stop", "length") and stat(answer, "model") == "sft/d2/5"
            expect(answer.locator(".context-note")).to_have_count(0)
            # past the 64 tokens the model was trained on: still answered (up to 10×), with a note saying so
            send(real, "the cat sat on the mat " * 12)
            answer = wait_answer(real, 2)
            assert int(stat(answer, "prompt")) > 64
            expect(answer.locator(".context-note")).to_have_text(
                "This conversation is longer than the 64 tokens the model was trained on: answers get worse; "
                "start a new chat.")
            expect(answer.locator(".context-note")).to_be_visible()
            real.select_option("#model", "base/d2/5")
            send(real, "the cat")
            answer = wait_answer(real, 3)
            assert stat(answer, "model") == "base/d2/5" and int(stat(answer, "completion")) >= 1
            assert errors == []
    finally:
        context.close()
        torch.set_num_threads(threads)


def take_screenshots(browser, url, folder: Path) -> list[Path]:
    """Light and dark 1280x800 screenshots of a short conversation with code; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for scheme in ("light", "dark"):
        context = browser.new_context(base_url=url, viewport={"width": 1280, "height": 800}, color_scheme=scheme)
        try:
            page = context.new_page()
            open_page(page)
            send(page, "hello there")
            wait_answer(page, 1)
            send(page, "code: write a python function that adds two numbers")
            wait_answer(page, 2)
            page.mouse.move(0, 0)
            path = folder / f"chat-{scheme}.png"
            page.screenshot(path=str(path))
            paths.append(path)
        finally:
            context.close()
    return paths


def test_screenshots(browser, server, tmp_path):
    for path in take_screenshots(browser, server.url, tmp_path):
        assert path.stat().st_size > 10_000


if __name__ == "__main__":
    from playwright.sync_api import sync_playwright
    fake = FakeServer()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        for written in take_screenshots(b, fake.url, REPO_ROOT / "docs" / "screenshots"):
            print(written, written.stat().st_size, "bytes")
        b.close()
    fake.close()
    sys.exit(0)
