"""The OpenAI-compatible server over loopback: the `openai` client against the golden tiny
checkpoint, tool calls round-tripped through a replaying model (a test double for the
weights), malformed requests, auth, the bounded queue and concurrent clients."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from dsv4.engine.dsml import EOS, ToolCall, render_tool_calls
from dsv4.engine.server import ChatServer, ReplayModel, ServerConfig
from dsv4.engine.tokenizer import VOCAB_SIZE, get_tokenizer

openai = pytest.importorskip("openai")

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden" / "checkpoint"
MODEL = "deepseek-v4"
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "read",
            "description": "Read a file.",
            "parameters": {
                "type": "object",
                "properties": {"file_path": {"type": "string"}, "limit": {"type": "integer"}},
                "required": ["file_path"],
            },
        },
    }
]
TOOL_TURN = (
    "The test imports calc, so read it first.</think>Reading calc.py."
    + "\n\n"
    + render_tool_calls([ToolCall("read", {"file_path": "calc.py", "limit": 40})])
    + EOS
)
ANSWER_TURN = "It divides with //.</think>Use / instead." + EOS


def client(server: ChatServer, **kw: Any) -> Any:
    return openai.OpenAI(
        base_url=server.url, api_key=kw.pop("api_key", "unused"), max_retries=0, timeout=60, **kw
    )


def raw(
    server: ChatServer,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """One request on a fresh connection: (status, decoded JSON body)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null")
    finally:
        conn.close()


def post(server: ChatServer, payload: Any, **headers: str) -> tuple[int, Any]:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return raw(
        server,
        "POST",
        "/v1/chat/completions",
        data,
        {"Content-Type": "application/json", **headers},
    )


def chat(content: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}


def start(model: Any, **config: Any) -> ChatServer:
    return ChatServer(model, get_tokenizer(), ServerConfig(port=0, **config)).start()


@pytest.fixture
def replay() -> Iterator[ChatServer]:
    model = ReplayModel([TOOL_TURN, ANSWER_TURN], get_tokenizer(), VOCAB_SIZE)
    server = start(model, thinking_default=True)
    yield server
    server.close()


# -- the golden tiny checkpoint ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny() -> Iterator[ChatServer]:
    if not GOLDEN.exists():
        pytest.skip("golden checkpoint missing")
    from dsv4.engine import load_model

    server = start(load_model(GOLDEN), max_new_tokens=2, max_model_len=512)
    yield server
    server.close()


def test_openai_client_gets_a_completion(tiny: ChatServer) -> None:
    resp = client(tiny).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hi."}], temperature=0, seed=1
    )
    choice = resp.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert resp.usage.prompt_tokens > 5 and 1 <= resp.usage.completion_tokens <= 2


def test_openai_client_streams(tiny: ChatServer) -> None:
    stream = client(tiny).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Count."}],
        stream=True,
        stream_options={"include_usage": True},
        max_tokens=2,
        temperature=0,
    )
    chunks = list(stream)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert finishes[-1] in ("stop", "length") and all(f is None for f in finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 1


def test_extended_conversation_reuses_cached_prefix(tiny: ChatServer) -> None:
    api = client(tiny)
    messages = [{"role": "user", "content": "Remember the number 7."}]
    # One new token: it is sampled but never fed back, so the session holds exactly the prompt.
    first = api.chat.completions.create(model=MODEL, messages=messages, max_tokens=1)
    messages += [{"role": "assistant", "content": "ok"}, {"role": "user", "content": "Which?"}]
    second = api.chat.completions.create(model=MODEL, messages=messages, max_tokens=1)
    assert second.usage.prompt_tokens_details.cached_tokens == first.usage.prompt_tokens
    assert second.usage.prompt_tokens > first.usage.prompt_tokens


# -- tool calls, through a replaying model -------------------------------------------------------


def test_tool_calls_round_trip(replay: ChatServer) -> None:
    api = client(replay)
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Fix calc."}]
    first = api.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Reading calc.py."
    assert choice.message.model_extra["reasoning_content"].startswith("The test imports calc")
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "read" and call.id
    assert json.loads(call.function.arguments) == {"file_path": "calc.py", "limit": 40}

    # Sent back, the call must re-encode to exactly the DSML the model wrote: the whole first
    # turn (prompt and completion but its end token) is then served from the prefix cache.
    messages += [
        {**choice.message.model_dump(exclude_none=True), "content": choice.message.content},
        {"role": "tool", "tool_call_id": call.id, "content": "def divide(a, b): return a // b"},
    ]
    second = api.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS)
    assert second.choices[0].message.content == "Use / instead."
    assert second.choices[0].finish_reason == "stop"
    held = first.usage.prompt_tokens + first.usage.completion_tokens - 1
    assert second.usage.prompt_tokens_details.cached_tokens == held


def test_streamed_tool_call(replay: ChatServer) -> None:
    stream = client(replay).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Fix calc."}], tools=TOOLS, stream=True
    )
    deltas = [c.choices[0].delta for c in stream if c.choices]
    reasoning = "".join(d.model_extra.get("reasoning_content") or "" for d in deltas)
    calls = [tc for d in deltas for tc in d.tool_calls or []]
    assert reasoning == "The test imports calc, so read it first."
    assert "".join(d.content or "" for d in deltas) == "Reading calc.py."
    assert [(c.index, c.function.name) for c in calls] == [(0, "read")]
    assert json.loads(calls[0].function.arguments)["limit"] == 40


def test_chat_mode_request_sees_no_reasoning(replay: ChatServer) -> None:
    resp = client(replay).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        extra_body={"thinking": {"type": "disabled"}},
    )
    # In chat mode the prompt already closed the reasoning: all text is content.
    assert resp.choices[0].message.content.startswith("The test imports calc")


def test_max_tokens_cuts_with_length(replay: ChatServer) -> None:
    resp = client(replay).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=3
    )
    assert resp.choices[0].finish_reason == "length" and resp.usage.completion_tokens == 3


# -- malformed requests, auth and routes ---------------------------------------------------------


def test_malformed_requests_get_4xx_and_the_server_keeps_serving(replay: ChatServer) -> None:
    cases = [
        (post(replay, b"{not json"), 400),
        (post(replay, chat(model="gpt-4o")), 404),
        (post(replay, {"model": MODEL, "messages": [{"role": "robot", "content": "x"}]}), 400),
        (post(replay, chat(temperature=-1)), 400),
        (post(replay, b"x" * (9 * 1024 * 1024)), 413),
        (post(replay, chat("word " * 70_000)), 400),  # longer than the context
        (raw(replay, "POST", "/v1/chat/completions"), 400),  # an empty body
        (raw(replay, "GET", "/v1/chat/completions"), 405),
        (raw(replay, "GET", "/v1/nothing"), 404),
    ]
    for (status, body), expected in cases:
        assert status == expected, body
        assert set(body["error"]) == {"message", "type", "param", "code"}
    assert post(replay, chat("word " * 70_000))[1]["error"]["code"] == "context_length_exceeded"
    assert raw(replay, "GET", "/health")[0] == 200
    assert post(replay, chat())[0] == 200


def test_missing_content_length_is_411(replay: ChatServer) -> None:
    with socket.create_connection(("127.0.0.1", replay.port), timeout=30) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert sock.makefile("rb").readline().split()[1] == b"411"


def test_models_and_health(replay: ChatServer) -> None:
    assert [m.id for m in client(replay).models.list()] == [MODEL]
    assert raw(replay, "GET", f"/v1/models/{MODEL}")[1]["id"] == MODEL
    assert raw(replay, "GET", "/v1/models/other")[0] == 404
    status, health = raw(replay, "GET", "/health")
    assert status == 200 and health["status"] == "ok" and health["model"] == MODEL
    assert health["queue"]["capacity"] == 16


def test_bearer_token_auth() -> None:
    model = ReplayModel([ANSWER_TURN], get_tokenizer(), VOCAB_SIZE)
    server = start(model, api_key="s3cret")
    try:
        assert post(server, chat())[0] == 401
        assert post(server, chat(), Authorization="Bearer wrong")[0] == 401
        assert raw(server, "GET", "/v1/models")[0] == 401
        assert raw(server, "GET", "/health")[0] == 200
        with pytest.raises(openai.AuthenticationError):
            client(server, api_key="wrong").models.list()
        resp = client(server, api_key="s3cret").chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}]
        )
        assert resp.choices[0].message.content == "It divides with //.</think>Use / instead."
    finally:
        server.close()


def test_binds_loopback_by_default() -> None:
    assert ServerConfig().host == "127.0.0.1"
    server = ChatServer(
        ReplayModel(["x"], get_tokenizer(), VOCAB_SIZE), get_tokenizer(), ServerConfig(port=0)
    )
    try:
        assert server.httpd.server_address[0] == "127.0.0.1"
    finally:
        server.close()


# -- the queue, failures and load ----------------------------------------------------------------


class GatedReplay(ReplayModel):
    """Test double: generation waits for `gate`, so requests pile up in the queue."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.gate = threading.Event()
        self.started = threading.Event()

    def next_script(self) -> list[int]:
        self.started.set()
        assert self.gate.wait(30)
        return super().next_script()


def test_full_queue_answers_429_and_the_rest_complete() -> None:
    model = GatedReplay([ANSWER_TURN], get_tokenizer(), VOCAB_SIZE)
    server = start(model, queue_size=1)
    try:
        with ThreadPoolExecutor(2) as pool:
            running = pool.submit(post, server, chat("first"))
            assert model.started.wait(10)  # the worker is busy with the first request
            waiting = pool.submit(post, server, chat("second"))
            deadline = time.monotonic() + 10
            while server.worker.jobs.qsize() < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            status, body = post(server, chat("third"))
            assert status == 429 and body["error"]["code"] == "queue_full"
            model.gate.set()
            assert running.result(30)[0] == 200 and waiting.result(30)[0] == 200
    finally:
        model.gate.set()
        server.close()


class FailingReplay(ReplayModel):
    """Test double: the first generation raises inside the engine."""

    failures = 1

    def next_script(self) -> list[int]:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("simulated device failure")
        return super().next_script()


def test_engine_failure_is_a_500_and_the_server_recovers() -> None:
    server = start(FailingReplay([ANSWER_TURN], get_tokenizer(), VOCAB_SIZE))
    try:
        status, body = post(server, chat())
        assert status == 500 and "simulated device failure" in body["error"]["message"]
        assert post(server, chat())[0] == 200
    finally:
        server.close()


def test_concurrent_clients_are_all_answered(replay: ChatServer) -> None:
    def one(i: int) -> tuple[str, str]:
        api = client(replay)
        stream = i % 2 == 1
        resp = api.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"client {i}"}], stream=stream
        )
        if stream:
            return "stream", "".join(c.choices[0].delta.content or "" for c in resp if c.choices)
        return "json", resp.choices[0].message.content

    begin = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(16), timeout=60))
    assert len(results) == 16 and all(text for _, text in results)
    assert time.monotonic() - begin < 60
    assert raw(replay, "GET", "/health")[1]["requests_served"] == 16


def test_client_leaving_mid_stream_does_not_stop_the_server(replay: ChatServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", replay.port, timeout=30)
    conn.request(
        "POST",
        "/v1/chat/completions",
        json.dumps(chat(stream=True)).encode(),
        {"Content-Type": "application/json"},
    )
    resp = conn.getresponse()
    assert resp.status == 200 and resp.readline().startswith(b"")
    conn.close()
    assert post(replay, chat())[0] == 200


class ExplodingTokenizer:
    """Test double: the real tokenizer, except that encoding a prompt with "boom" fails."""

    def __init__(self) -> None:
        self.inner = get_tokenizer()

    def encode(self, text: str) -> list[int]:
        if "boom" in text:
            raise RuntimeError("tokenizer exploded")
        return self.inner.encode(text)

    def id_to_token(self, tid: int) -> str:
        return self.inner.id_to_token(tid)


def test_unexpected_error_in_a_request_is_a_500_json_and_the_server_recovers() -> None:
    model = ReplayModel([ANSWER_TURN], get_tokenizer(), VOCAB_SIZE)
    server = ChatServer(model, ExplodingTokenizer(), ServerConfig(port=0)).start()
    try:
        status, body = post(server, chat("boom"))
        assert status == 500 and body["error"]["type"] == "server_error"
        assert post(server, chat("fine"))[0] == 200
    finally:
        server.close()
