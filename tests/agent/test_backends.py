"""The three backends: scripted replay, an OpenAI-compatible endpoint, the local engine."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import torch

from dsv4.agent.backend import BackendConfigError, BackendOptions, ModelError, build_backend
from dsv4.agent.endpoint import EndpointBackend, resolve_api_key
from dsv4.agent.local import LocalBackend, common_prefix
from dsv4.agent.prompt import PromptParts, initial_messages, render_prompt
from dsv4.agent.scripted import ScriptedBackend, ScriptError
from dsv4.engine.dsml import ToolCall, render_tool_calls
from dsv4.engine.sampler import SamplingParams
from dsv4.engine.tokenizer import VOCAB_SIZE, get_tokenizer

EOS = "<｜end▁of▁sentence｜>"
TOOLS = [
    {
        "name": "read",
        "description": "Read a file.",
        "parameters": {
            "type": "object",
            "properties": {"file_path": {"type": "string"}},
            "required": ["file_path"],
        },
    }
]
READ = ToolCall("read", {"file_path": "a.py"})
CALL_TEXT = f"Look.</think>\n\n{render_tool_calls([READ])}{EOS}"


def messages() -> list[dict[str, Any]]:
    return initial_messages(PromptParts(task="Fix it."), TOOLS)


def write_script(path: Path, completions: list[str]) -> Path:
    path.write_text("".join(json.dumps({"completion": c}) + "\n" for c in completions))
    return path


# -- scripted ------------------------------------------------------------------------------


def test_scripted_streams_and_parses_with_the_dsml_parser(tmp_path: Path) -> None:
    backend = ScriptedBackend(write_script(tmp_path / "s.jsonl", [CALL_TEXT]))
    streamed: list[tuple[str, Any]] = []
    turn = backend.complete(messages(), TOOLS, lambda k, v: streamed.append((k, v)))
    assert turn.reasoning == "Look." and turn.tool_calls == [READ] and turn.errors == []
    assert "".join(v for k, v in streamed if k == "reasoning") == "Look."
    assert ("tool_call", READ) in streamed
    assert turn.raw == CALL_TEXT and turn.completion_tokens == get_tokenizer().count(CALL_TEXT)


def test_scripted_chat_mode_has_no_reasoning(tmp_path: Path) -> None:
    backend = ScriptedBackend(write_script(tmp_path / "s.jsonl", [f"Hi.{EOS}"]), thinking=False)
    turn = backend.complete(messages(), TOOLS)
    assert (turn.reasoning, turn.content, turn.finish) == ("", "Hi.", "eos")


def test_scripted_running_out_is_a_clear_model_error(tmp_path: Path) -> None:
    backend = ScriptedBackend(write_script(tmp_path / "s.jsonl", [CALL_TEXT]))
    backend.complete(messages(), TOOLS)
    with pytest.raises(ModelError, match=r"s\.jsonl ran out of model turns: it has 1"):
        backend.complete(messages(), TOOLS)


@pytest.mark.parametrize(
    ("line", "needle"), [("not json", "not JSON"), ('{"text": "x"}', "completion")]
)
def test_scripted_rejects_bad_lines_naming_the_line(tmp_path: Path, line: str, needle: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"completion": "ok"}) + "\n" + line + "\n")
    with pytest.raises(ScriptError, match=rf"bad\.jsonl:2: .*{needle}"):
        ScriptedBackend(path)


def test_build_backend_without_a_model_says_how_to_give_one() -> None:
    with pytest.raises(BackendConfigError, match="--model.*--endpoint.*--script"):
        build_backend(BackendOptions())


def test_api_key_precedence() -> None:
    env = {"OPENAI_API_KEY": "o", "DSV4_API_KEY": "d"}
    assert resolve_api_key("flag", env) == "flag"
    assert resolve_api_key(None, env) == "d"
    assert resolve_api_key(None, {"OPENAI_API_KEY": "o"}) == "o"
    assert resolve_api_key(None, {}) is None


# -- endpoint: a small OpenAI-compatible server on 127.0.0.1 ----------------------------


class FakeChatServer(ThreadingHTTPServer):
    """Streams scripted chat-completion chunks (SSE) and records each request."""

    def __init__(self, replies: list[list[dict[str, Any]]]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.replies, self.requests = replies, []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _Handler(BaseHTTPRequestHandler):
    server: FakeChatServer

    def log_message(self, *args: Any) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        body = json.dumps(
            {
                "object": "list",
                "data": [{"id": "dsv4-test", "object": "model", "created": 0, "owned_by": "t"}],
            }
        )
        self._send(200, "application/json", body.encode())

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        request = json.loads(self.rfile.read(length))
        request["_auth"] = self.headers.get("Authorization")
        self.server.requests.append(request)
        deltas = self.server.replies.pop(0)
        chunks = [_chunk(d) for d in deltas]
        stream = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
        self._send(200, "text/event-stream", stream.encode())

    def _send(self, code: int, kind: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _chunk(delta: dict[str, Any]) -> dict[str, Any]:
    finish = delta.pop("_finish", None)
    return {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "dsv4-test",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def _tool_delta(args: str, first: bool) -> dict[str, Any]:
    function: dict[str, Any] = {"arguments": args}
    call: dict[str, Any] = {"index": 0, "function": function}
    if first:
        call.update(id="call_x", type="function")
        function["name"] = "read"
    return {"tool_calls": [call]}


@pytest.fixture()
def server() -> Iterator[FakeChatServer]:
    srv = FakeChatServer([])
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield srv
    srv.shutdown()
    thread.join(timeout=5)
    srv.server_close()


def test_endpoint_streams_reasoning_content_and_native_tool_calls(
    server: FakeChatServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DSV4_API_KEY", "secret-key")
    server.replies.append(
        [
            {"role": "assistant", "reasoning_content": "Need "},
            {"reasoning_content": "a file."},
            {"content": "Reading."},
            _tool_delta('{"file_', True),
            _tool_delta('path": "a.py"}', False),
            {"_finish": "tool_calls"},
        ]
    )
    backend = build_backend(BackendOptions(endpoint=server.url))
    streamed: list[tuple[str, Any]] = []
    turn = backend.complete(messages(), TOOLS, lambda k, v: streamed.append((k, v)))
    assert (turn.reasoning, turn.content) == ("Need a file.", "Reading.")
    assert turn.tool_calls == [ToolCall("read", {"file_path": "a.py"}, "call_x")]
    assert turn.errors == [] and turn.finish == "eos"
    assert [k for k, _ in streamed] == ["reasoning", "reasoning", "content", "tool_call"]
    sent = server.requests[0]
    assert sent["_auth"] == "Bearer secret-key" and sent["stream"] is True
    assert sent["model"] == "dsv4-test"  # the server's only model, asked for
    assert sent["tools"] == [{"type": "function", "function": TOOLS[0]}]
    assert all("tools" not in m for m in sent["messages"])
    assert sent["chat_template_kwargs"] == {"thinking": True}  # thinking mode is the default


def test_endpoint_bad_arguments_and_truncation_become_errors(server: FakeChatServer) -> None:
    server.replies.append([_tool_delta('{"file_path": ', True), {"_finish": "length"}])
    backend = EndpointBackend(server.url, model="m")
    turn = backend.complete(messages(), TOOLS)
    assert turn.tool_calls == [] and turn.finish == "length"
    assert "not valid JSON" in turn.errors[0] and "read" in turn.errors[0]


def test_endpoint_sends_tool_results_back(server: FakeChatServer) -> None:
    server.replies.append([{"content": "Done."}, {"_finish": "stop"}])
    history = messages() + [
        {
            "role": "assistant",
            "content": "",
            "reasoning_content": "r",
            "tool_calls": [
                {
                    "id": "call_x",
                    "type": "function",
                    "function": {"name": "read", "arguments": '{"file_path": "a.py"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_x", "content": "1\tx = 1"},
    ]
    turn = EndpointBackend(server.url, model="m").complete(history, TOOLS)
    assert turn.content == "Done." and turn.tool_calls == []
    assert server.requests[0]["messages"][-1] == history[-1]


def test_endpoint_down_is_a_model_error() -> None:
    backend = EndpointBackend("http://127.0.0.1:9/v1", model="m", timeout_s=2)
    with pytest.raises(ModelError, match="127.0.0.1:9"):
        backend.complete(messages(), TOOLS)


# -- local: prefix reuse over a session that holds token state ---------------------------


class ReplaySession:
    """A logits session whose next token comes from its model's queued replies; records
    what it was fed. It can fork (a copy) but not truncate."""

    def __init__(self, model: ReplayModel, held: list[int] | None = None) -> None:
        self.model, self.held = model, list(held or [])

    def prefill(self, ids: list[int], logits: str = "all") -> torch.Tensor:
        self.held += ids
        self.model.prefilled.append(len(ids))
        rows = {"all": len(ids), "last": 1, "none": 0}[logits]
        return self.model.logits(new_turn=True).expand(rows, VOCAB_SIZE)

    def decode(self, token_id: int) -> torch.Tensor:
        self.held.append(token_id)
        self.model.pending.pop(0)
        return self.model.logits()

    def fork(self) -> ReplaySession:
        return type(self)(self.model, self.held)


class TruncatingSession(ReplaySession):
    def truncate(self, n: int) -> None:
        self.held = self.held[:n]


class ReplayModel:
    name = "replay"

    def __init__(self, replies: list[str], session_type: type = TruncatingSession) -> None:
        tok = get_tokenizer()
        self.queue = [tok.encode(r) for r in replies]
        self.pending: list[int] = []
        self.prefilled: list[int] = []  # tokens fed by each prefill call, in order
        self.session_type = session_type
        self.sessions: list[ReplaySession] = []

    def new_session(self) -> ReplaySession:
        self.sessions.append(self.session_type(self))
        return self.sessions[-1]

    def logits(self, new_turn: bool = False) -> torch.Tensor:
        # A finished reply leaves only its EOS (sampled, never fed back): start the next one.
        if new_turn and len(self.pending) <= 1:
            self.pending = list(self.queue.pop(0))
        logits = torch.zeros(VOCAB_SIZE)
        logits[self.pending[0]] = 1.0
        return logits


def tool_turn_history() -> list[dict[str, Any]]:
    return messages() + [
        {
            "role": "assistant",
            "content": "",
            "reasoning_content": "Look.",
            "tool_calls": [
                {
                    "id": "c",
                    "type": "function",
                    "function": {"name": "read", "arguments": '{"file_path": "a.py"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c", "content": "1\tx = 1"},
    ]


@pytest.mark.parametrize("session_type", [TruncatingSession, ReplaySession])
def test_local_backend_prefills_only_new_tokens_after_the_first_turn(session_type: type) -> None:
    tok = get_tokenizer()
    model = ReplayModel([CALL_TEXT, f"Done.</think>Fixed.{EOS}"], session_type)
    backend = LocalBackend(model, tok, SamplingParams(temperature=0, max_new_tokens=200))
    first = backend.complete(messages(), TOOLS)
    assert first.tool_calls == [READ] and first.reused_tokens == 0
    history = tool_turn_history()
    second = backend.complete(history, TOOLS)
    assert second.content == "Fixed."
    assert sum(model.prefilled) + 1 < first.prompt_tokens + second.prompt_tokens
    if session_type is TruncatingSession:
        # Everything the session held was reused: the first prompt and the first reply.
        assert second.reused_tokens == first.prompt_tokens + first.completion_tokens - 1
        assert model.prefilled == [first.prompt_tokens, second.prompt_tokens - second.reused_tokens]
    else:
        # The reply re-encodes identically, so the session continues without a restart.
        assert second.reused_tokens >= first.prompt_tokens
    held = backend.session.held
    assert held[: second.prompt_tokens] == tok.encode(render_prompt(history, TOOLS))


@pytest.mark.parametrize("session_type", [TruncatingSession, ReplaySession])
def test_local_backend_restarts_from_the_common_prefix_when_the_prompt_diverges(
    session_type: type,
) -> None:
    tok = get_tokenizer()
    model = ReplayModel([f"a</think>One.{EOS}", f"b</think>Two.{EOS}"], session_type)
    backend = LocalBackend(model, tok, SamplingParams(temperature=0, max_new_tokens=50))
    first = backend.complete(messages(), TOOLS)
    # A follow-up that does not extend the first reply (the reply was edited away).
    other = messages() + [
        {"role": "assistant", "content": "Other.", "reasoning_content": "x"},
        {"role": "user", "content": "And now?"},
    ]
    turn = backend.complete(other, TOOLS)
    assert turn.content == "Two."
    assert first.prompt_tokens - 1 <= turn.reused_tokens < turn.prompt_tokens
    expected = tok.encode(render_prompt(other, TOOLS))
    assert backend.session.held[: turn.prompt_tokens] == expected


def test_common_prefix() -> None:
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([1, 2], [1, 2, 3]) == 2
    assert common_prefix([], [1]) == 0
