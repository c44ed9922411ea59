"""`primechat serve` on tiny random checkpoints made here: the model list and aliases, the OpenAI chat and text
completion endpoints (every field, streamed and not, checked against the Engine run directly), errors in OpenAI's
shape, the API key, the wait queue's 503, nanochat's endpoints, and on a real server: the official `openai` client,
a disconnecting client freeing its worker, requests waiting in line."""

import argparse
import asyncio
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from primechat.common import UserError
from primechat.engine import Engine, StreamDecoder
from primechat.serve import workers
from primechat.serve.api import Settings, create_app
from primechat.serve.server import ServerThread, add_arguments, settings_from_args
from primechat.train.checkpoint import checkpoint_dir, save_checkpoint
from test_chat_cli import tiny_model, tiny_tokenizer

HELLO = [{"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def serve_home(tmp_path_factory, tokenizer):
    """A home with a tokenizer and checkpoints base/d2/5, sft/d2/5 and sft/d2/10 (each a different random model)."""
    home = tmp_path_factory.mktemp("serve_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRIMECHAT_HOME", str(home))
        tokenizer.save(home / "tokenizer")
        for stage, step, seed in (("base", 5, 1), ("sft", 5, 2), ("sft", 10, 3)):
            model = tiny_model(tokenizer.vocab_size)
            with torch.no_grad():
                torch.manual_seed(seed)
                model.lm_head.weight.normal_(0, 0.5)
            save_checkpoint(checkpoint_dir(stage, "d2"), step, model.state_dict(),
                            {"step": step, "model_config": model.config.to_dict()})
    return home


@pytest.fixture(autouse=True)
def env(serve_home, monkeypatch):
    monkeypatch.setenv("PRIMECHAT_HOME", str(serve_home))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield serve_home
    torch.set_num_threads(threads)


@pytest.fixture
def client():
    with TestClient(create_app(Settings(temperature=1.0, top_k=0, max_tokens=12))) as c:
        yield c


def reference(tokenizer, stage, step, prompt, num_samples=1, **kwargs):
    """(texts, token counts, ended) of the Engine run directly on a checkpoint, decoded as the server shows text."""
    from primechat.train.checkpoint import load_model
    model, _, _ = load_model(stage, "d2", step)
    engine = Engine(model, tokenizer)
    rows, _ = engine.generate_batch(prompt, num_samples, **kwargs)
    texts, counts = [], []
    for row in rows:
        decoder = StreamDecoder(tokenizer)
        generated = row[len(prompt):]
        texts.append("".join(decoder.push(t) for t in generated) + decoder.flush())
        counts.append(len(generated))
    return texts, counts


def chat_prompt(tokenizer, messages):
    return tokenizer.render_for_completion(messages + [{"role": "assistant", "content": ""}])


def sse(response_text: str) -> list:
    """The data lines of a server-sent event stream, JSON-decoded ([DONE] kept as a string)."""
    out = []
    for line in response_text.splitlines():
        if line.startswith("data: "):
            payload = line[len("data: "):]
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def stream_text(chunks, index=0, field="content"):
    parts = []
    for c in chunks:
        if isinstance(c, dict):
            for choice in c["choices"]:
                if choice["index"] == index:
                    parts.append(choice["delta"].get(field, "") if "delta" in choice else choice["text"])
    return "".join(parts)


# --------------------------------------------------------------------------------------------------------------------
# Models

def test_models_list_default_first_and_aliases(client):
    data = client.get("/v1/models").json()
    assert data["object"] == "list"
    ids = [m["id"] for m in data["data"]]
    assert ids[0] == "sft/d2/10"  # sft preferred over base, latest step
    assert sorted(ids) == ["base/d2/5", "sft/d2/10", "sft/d2/5"]
    cards = {m["id"]: m for m in data["data"]}
    assert cards["base/d2/5"]["chat"] is False and cards["sft/d2/5"]["chat"] is True
    assert cards["sft/d2/5"] | {"created": 0} == {"id": "sft/d2/5", "object": "model", "created": 0,
                                                  "owned_by": "primechat", "stage": "sft", "tag": "d2", "step": 5,
                                                  "chat": True, "max_model_len": 64, "context_length": 64}
    assert cards["sft/d2/5"]["created"] > 0
    for alias, full in (("sft", "sft/d2/10"), ("sft/d2", "sft/d2/10"), ("sft/d2/5", "sft/d2/5"), (None, "sft/d2/10")):
        body = {"messages": HELLO, "max_tokens": 2}
        if alias:
            body["model"] = alias
        r = client.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        assert r.json()["model"] == full
    assert client.get("/v1/models/sft").json()["id"] == "sft/d2/10"
    assert client.get("/v1/models/").json()["data"] == data["data"]


def test_models_flag_restricts_and_model_flag_sets_default(env):
    with TestClient(create_app(Settings(models=["sft/d2/5", "base"], model="base"))) as c:
        assert [m["id"] for m in c.get("/v1/models").json()["data"]] == ["base/d2/5", "sft/d2/5"]
        r = c.post("/v1/chat/completions", json={"model": "sft", "messages": HELLO})  # sft -> sft/d2/10: not served
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    with pytest.raises(UserError) as error:  # a default that is not served: the served ones are the choice
        create_app(Settings(models=["sft/d2/5", "sft/d2/10"], model="base"))
    assert str(error.value).endswith("among those served; available: sft/d2/5, sft/d2/10")
    with pytest.raises(UserError) as error:
        create_app(Settings(models=["sft/d2/7"]))
    assert "base/d2/5" in str(error.value)  # a served model that does not exist: every checkpoint is the choice


def served(*flags) -> list[str]:
    """The model ids `primechat serve FLAGS` lists, the default first."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with TestClient(create_app(settings_from_args(parser.parse_args(["--device-type", "cpu", *flags])))) as c:
        return [m["id"] for m in c.get("/v1/models").json()["data"]]


def test_nanochat_source_tag_step_flags_choose_the_default_model(env):
    """chat_web's -i/-g/-s choose the default model as --model stage/tag/step does; every checkpoint stays listed."""
    every = sorted(served())
    for flags, default in ((["-i", "sft", "-g", "d2", "-s", "5"], "sft/d2/5"), (["-i", "base"], "base/d2/5"),
                           (["-i", "sft", "-g", "d2"], "sft/d2/10"), (["-s", "5"], "sft/d2/5")):
        ids = served(*flags)
        assert ids[0] == default and sorted(ids) == every, flags
    with pytest.raises(UserError, match=r"^--model sft/d2/5 and -i/-g/-s both choose the default model: give one"):
        served("--model", "sft/d2/5", "-i", "sft")
    with pytest.raises(UserError) as by_model:
        served("--model", "sft/d9/5")
    with pytest.raises(UserError) as by_flags:
        served("-i", "sft", "-g", "d9", "-s", "5")
    assert str(by_flags.value) == str(by_model.value)


def test_serve_command_answers_on_the_port_it_prints(cli):
    proc = cli.popen("serve", "--device-type", "cpu", "--port", "0", stdout=subprocess.PIPE,
                     stderr=subprocess.STDOUT, text=True)
    try:
        url = re.search(r"http://127\.0\.0\.1:\d+/", proc.stdout.readline()).group(0)  # port 0: the one it got
        reply = httpx.post(url + "v1/chat/completions", timeout=60,
                           json={"model": "sft/d2/5", "messages": HELLO, "max_tokens": 3, "temperature": 0})
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 3
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0]
    assert "Finished server process" in output  # SIGTERM: a graceful stop (uvicorn then re-raises the signal)


def test_busy_port_is_a_one_line_user_error_before_anything_starts(home, cli):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = cli("serve", "--device-type", "cpu", "--port", str(port))
    assert result.code == 2 and result.out == ""  # no banner announcing a server that is not there
    assert result.err.strip() == f"primechat: error: port {port} on 127.0.0.1 is already in use (another server?): " \
                                 f"pick another with --port"


def test_serve_flags_show_their_defaults_and_take_the_api_bounds(home, cli):
    shown = " ".join(cli("serve", "--help").out.split())  # argparse wraps the help
    assert all(f"(default: {value})" in shown for value in (8000, Settings.temperature, Settings.top_k,
                                                            Settings.max_tokens, Settings.max_queue))
    for flag, value, bound in (("--temperature", 2.5, "less than or equal to 2"), ("--top-k", -1, "greater than"),
                               ("--max-tokens", 4097, "less than or equal to 4096")):
        result = cli("serve", "--device-type", "cpu", flag, value)
        assert result.code == 2 and f"{flag} {value}: " in result.err and bound in result.err, result.err


def test_no_checkpoints_is_a_one_line_user_error(home, cli):
    result = cli("serve", "--device-type", "cpu")
    assert result.code == 2
    assert "no checkpoints" in result.err and "train" in result.err and len(result.err.strip().splitlines()) == 1


# --------------------------------------------------------------------------------------------------------------------
# Chat completions

def test_chat_matches_the_engine_with_usage_and_length(client, tokenizer):
    body = {"model": "sft/d2/5", "messages": HELLO, "temperature": 1.0, "top_k": 0, "max_tokens": 6, "seed": 7}
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    prompt = chat_prompt(tokenizer, HELLO)
    texts, counts = reference(tokenizer, "sft", 5, prompt, max_tokens=6, temperature=1.0, top_k=None, seed=7)
    assert data["object"] == "chat.completion" and data["id"].startswith("chatcmpl-")
    assert data["system_fingerprint"] is None and data["service_tier"] is None  # OpenAI always sends them
    choice = data["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": texts[0], "refusal": None}
    assert choice["finish_reason"] == ("length" if counts[0] == 6 else "stop")
    assert data["usage"] == {"prompt_tokens": len(prompt), "completion_tokens": counts[0],
                             "total_tokens": len(prompt) + counts[0]}
    timings = data["timings"]
    assert set(timings) == {"ttft_ms", "tokens_per_second", "total_ms"}
    assert 0 < timings["ttft_ms"] <= timings["total_ms"]


def test_max_tokens_gives_length_and_greedy_is_deterministic(client):
    def ask(**kw):
        return client.post("/v1/chat/completions", json={"messages": HELLO, **kw}).json()
    # force a long reply: greedy on a random model rarely ends, and max_completion_tokens wins over max_tokens
    lengths = [ask(temperature=0, max_tokens=50, max_completion_tokens=k) for k in (3, 4)]
    for data, k in zip(lengths, (3, 4)):
        if data["choices"][0]["finish_reason"] == "length":
            assert data["usage"]["completion_tokens"] == k
    assert any(d["choices"][0]["finish_reason"] == "length" for d in lengths)
    a, b = ask(temperature=0, max_tokens=8), ask(temperature=0, max_tokens=8)
    assert a["choices"] == b["choices"]


def test_seed_reproduces_and_varies(client):
    def text(**kw):
        body = {"messages": HELLO, "temperature": 1.0, "top_k": 0, "max_tokens": 10, **kw}
        return client.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]
    assert text(seed=123) == text(seed=123)
    assert len({text(seed=s) for s in (1, 2, 3, 4)}) > 1
    assert len({text() for _ in range(4)}) > 1  # no seed: a fresh draw each time


def test_stop_sequences_cut_and_never_leak(client):
    body = {"messages": HELLO, "temperature": 1.0, "top_k": 0, "max_tokens": 30, "seed": 5}
    full = client.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]
    assert len(full) >= 8, full
    stop = full[4:7]
    expected = full[:full.find(stop)]
    r = client.post("/v1/chat/completions", json={**body, "stop": [stop, "never-there"]}).json()
    assert r["choices"][0]["message"]["content"] == expected
    assert r["choices"][0]["finish_reason"] == "stop"
    chunks = sse(client.post("/v1/chat/completions", json={**body, "stop": stop, "stream": True}).text)
    assert stream_text(chunks) == expected
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1] if c["choices"][0]["finish_reason"]] == ["stop"]
    # as many as an editor's autocompletion sends (Continue: more than api.openai.com's 4), each up to 128 characters
    many = ["\n\n", "```", "/src/", "#- coding", "\n}", "x" * 128, *[f"never{i}" for i in range(9)], stop]
    r = client.post("/v1/chat/completions", json={**body, "stop": many})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == expected, r.text
    # a stop string that never occurs changes nothing
    same = client.post("/v1/chat/completions", json={**body, "stop": "\x00never"}).json()
    assert same["choices"][0]["message"]["content"] == full


def test_stream_format_with_usage(client):
    body = {"model": "sft/d2", "messages": HELLO, "temperature": 0.9, "max_tokens": 7, "seed": 3, "stream": True,
            "stream_options": {"include_usage": True}}
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        chunks = sse(r.read().decode())
    assert chunks[-1] == "[DONE]"
    chunks = chunks[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "sft/d2/10" for c in chunks)
    assert all(c["system_fingerprint"] is None and c["service_tier"] is None for c in chunks)
    assert len({c["id"] for c in chunks}) == 1 and len({c["created"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == [] and set(usage_chunk["timings"]) == {"ttft_ms", "tokens_per_second",
                                                                             "total_ms"}
    finish = chunks[-2]["choices"][0]
    assert finish["delta"] == {} and finish["finish_reason"] in ("stop", "length")
    assert all(c["usage"] is None for c in chunks[:-1])
    non_stream = client.post("/v1/chat/completions", json={**body, "stream": False}).json()
    assert stream_text(chunks) == non_stream["choices"][0]["message"]["content"]
    assert usage_chunk["usage"] == non_stream["usage"]
    assert usage_chunk["usage"]["completion_tokens"] > 0
    # without include_usage: no usage chunk, no usage field
    plain = sse(client.post("/v1/chat/completions", json={**body, "stream_options": None}).text)[:-1]
    assert all("usage" not in c and c["choices"] for c in plain)


def test_defaults_from_the_server_and_top_k_top_p(tokenizer, env):
    settings = Settings(temperature=1.0, top_k=3, max_tokens=5)
    prompt = chat_prompt(tokenizer, HELLO)
    with TestClient(create_app(settings)) as c:
        got = c.post("/v1/chat/completions", json={"messages": HELLO, "seed": 11}).json()
        nucleus = c.post("/v1/chat/completions", json={"messages": HELLO, "seed": 11, "top_k": 0, "top_p": 0.5,
                                                       "max_tokens": 9}).json()
        # -1: vLLM's spelling of off, which clients written for it send
        off = {"messages": HELLO, "seed": 11, "top_k": -1, "max_tokens": 9}
        vllm_off = c.post("/v1/chat/completions", json=off).json()
        assert vllm_off["choices"] == c.post("/v1/chat/completions", json={**off, "top_k": 0}).json()["choices"]
        assert c.post("/v1/chat/completions", json={**off, "top_k": -2}).json()["error"]["param"] == "top_k"
    texts, counts = reference(tokenizer, "sft", 10, prompt, max_tokens=5, temperature=1.0, top_k=3, seed=11)
    assert got["choices"][0]["message"]["content"] == texts[0] and got["usage"]["completion_tokens"] == counts[0]
    texts, counts = reference(tokenizer, "sft", 10, prompt, max_tokens=9, temperature=1.0, top_p=0.5, seed=11)
    assert nucleus["choices"][0]["message"]["content"] == texts[0]


def test_n_samples_stream_and_not(client, tokenizer):
    body = {"messages": HELLO, "n": 3, "temperature": 1.0, "top_k": 0, "max_tokens": 6, "seed": 9}
    data = client.post("/v1/chat/completions", json=body).json()
    texts, counts = reference(tokenizer, "sft", 10, chat_prompt(tokenizer, HELLO), num_samples=3, max_tokens=6,
                              temperature=1.0, top_k=None, seed=9)
    assert [c["index"] for c in data["choices"]] == [0, 1, 2]
    assert [c["message"]["content"] for c in data["choices"]] == texts
    assert data["usage"]["completion_tokens"] == sum(counts)
    chunks = sse(client.post("/v1/chat/completions", json={**body, "stream": True}).text)
    assert [stream_text(chunks, i) for i in range(3)] == texts
    finishes = [c["choices"][0]["index"] for c in chunks[:-1] if c["choices"][0]["finish_reason"]]
    assert sorted(finishes) == [0, 1, 2]


def test_system_message_and_content_parts(client, tokenizer):
    messages = [{"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hello"}, {"type": "text", "text": "there"}]}]
    data = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 1}).json()
    # text parts are joined by a line, as vLLM does: not glued into "hellothere"
    folded = chat_prompt(tokenizer, [{"role": "system", "content": "be brief"},
                                     {"role": "user", "content": "hello\nthere"}])
    assert data["usage"]["prompt_tokens"] == len(folded) > len(chat_prompt(tokenizer, HELLO))
    history = [*HELLO, {"role": "assistant", "content": "hi"}, {"role": "user", "content": "the cat"}]
    data = client.post("/v1/chat/completions", json={"messages": history, "max_tokens": 1}).json()
    assert data["usage"]["prompt_tokens"] == len(chat_prompt(tokenizer, history))


def test_message_orders_api_openai_com_takes(client, tokenizer):
    """A system (or developer) note later in the conversation is read as the user's text where it stands; an
    assistant greeting first stays the assistant's turn, after the system text as the user's turn (or an empty one)."""
    def prompt_tokens(messages):
        r = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 1})
        assert r.status_code == 200, r.text
        return r.json()["usage"]["prompt_tokens"]

    system, greeting = {"role": "system", "content": "be brief"}, {"role": "assistant", "content": "Hello! Ask."}
    assert prompt_tokens([system, greeting, *HELLO]) == len(chat_prompt(tokenizer, [
        {"role": "user", "content": "be brief"}, greeting, *HELLO]))
    assert prompt_tokens([greeting, *HELLO]) == len(chat_prompt(tokenizer, [
        {"role": "user", "content": ""}, greeting, *HELLO]))
    for role in ("system", "developer"):
        late = [*HELLO, {"role": "assistant", "content": "yo"}, {"role": role, "content": "be brief"},
                {"role": "user", "content": "the cat"}]
        assert prompt_tokens(late) == len(chat_prompt(tokenizer, [
            *HELLO, {"role": "assistant", "content": "yo"}, {"role": "user", "content": "be brief\n\nthe cat"}]))
    assert prompt_tokens([system]) == len(chat_prompt(tokenizer, [{"role": "user", "content": "be brief"}]))
    # nanochat's endpoint keeps nanochat's rules, naming the role that was sent
    r = client.post("/chat/completions", json={"messages": [greeting, *HELLO]})
    assert r.status_code == 400 and r.json()["detail"] == \
        "messages: the conversation must start with a user message, got 'assistant'"


def test_a_final_assistant_message_is_continued(client, tokenizer):
    """Open WebUI's "Continue Response" sends the conversation ending with the assistant's partial answer: the model
    goes on from inside that turn and the reply holds only the continuation."""
    body = {"model": "sft/d2/5", "messages": [*HELLO, {"role": "assistant", "content": "the cat"}],
            "temperature": 1.0, "top_k": 0, "max_tokens": 6, "seed": 3}
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    prompt = chat_prompt(tokenizer, HELLO) + tokenizer.encode("the cat")
    texts, counts = reference(tokenizer, "sft", 5, prompt, max_tokens=6, temperature=1.0, top_k=None, seed=3)
    assert r.json()["choices"][0]["message"]["content"] == texts[0]
    assert r.json()["usage"]["prompt_tokens"] == len(prompt)
    # nanochat's own endpoint keeps its rule: the user speaks last
    r = client.post("/chat/completions", json={"messages": body["messages"]})
    assert r.status_code == 400 and "last message" in r.json()["detail"]


def test_tool_calls_show_as_in_the_terminal_and_characters_are_never_split(client, tokenizer, monkeypatch):
    s = tokenizer.encode_special
    script = [s("<|python_start|>"), *tokenizer.encode("2+3"), s("<|python_end|>"), s("<|output_start|>"),
              *tokenizer.encode("5"), s("<|output_end|>"), *tokenizer.encode(" café"), s("<|assistant_end|>")]
    assert len(tokenizer.encode("é")) == 2  # two byte tokens: the first alone is half a character

    def scripted(self, tokens, num_samples=1, **kwargs):
        for token in script:
            yield [token] * num_samples, [1] * num_samples
    monkeypatch.setattr(workers.Engine, "generate", scripted)
    chunks = sse(client.post("/v1/chat/completions", json={"messages": HELLO, "stream": True}).text)
    deltas = [c["choices"][0]["delta"].get("content", "") for c in chunks[:-1]]
    assert "".join(deltas) == "«2+3 = 5» café"
    assert not any("\ufffd" in d for d in deltas)
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    data = client.post("/v1/chat/completions", json={"messages": HELLO}).json()
    assert data["usage"]["completion_tokens"] == len(script) - 1  # every token but the end of the turn


def test_prompt_longer_than_the_context_is_400(client):
    words = " ".join(["the cat sat on the mat"] * 1200)[:7999]
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": words}]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert r.json()["error"]["param"] == "messages" and "shorten the conversation" in r.json()["error"]["message"]
    r = client.post("/v1/completions", json={"prompt": words})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert r.json()["error"]["param"] == "prompt" and "shorten the prompt" in r.json()["error"]["message"]


# --------------------------------------------------------------------------------------------------------------------
# Text completions

def test_completions_for_base_model(client, tokenizer):
    body = {"model": "base", "prompt": "the cat", "temperature": 1.0, "top_k": 0, "max_tokens": 6, "seed": 4}
    data = client.post("/v1/completions", json=body).json()
    prompt = tokenizer.encode("the cat", prepend="<|bos|>")
    texts, counts = reference(tokenizer, "base", 5, prompt, max_tokens=6, temperature=1.0, top_k=None, seed=4)
    assert data["object"] == "text_completion" and data["model"] == "base/d2/5"
    assert data["system_fingerprint"] is None and "service_tier" not in data  # a chat field
    assert data["choices"][0]["text"] == texts[0]
    assert data["usage"] == {"prompt_tokens": len(prompt), "completion_tokens": counts[0],
                             "total_tokens": len(prompt) + counts[0]}
    listed = client.post("/v1/completions", json={**body, "prompt": ["the cat"]}).json()
    assert listed["choices"][0]["text"] == texts[0]
    chunks = sse(client.post("/v1/completions", json={**body, "stream": True,
                                                      "stream_options": {"include_usage": True}}).text)
    assert chunks[-1] == "[DONE]" and chunks[-2]["usage"] == data["usage"] and "timings" in chunks[-2]
    assert all(c["object"] == "text_completion" and c["system_fingerprint"] is None for c in chunks[:-1])
    assert stream_text(chunks) == texts[0]
    # a chat model completes plain text too; a base model cannot chat
    assert client.post("/v1/completions", json={**body, "model": "sft"}).status_code == 200
    r = client.post("/v1/chat/completions", json={"model": "base", "messages": HELLO})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"


def test_a_list_of_prompts_is_a_batch(client, tokenizer):
    """OpenAI's prompt may be a list (LangChain's OpenAI LLM batches them): prompt i's j-th reply is choice i*n + j,
    each the reply that prompt alone gets, and the usage is summed."""
    body = {"model": "base", "temperature": 1.0, "top_k": 0, "max_tokens": 5, "seed": 4, "n": 2}
    prompts = ["the cat", "on the mat", "sat"]
    alone = [client.post("/v1/completions", json={**body, "prompt": p}).json() for p in prompts]
    r = client.post("/v1/completions", json={**body, "prompt": prompts})
    assert r.status_code == 200, r.text
    batch = r.json()
    assert [c["index"] for c in batch["choices"]] == list(range(6))
    assert [(c["text"], c["finish_reason"]) for c in batch["choices"]] == \
        [(c["text"], c["finish_reason"]) for a in alone for c in a["choices"]]
    assert batch["usage"] == {key: sum(a["usage"][key] for a in alone) for key in batch["usage"]}
    assert batch["timings"]["total_ms"] >= batch["timings"]["ttft_ms"] > 0
    as_ids = client.post("/v1/completions", json={**body, "prompt": [tokenizer.encode(p) for p in prompts]}).json()
    assert as_ids["choices"] == batch["choices"]
    # without a seed, each prompt is sampled on its own: the same prompt twice gets two replies
    unseeded = {"model": "base", "prompt": ["the"] * 2, "max_tokens": 12, "temperature": 1.0}
    texts = [c["text"] for c in client.post("/v1/completions", json=unseeded).json()["choices"]]
    assert texts[0] != texts[1]
    r = client.post("/v1/completions", json={**body, "prompt": prompts, "stream": True})
    assert r.status_code == 400 and "not streamed" in r.json()["error"]["message"]
    # one prompt in a list is one prompt, streamed or not
    assert client.post("/v1/completions", json={**body, "prompt": ["sat"]}).json()["choices"] == alone[2]["choices"]
    words = " ".join(["the cat sat on the mat"] * 1200)[:7999]
    r = client.post("/v1/completions", json={**body, "prompt": ["the cat", words]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt[1]"
    assert r.json()["error"]["code"] == "context_length_exceeded"


# --------------------------------------------------------------------------------------------------------------------
# Errors

@pytest.mark.parametrize("change, param", [
    ({"temperature": 2.5}, "temperature"),
    ({"temperature": -0.1}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_k": 201}, "top_k"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 4097}, "max_tokens"),
    ({"n": 0}, "n"),
    ({"stop": [str(i) for i in range(17)]}, "stop"),
    ({"stop": "x" * 129}, "stop"),
    ({"stop": [""]}, "stop"),
    ({"messages": []}, "messages"),
    ({"messages": None}, "messages"),
    ({"messages": [{"role": "user", "content": ""}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": "x" * 8001}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": "x" * 8000}] * 5}, "messages"),
    ({"messages": [{"role": "user", "content": "hi"}] * 501}, "messages"),
    ({"messages": [{"role": "tool", "content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, "messages[0].content"),
])
def test_bad_fields_are_400_naming_the_param(client, change, param):
    r = client.post("/v1/chat/completions", json={"messages": HELLO, **change})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] is not None and error["param"].startswith(param), error
    assert set(error) == {"message", "type", "param", "code"} and error["message"]


TOOL = {"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {}}}}


@pytest.mark.parametrize("path, change, param", [
    ("/v1/chat/completions", {"tools": [TOOL]}, "tools"),
    ("/v1/chat/completions", {"tools": [TOOL], "tool_choice": "auto"}, "tools"),
    ("/v1/chat/completions", {"functions": [TOOL["function"]]}, "functions"),
    ("/v1/chat/completions", {"response_format": {"type": "json_object"}}, "response_format"),
    ("/v1/chat/completions", {"logprobs": True, "top_logprobs": 2}, "logprobs"),
    ("/v1/chat/completions", {"top_logprobs": 2}, "top_logprobs"),
    ("/v1/chat/completions", {"logit_bias": {"5": 10}}, "logit_bias"),
    ("/v1/completions", {"logprobs": 2}, "logprobs"),
    ("/v1/completions", {"echo": True}, "echo"),
    ("/v1/completions", {"best_of": 3}, "best_of"),
    ("/v1/completions", {"suffix": " the end"}, "suffix"),
])
def test_features_primechat_cannot_honour_are_400_naming_the_param(client, path, change, param):
    """Ignored, they would give a 200 that looks right and is not what was asked for (a tool never called)."""
    body = {"messages": HELLO} if path == "/v1/chat/completions" else {"prompt": "the cat"}
    r = client.post(path, json={**body, "max_tokens": 1, **change})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["code"] == "unsupported_parameter"
    assert error["type"] == "invalid_request_error" and error["message"].startswith(f"{param}: primechat")


@pytest.mark.parametrize("path, change", [
    ("/v1/chat/completions", {"tools": [], "functions": None, "response_format": {"type": "text"}, "logprobs": False,
                              "top_logprobs": 0, "logit_bias": {}, "frequency_penalty": 0, "presence_penalty": 0.0,
                              "parallel_tool_calls": True, "user": "x"}),
    ("/v1/chat/completions", {"tools": [TOOL], "tool_choice": "none"}),  # the tools are there but not to be called
    ("/v1/chat/completions", {"functions": [TOOL["function"]], "function_call": "none"}),
    ("/v1/completions", {"logprobs": None, "echo": False, "best_of": 1, "suffix": None, "logit_bias": None,
                         "frequency_penalty": 0, "presence_penalty": 0}),
    ("/v1/completions", {"logprobs": 0, "suffix": ""}),
    # null is the default, as OpenAI's types have it (SDKs generated from its spec send every field)
    ("/v1/chat/completions", {"n": None, "stream": None, "stream_options": {"include_usage": None}}),
    ("/v1/chat/completions", {"stream": True, "stream_options": {"include_usage": None}}),
    ("/v1/completions", {"n": None, "stream": None, "echo": None}),
])
def test_the_off_values_of_those_features_pass(client, path, change):
    body = {"messages": HELLO} if path == "/v1/chat/completions" else {"prompt": "the cat"}
    r = client.post(path, json={**body, "max_tokens": 1, **change})
    assert r.status_code == 200, r.text
    if change.get("stream"):
        assert sse(r.text)[-1] == "[DONE]" and "usage" not in sse(r.text)[-2]
    else:
        assert len(r.json()["choices"]) == 1


def test_penalties_reach_the_engine_and_are_bounded(client, monkeypatch):
    seen = []
    real = workers.Engine.generate

    def spy(self, *args, **kwargs):
        seen.append((kwargs["frequency_penalty"], kwargs["presence_penalty"]))
        return real(self, *args, **kwargs)
    monkeypatch.setattr(workers.Engine, "generate", spy)
    r = client.post("/v1/chat/completions", json={"messages": HELLO, "max_tokens": 2, "frequency_penalty": 0.5,
                                                  "presence_penalty": -1})
    assert r.status_code == 200, r.text
    r = client.post("/v1/completions", json={"prompt": "the cat", "max_tokens": 2, "presence_penalty": 1.5})
    assert r.status_code == 200, r.text
    assert seen == [(0.5, -1.0), (0.0, 1.5)]
    r = client.post("/v1/chat/completions", json={"messages": HELLO, "frequency_penalty": 2.5})
    assert r.status_code == 400 and r.json()["error"]["param"] == "frequency_penalty"


def test_what_real_clients_send_is_read(client, tokenizer):
    """A developer message (OpenAI's newer name for the system one), an assistant turn whose content is null (it
    only called tools), and a text completion's prompt given as token ids, flat or as a one-item list."""
    def prompt_tokens(path, **body):
        r = client.post(path, json={**body, "max_tokens": 1})
        assert r.status_code == 200, r.text
        return r.json()["usage"]["prompt_tokens"]

    system = [{"role": "system", "content": "be brief"}, *HELLO]
    assert prompt_tokens("/v1/chat/completions", messages=[{"role": "developer", "content": "be brief"}, *HELLO]) \
        == len(chat_prompt(tokenizer, system))
    history = [*HELLO, {"role": "assistant", "content": None}, {"role": "user", "content": "the cat"}]
    assert prompt_tokens("/v1/chat/completions", messages=history) == len(chat_prompt(tokenizer, [
        *HELLO, {"role": "assistant", "content": ""}, {"role": "user", "content": "the cat"}]))
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": None}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages[0].content"
    r = client.post("/chat/completions", json={"messages": [{"role": "developer", "content": "x"}, *HELLO]})
    assert r.status_code == 400 and "'developer'" in r.json()["detail"]  # nanochat's endpoint takes no system message

    body = {"model": "base", "temperature": 1.0, "top_k": 0, "max_tokens": 6, "seed": 4}
    text = client.post("/v1/completions", json={**body, "prompt": "the cat"}).json()
    ids = tokenizer.encode("the cat")
    for prompt in (ids, [ids], tokenizer.encode("the cat", prepend="<|bos|>")):  # the <|bos|> is added if missing
        same = client.post("/v1/completions", json={**body, "prompt": prompt}).json()
        assert same["choices"] == text["choices"] and same["usage"] == text["usage"]
    for prompt, message in (([tokenizer.vocab_size], "vocabulary"), ([[1], [tokenizer.vocab_size]], "vocabulary"),
                            ([], "1 to 32 prompts"), (["a"] * 33, "1 to 32 prompts"), ([1, "a"], "")):
        r = client.post("/v1/completions", json={**body, "prompt": prompt})
        assert r.status_code == 400 and r.json()["error"]["param"].startswith("prompt"), r.text
        assert message in r.json()["error"]["message"]


def test_bad_json_missing_fields_and_unknown_routes(client):
    r = client.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    assert r.json()["error"]["message"].startswith("the request body is not valid JSON")
    # curl -d without -H 'content-type: application/json' sends a form; an array is not an object either
    not_object = "the request body must be a JSON object (Content-Type: application/json)"
    body = json.dumps({"messages": HELLO}).encode()
    for content, kind in ((body, "application/x-www-form-urlencoded"), (body, "text/plain"),
                          (b"[1]", "application/json")):
        r = client.post("/v1/chat/completions", content=content, headers={"content-type": kind})
        assert r.status_code == 400 and r.json()["error"]["message"] == not_object, (kind, r.text)
    r = client.post("/v1/chat/completions", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["message"] == \
        "the request body is empty: send a JSON object (Content-Type: application/json)"
    r = client.post("/chat/completions", content=b"")
    assert r.status_code == 400 and r.json()["detail"].startswith("the request body is empty")
    r = client.post("/v1/completions", json={"model": "base"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    r = client.post("/v1/chat/completions", json={"model": "sft/d2/99", "messages": HELLO})
    assert r.status_code == 404 and r.json()["error"] == {
        "message": r.json()["error"]["message"], "type": "invalid_request_error", "param": "model",
        "code": "model_not_found"}
    assert client.post("/v1/completions", json={"model": "nope", "prompt": "x"}).status_code == 404
    assert "error" in client.get("/v1/nothing").json()


def test_api_key(env, monkeypatch):
    with TestClient(create_app(Settings(api_key="sekret", max_tokens=2))) as c:
        scheme = "the Authorization header must read 'Bearer <key>'"  # the right key, without "Bearer "
        for headers, message in (({}, "Missing API key: send the header 'Authorization: Bearer <key>'"),
                                 ({"Authorization": "Bearer wrong"}, "Incorrect API key provided"),
                                 ({"Authorization": "sekret"}, scheme), ({"Authorization": "Token sekret"}, scheme)):
            r = c.post("/v1/chat/completions", json={"messages": HELLO}, headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
            assert r.json()["error"]["message"] == message
        assert c.get("/v1/models").status_code == 401
        assert c.post("/chat/completions", json={"messages": HELLO}).status_code == 401
        ok = c.post("/v1/chat/completions", json={"messages": HELLO}, headers={"Authorization": "Bearer sekret"})
        assert ok.status_code == 200
        assert c.get("/health").status_code == 200  # liveness needs no key


def test_pages_on_other_origins_may_call_the_api(client):
    """A chat front-end on a public HTTPS origin calling a server on this machine: Chrome's private-network preflight
    passes, and the page may read Retry-After on a 503."""
    preflight = {"Origin": "https://chat.example.com", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type,authorization",
                 "Access-Control-Request-Private-Network": "true"}
    r = client.options("/v1/chat/completions", headers=preflight)
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-private-network"] == "true"
    r = client.get("/v1/models", headers={"Origin": "https://chat.example.com"})
    assert r.headers["access-control-allow-origin"] == "*"
    assert "retry-after" in r.headers["access-control-expose-headers"].lower()


def test_api_key_flag_and_environment(monkeypatch):
    parser = argparse.ArgumentParser()
    add_arguments(parser)

    def key(*flags):
        return settings_from_args(parser.parse_args(["--device-type", "cpu", *flags])).api_key
    monkeypatch.setenv("PRIMECHAT_API_KEY", "abc")
    assert key() == "abc" and key("--api-key", "xyz") == "xyz"
    assert key("--api-key", "") is None  # an empty flag turns off the variable's key
    monkeypatch.delenv("PRIMECHAT_API_KEY")
    assert key() is None


def test_full_queue_is_503_with_retry_after(env):
    app = create_app(Settings(num_workers=1, max_queue=0, max_tokens=2))
    pool = app.state.pool
    with TestClient(app) as c:
        held = asyncio.run(pool.acquire())  # the only worker is busy
        assert c.get("/health").json()["available_workers"] == 0
        r = c.post("/v1/chat/completions", json={"messages": HELLO})
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
        assert r.json()["error"]["code"] == "server_overloaded"
        assert r.json()["error"]["message"] == "the worker is busy and no request may wait: retry shortly"
        r = c.post("/chat/completions", json={"messages": HELLO})
        assert r.status_code == 503 and "detail" in r.json() and "retry-after" in r.headers
        pool.release(held)
        assert c.post("/v1/chat/completions", json={"messages": HELLO}).status_code == 200


# --------------------------------------------------------------------------------------------------------------------
# nanochat's endpoints

def test_nanochat_endpoints(client):
    r = client.post("/chat/completions", json={"messages": HELLO, "temperature": 0, "max_tokens": 6, "top_k": 0})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse(r.text)
    assert events[-1] == {"done": True}
    assert all(set(e) == {"token", "gpu"} and e["gpu"] == 0 for e in events[:-1])
    greedy = client.post("/v1/chat/completions", json={"messages": HELLO, "temperature": 0, "max_tokens": 6}).json()
    assert "".join(e["token"] for e in events[:-1]) == greedy["choices"][0]["message"]["content"]
    tool_turn = {"messages": [*HELLO, {"role": "tool", "content": "x"}, *HELLO]}
    assert "messages[1].role: must be 'user' or 'assistant', got 'tool'" in client.post(
        "/chat/completions", json=tool_turn).json()["detail"]  # said at once, without waiting for a worker
    for bad in ({"messages": [{"role": "system", "content": "x"}, *HELLO]}, {"messages": []},
                {"messages": HELLO, "temperature": 3}, {"messages": HELLO, "max_tokens": 5000},
                {"messages": [{"role": "user", "content": "x" * 8001}]}):
        r = client.post("/chat/completions", json=bad)
        assert r.status_code == 400 and isinstance(r.json()["detail"], str), (bad, r.text)
    health = client.get("/health").json()
    assert health == {"status": "ok", "ready": True, "num_gpus": 1, "available_workers": 1,
                      "sampling_defaults": {"temperature": 1.0, "top_k": 0, "max_tokens": 12}}  # the client's
    stats = client.get("/stats").json()
    assert stats["total_workers"] == 1 and stats["available_workers"] == 1 and stats["busy_workers"] == 0
    assert stats["queue_length"] == 0
    assert stats["workers"][0]["gpu_id"] == 0 and stats["workers"][0]["device"] == "cpu"
    assert stats["workers"][0]["model"] == "sft/d2/10"
    logo = client.get("/logo.svg")  # nanochat's chat_web serves its logo there
    assert logo.status_code == 200 and logo.headers["content-type"].startswith("image/svg")


def test_an_openai_request_to_nanochats_endpoint_points_to_v1(client):
    """An OpenAI client whose base_url lacks /v1 posts to nanochat's endpoint: told where the API is, rather than a
    200 stream it would turn into a string. nanochat's own page sends only messages and the sampling fields."""
    for extra in ({"model": "sft"}, {"stream": False}, {"n": 1, "stop": ["x"]}, {"stream_options": None},
                  {"tools": []}):
        r = client.post("/chat/completions", json={"messages": HELLO, "max_tokens": 2, **extra})
        assert r.status_code == 400, (extra, r.text)
        assert "the OpenAI API is at /v1/chat/completions" in r.json()["detail"]
        assert all(name in r.json()["detail"] for name in extra)
    page = {"messages": HELLO, "temperature": 0.8, "top_k": 50, "max_tokens": 2}  # what nanochat's ui.html sends
    assert client.post("/chat/completions", json=page).status_code == 200


def test_models_are_cached_per_worker_least_recently_used_out(env):
    app = create_app(Settings(max_models_per_worker=2, max_tokens=1))
    with TestClient(app) as c:
        for model in ("sft/d2/5", "sft/d2/10", "sft/d2/5", "base"):
            c.post("/v1/completions", json={"model": model, "prompt": "a"})
        assert c.get("/stats").json()["workers"][0]["loaded_models"] == ["sft/d2/5", "base/d2/5"]


def test_out_of_memory_unloads_the_least_recently_used_model(env, monkeypatch):
    """A device that holds one model at a time (loading a second raises torch's OutOfMemoryError, as CUDA would):
    the worker unloads its least recently used model and loads the new one; an OOM while generating answers 503
    with Retry-After and leaves only the model in use loaded."""
    from primechat.serve import workers

    real_load = workers.load_model
    loaded_now = []

    def load_one_at_a_time(stage, tag, step, device):
        worker = next(w for w in app.state.pool.workers)
        if worker.models:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        loaded_now.append(f"{stage}/{tag}/{step}")
        return real_load(stage, tag, step, device)

    monkeypatch.setattr(workers, "load_model", load_one_at_a_time)
    app = create_app(Settings(max_models_per_worker=4, max_tokens=1))
    with TestClient(app) as c:
        for model in ("sft/d2/5", "sft/d2/10", "base/d2/5"):
            assert c.post("/v1/completions", json={"model": model, "prompt": "a"}).status_code == 200
            assert c.get("/stats").json()["workers"][0]["loaded_models"] == [model]
        assert loaded_now == ["sft/d2/5", "sft/d2/10", "base/d2/5"]

        def oom(*args, **kwargs):
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

        monkeypatch.setattr(workers.Worker, "_generate", oom)
        r = c.post("/v1/completions", json={"model": "base/d2/5", "prompt": "a"})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "out_of_memory"
        assert c.get("/stats").json()["workers"][0]["loaded_models"] == ["base/d2/5"]
        assert c.get("/stats").json()["available_workers"] == 1  # the worker is free again


def test_page_is_served(client):
    r = client.get("/")
    from primechat.serve.api import STATIC_DIR
    if (STATIC_DIR / "index.html").exists():
        assert r.status_code == 200 and "html" in r.headers["content-type"]
    else:
        assert r.status_code == 404
    assert client.get("/static/../api.py").status_code == 404


# --------------------------------------------------------------------------------------------------------------------
# A real server

@pytest.fixture
def slow_engine(monkeypatch):
    """Every generated token takes 40 ms, so that a reply of 200 tokens lasts 8 s unless it is cancelled."""
    real = workers.Engine.generate

    def slow(self, *args, **kwargs):
        for step in real(self, *args, **kwargs):
            time.sleep(0.04)
            yield step
    monkeypatch.setattr(workers.Engine, "generate", slow)


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_openai_client_against_a_real_server(env):
    from openai import OpenAI

    with ServerThread(create_app(Settings(api_key="k", max_tokens=8))) as server:
        client = OpenAI(base_url=server.url + "/v1", api_key="k", max_retries=0)
        assert [m.id for m in client.models.list()][0] == "sft/d2/10"
        reply = client.chat.completions.create(model="sft", messages=HELLO, temperature=0.5, seed=1, max_tokens=5,
                                               stop=["zzz"])
        assert reply.model == "sft/d2/10" and reply.choices[0].finish_reason in ("stop", "length")
        assert reply.usage.completion_tokens <= 5 and reply.usage.prompt_tokens > 0
        stream = client.chat.completions.create(model="sft", messages=HELLO, temperature=0.5, seed=1, max_tokens=5,
                                                stop=["zzz"], stream=True, stream_options={"include_usage": True})
        chunks = list(stream)
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert streamed == reply.choices[0].message.content
        assert chunks[-1].usage.total_tokens == reply.usage.total_tokens
        assert chunks[-1].model_extra["timings"]["total_ms"] > 0
        completion = client.completions.create(model="base", prompt="the cat", max_tokens=4, temperature=0)
        assert completion.choices[0].text == client.completions.create(
            model="base/d2/5", prompt="the cat", max_tokens=4, temperature=0).choices[0].text
        bad = OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
        from openai import AuthenticationError
        with pytest.raises(AuthenticationError):
            bad.models.list()
        from openai import BadRequestError
        no_v1 = OpenAI(base_url=server.url, api_key="k", max_retries=0)  # the most common base_url mistake
        with pytest.raises(BadRequestError, match="/v1/chat/completions"):
            no_v1.chat.completions.create(model="sft", messages=HELLO, max_tokens=2)


def test_disconnecting_client_frees_its_worker(env, slow_engine):
    with ServerThread(create_app(Settings(num_workers=1, temperature=1.0, top_k=0))) as server:
        body = {"messages": HELLO, "max_tokens": 200, "stream": True}
        with httpx.Client(base_url=server.url, timeout=10) as http:
            with http.stream("POST", "/v1/chat/completions", json=body) as r:
                lines = r.iter_lines()
                assert json.loads(next(lines)[len("data: "):])["choices"][0]["delta"]["role"] == "assistant"
                assert http.get("/stats").json()["busy_workers"] == 1
            closed = time.monotonic()  # leaving the block closes the connection mid-reply
            assert wait_for(lambda: http.get("/stats").json()["available_workers"] == 1, timeout=3)
            assert time.monotonic() - closed < 3  # 200 tokens would take 8 s
            assert http.get("/health").json()["available_workers"] == 1


def test_requests_wait_in_line_then_503(env):
    app = create_app(Settings(num_workers=1, max_queue=1, temperature=0))
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=20) as http:
        held = asyncio.run(app.state.pool.acquire())  # the only worker is busy, for as long as the test says
        results = {}

        def waiting():
            results["waiting"] = http.post("/v1/chat/completions", json={"messages": HELLO, "max_tokens": 3})

        line = threading.Thread(target=waiting)
        line.start()
        assert wait_for(lambda: http.get("/stats").json()["queue_length"] == 1)
        full = http.post("/v1/chat/completions", json={"messages": HELLO, "max_tokens": 3})  # queued, it would hang
        assert full.status_code == 503 and full.headers["retry-after"] == "1"
        assert full.json()["error"]["type"] == "server_error"
        assert full.json()["error"]["message"].startswith("the worker is busy and 1 request is already waiting")
        app.state.pool.release(held)
        line.join(timeout=10)
        assert results["waiting"].status_code == 200
        assert results["waiting"].json()["usage"]["completion_tokens"] <= 3


def test_a_plain_request_whose_client_gives_up_frees_its_worker_and_its_place_in_line(env, slow_engine):
    """Starlette cancels a streamed reply whose client goes away, not a plain one: the server watches for it. A client
    that times out (the OpenAI SDK's, which then retries) would otherwise keep the worker for a reply no one reads,
    and one that gives up while waiting would keep its place in line, so that the next request is refused."""
    app = create_app(Settings(num_workers=1, max_queue=1, temperature=0))  # greedy: long replies
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=10) as http:
        def busy_queued():
            stats = http.get("/stats").json()
            return stats["busy_workers"], stats["queue_length"]

        for path, body in (("/v1/chat/completions", {"messages": HELLO}), ("/v1/completions", {"prompt": "a"})):
            with pytest.raises(httpx.ReadTimeout):
                http.post(path, json={**body, "max_tokens": 200}, timeout=0.5)  # 8 s
            assert wait_for(lambda: busy_queued() == (0, 0))
        held = asyncio.run(app.state.pool.acquire())  # the only worker is busy
        with pytest.raises(httpx.ReadTimeout):
            http.post("/v1/chat/completions", json={"messages": HELLO, "max_tokens": 3}, timeout=0.5)
        assert wait_for(lambda: busy_queued() == (1, 0))
        app.state.pool.release(held)
        assert http.post("/v1/completions", json={"prompt": "a", "max_tokens": 3}).status_code == 200


SLOW_SERVE = """
import sys, time
from primechat.serve import workers
real = workers.Engine.generate
def slow(self, *args, **kwargs):  # as slow_engine: 40 ms a token
    for step in real(self, *args, **kwargs):
        time.sleep(0.04)
        yield step
workers.Engine.generate = slow
from primechat.cli import main
main(sys.argv[1:])
"""


def test_ctrl_c_ends_open_streams_and_stops_at_once(cli):
    """uvicorn waits for open connections before the app's shutdown: a stream held it for its graceful-shutdown
    timeout, which then cancelled the stream with a traceback. Now the stream ends at once, telling its client why."""
    proc = subprocess.Popen([sys.executable, "-c", SLOW_SERVE, "serve", "--device-type", "cpu", "--port", "0",
                             "-t", "0"], env=cli.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = re.search(r"http://127\.0\.0\.1:\d+/", proc.stdout.readline()).group(0)
        body = {"messages": HELLO, "max_tokens": 200, "stream": True}  # greedy: 8 s
        with httpx.stream("POST", url + "v1/chat/completions", json=body, timeout=30) as r:
            lines = r.iter_lines()
            assert '"role": "assistant"' in next(lines)
            proc.send_signal(signal.SIGINT)
            interrupted = time.monotonic()
            rest = [line for line in lines if line]
            ended = time.monotonic() - interrupted
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    output = proc.stdout.read()
    assert ended < 2, output  # 200 tokens would take 8 s, uvicorn's timeout 5 s
    assert rest[-1] == "data: [DONE]" and json.loads(rest[-2][len("data: "):])["error"]["code"] == \
        "server_shutting_down"
    assert "Traceback" not in output and "ERROR" not in output, output
    assert code == 130 and output.rstrip().endswith("primechat: interrupted")


def test_a_whole_reply_is_stamped_when_its_request_came(env, slow_engine):
    """OpenAI's `created` is the request's time: a reply that took seconds (a list of prompts: minutes) keeps it."""
    with TestClient(create_app(Settings(num_workers=1))) as c:
        before = time.time()
        body = {"model": "base", "prompt": "the", "max_tokens": 60, "temperature": 1.0, "top_k": 0, "seed": 3}
        reply = c.post("/v1/completions", json=body).json()
        assert time.time() - before > 2.4 and reply["usage"]["completion_tokens"] == 60  # 40 ms a token
        assert int(before) <= reply["created"] <= int(before) + 1  # the end's time would be 2 s later at least
