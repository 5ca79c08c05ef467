"""`dsv4 serve`: an OpenAI-compatible HTTP server over the local engine.

Routes: `POST /v1/chat/completions` (JSON or server-sent events), `GET /v1/models`,
`GET /v1/models/{id}`, `GET /health` (never behind the API key, for probes).

Connections are handled on threads, but one engine worker serves the requests in arrival
order from a bounded queue (a full queue answers 429): the model runs one sequence at a
time, and a prefix cache lets a request that extends an earlier conversation skip the
prefill of what it shares with it. Requests are checked before they are queued, so a bad
one costs no engine time and gets a 4xx in OpenAI's error shape; the server keeps serving.
"""

from __future__ import annotations

import errno
import hmac
import json
import logging
import queue
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

import torch

from dsv4.engine.dsml import EOS, ParsedCompletion, StreamEvent, StreamParser
from dsv4.engine.encoding import EncodingError, encode_messages
from dsv4.engine.generate import generate
from dsv4.engine.openai_api import (
    ChatRequest,
    ChunkBuilder,
    RequestError,
    RequestLimits,
    completion_response,
    error_body,
    model_card,
    models_list,
    parse_request,
    sse,
    usage,
)
from dsv4.engine.prefix_cache import PrefixCache
from dsv4.engine.tokenizer import EOS_ID

log = logging.getLogger("dsv4.serve")
# An oversized body up to this many times the limit is read and dropped before the 413.
_DRAIN_FACTOR = 8


@dataclass
class ServerConfig:
    """How the server listens and what it accepts."""

    host: str = "127.0.0.1"
    """Interface to bind; loopback unless told otherwise."""
    port: int = 8000
    """TCP port; 0 picks a free one (see `ChatServer.port`)."""
    api_key: str | None = None
    """When set, `/v1/*` requires `Authorization: Bearer <api_key>`."""
    served_model_name: str = "deepseek-v4"
    """The model name clients must send."""
    queue_size: int = 16
    """Requests that may wait for the engine; one more is a 429."""
    max_new_tokens: int = 1024
    """Most tokens generated per request (the default when a request names none)."""
    max_model_len: int = 65536
    """Prompt plus generated tokens per request."""
    max_body_bytes: int = 8 * 1024 * 1024
    """Largest request body; a larger one is a 413."""
    thinking_default: bool = False
    """Thinking mode for requests without a thinking switch."""
    prefix_cache_size: int = 4
    """Sessions kept for prefix reuse."""

    def __post_init__(self) -> None:
        for name in ("queue_size", "max_new_tokens", "max_model_len", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"ServerConfig.{name}={getattr(self, name)}: expected >= 1")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"ServerConfig.port={self.port}: expected 0..65535 (0: any free)")

    def limits(self) -> RequestLimits:
        return RequestLimits(self.served_model_name, self.max_new_tokens, self.thinking_default)


class QueueFull(RuntimeError):
    """The engine queue holds `queue_size` waiting requests already."""


class AddressError(OSError):
    """The server cannot listen on `host:port` (in use, not allowed, unknown host).

    `part` says which half of the address to change: "host" or "port".
    """

    def __init__(self, message: str, part: Literal["host", "port"]) -> None:
        super().__init__(message)
        self.part = part


def _address_error(host: str, port: int, exc: OSError) -> AddressError:
    reasons = {errno.EADDRINUSE: "the port is already in use",
               errno.EACCES: "permission denied (ports below 1024 need privileges)",
               errno.EADDRNOTAVAIL: "the address is not one of this machine's"}  # fmt: skip
    if isinstance(exc, socket.gaierror):
        reason, part = f"unknown host ({exc.strerror})", "host"
    else:
        reason = reasons.get(exc.errno or 0, exc.strerror or str(exc))
        part = "host" if exc.errno == errno.EADDRNOTAVAIL else "port"
    return AddressError(f"cannot listen on {host}:{port}: {reason}", part)


def check_address(host: str, port: int) -> None:
    """Bind and release `host:port` as the server will, so that a port in use is reported
    before a model is loaded. Raises `AddressError`."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            # As `http.server` does, so that a port in TIME_WAIT is not a false alarm.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError as exc:
        raise _address_error(host, port, exc) from exc


# ---------------------------------------------------------------------------------------------
# The engine worker: one thread, requests in order


@dataclass
class _Outcome:
    parsed: ParsedCompletion
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int


@dataclass
class _Item:
    """What the worker hands the connection thread: parser events, the end, or an error."""

    kind: Literal["events", "done", "error"]
    events: list[StreamEvent] = field(default_factory=list)
    outcome: _Outcome | None = None
    error: str = ""


@dataclass
class _Job:
    request: ChatRequest
    prompt_ids: list[int]
    out: queue.Queue[_Item] = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    completion_id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex[:24]}")


class EngineWorker:
    """Runs queued jobs one at a time: prefix-cache lookup, generation, DSML parsing."""

    def __init__(self, model: Any, tokenizer: Any, queue_size: int, cache_size: int) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.cache = PrefixCache(model, cache_size)
        self.jobs: queue.Queue[_Job] = queue.Queue(maxsize=queue_size)
        self.busy = False
        self.served = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="dsv4-engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def submit(self, job: _Job) -> None:
        try:
            self.jobs.put_nowait(job)
        except queue.Full as exc:
            raise QueueFull(f"{self.jobs.maxsize} requests are already waiting") from exc

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                job = self.jobs.get(timeout=0.1)
            except queue.Empty:
                continue
            self.busy = True
            try:
                self._serve(job)
            except Exception as exc:  # a failed request must not stop the server
                log.exception("request failed in the engine")
                job.out.put(_Item("error", error=f"the engine failed: {exc}"))
            finally:
                self.busy, self.served = False, self.served + 1

    def _serve(self, job: _Job) -> None:
        if job.cancelled.is_set():
            return
        req, ids = job.request, job.prompt_ids
        parser = StreamParser(tools=req.tools, thinking=req.thinking_mode == "thinking")
        session, reused = self.cache.acquire(ids)
        generated: list[int] = []
        finish = "length"
        for event in generate(session, ids[reused:], req.params, self.tokenizer):
            if event.token_id is not None:
                generated.append(event.token_id)
            finish = event.finish_reason or finish
            if event.text:
                job.out.put(_Item("events", parser.feed(event.text)))
            if job.cancelled.is_set():
                break
        # The last sampled token is never fed back, so the session holds all but that one.
        self.cache.release(session, ids + generated[:-1])
        if finish in ("eos", "stop"):
            job.out.put(_Item("events", parser.feed(EOS)))  # the parser's "turn ended" mark
        job.out.put(_Item("events", parser.flush()))
        outcome = _Outcome(parser.snapshot(), len(ids), len(generated), reused)
        job.out.put(_Item("done", outcome=outcome))


# ---------------------------------------------------------------------------------------------
# HTTP


class _HTTPError(Exception):
    def __init__(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None):
        super().__init__(body["error"]["message"])
        self.status, self.body, self.headers = status, body, headers or {}

    @classmethod
    def of(cls, err: RequestError) -> _HTTPError:
        return cls(err.status, err.body())


def _invalid(status: int, message: str, code: str | None = None) -> _HTTPError:
    return _HTTPError(status, error_body(message, "invalid_request_error", None, code))


class ChatServer:
    """The HTTP front end: routes, checks, and the conversation with the engine worker."""

    def __init__(self, model: Any, tokenizer: Any, config: ServerConfig) -> None:
        self.config, self.tokenizer = config, tokenizer
        self.limits = config.limits()
        self.created = int(time.time())
        self.worker = EngineWorker(model, tokenizer, config.queue_size, config.prefix_cache_size)
        try:
            self.httpd = ThreadingHTTPServer((config.host, config.port), _Handler)
        except OSError as exc:
            raise _address_error(config.host, config.port, exc) from exc
        self.httpd.daemon_threads = True
        self.httpd.app = self  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}/v1"

    def start(self) -> ChatServer:
        """Serve on background threads (returns at once)."""
        self.worker.start()
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve on this thread until interrupted."""
        self.worker.start()
        self.httpd.serve_forever()

    def close(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
        self.httpd.server_close()
        self.worker.stop()

    # -- routes ---------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "model": self.limits.served_model,
            "queue": {
                "waiting": self.worker.jobs.qsize(),
                "capacity": self.config.queue_size,
                "busy": self.worker.busy,
            },
            "requests_served": self.worker.served,
            "prefix_cache": asdict(self.worker.cache.stats()),
        }

    def models(self, model_id: str | None) -> dict[str, Any]:
        name = self.limits.served_model
        if model_id is None:
            return models_list(name, self.created)
        if model_id != name:
            raise _invalid(404, f"the model {model_id!r} does not exist", "model_not_found")
        return model_card(name, self.created)

    def check_auth(self, header: str | None) -> None:
        key = self.config.api_key
        if key is None:
            return
        given = (header or "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), key.encode()):
            raise _invalid(
                401, "invalid or missing API key (Authorization: Bearer KEY)", "invalid_api_key"
            )

    def prepare(self, body: bytes) -> _Job:
        """A request body → a queued-ready job, or an `_HTTPError` (nothing reaches the engine)."""
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise _invalid(400, f"the request body is not valid JSON: {exc}") from exc
        try:
            req = parse_request(data, self.limits)
            prompt = encode_messages(
                req.messages, req.thinking_mode, reasoning_effort=req.reasoning_effort
            )
        except RequestError as exc:
            raise _HTTPError.of(exc) from exc
        except EncodingError as exc:
            raise _invalid(400, f"messages cannot be encoded: {exc}") from exc
        ids = self.tokenizer.encode(prompt)
        room = self.config.max_model_len - len(ids)
        if room < 1:
            raise _invalid(
                400,
                f"the prompt has {len(ids)} tokens; this server's context is "
                f"{self.config.max_model_len} tokens (prompt plus completion)",
                "context_length_exceeded",
            )
        req.params.max_new_tokens = min(req.params.max_new_tokens, room)
        return _Job(req, ids)

    def submit(self, job: _Job) -> None:
        try:
            self.worker.submit(job)
        except QueueFull as exc:
            body = error_body(
                f"the server is busy: {exc}; retry later", "rate_limit_error", None, "queue_full"
            )
            raise _HTTPError(429, body, {"Retry-After": "1"}) from exc


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "dsv4-serve"

    @property
    def app(self) -> ChatServer:
        return self.server.app  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)

    # -- dispatch ---------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._dispatch(self._get)

    def do_POST(self) -> None:
        self._dispatch(self._post)

    def _dispatch(self, route: Any) -> None:
        self._body_read = False
        try:
            route(self.path.split("?", 1)[0].rstrip("/"))
        except _HTTPError as exc:
            self._send_error(exc)
        except Exception as exc:  # a bug in one request must not take the server down
            log.exception("request %s failed", self.path)
            body = error_body(f"internal error: {exc}", "server_error", None, "internal_error")
            self._send_error(_HTTPError(500, body))

    def _send_error(self, exc: _HTTPError) -> None:
        # An unread body would be taken for the next request on a kept-alive connection.
        self.close_connection = self.close_connection or not self._body_read
        self._send_json(exc.status, exc.body, exc.headers)

    def _get(self, path: str) -> None:
        if path == "/health":
            return self._send_json(200, self.app.health())
        if path == "/v1/models" or path.startswith("/v1/models/"):
            self.app.check_auth(self.headers.get("Authorization"))
            model_id = path.removeprefix("/v1/models").removeprefix("/") or None
            return self._send_json(200, self.app.models(model_id))
        if path == "/v1/chat/completions":
            raise _invalid(405, "use POST for /v1/chat/completions", "method_not_allowed")
        raise _invalid(404, f"no route {self.path!r}", "not_found")

    def _post(self, path: str) -> None:
        if path != "/v1/chat/completions":
            raise _invalid(404, f"no route {self.path!r}", "not_found")
        self.app.check_auth(self.headers.get("Authorization"))
        job = self.app.prepare(self._read_body())
        self.app.submit(job)
        (self._stream if job.request.stream else self._respond)(job)

    def _read_body(self) -> bytes:
        raw = self.headers.get("Content-Length")
        if raw is None or not raw.isdigit():
            raise _invalid(411, "a Content-Length header is required", "length_required")
        size, limit = int(raw), self.app.config.max_body_bytes
        if size > limit:
            self._discard(size)
            raise _invalid(
                413, f"the request body has {size} bytes; the limit is {limit}", "request_too_large"
            )
        body = self.rfile.read(size)
        self._body_read = True
        return body

    def _discard(self, size: int) -> None:
        """Read and drop an oversized body, so that the client, still sending, gets the 413
        instead of a broken pipe; past a bound the connection is simply closed."""
        if size > _DRAIN_FACTOR * self.app.config.max_body_bytes:
            return
        while size > 0:
            chunk = self.rfile.read(min(size, 1 << 16))
            if not chunk:
                return
            size -= len(chunk)
        self._body_read = True

    # -- responses --------------------------------------------------------------------------

    def _send_json(self, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _respond(self, job: _Job) -> None:
        for item in _items(job):
            if item.kind == "error":
                body = error_body(item.error, "server_error", None, "engine_error")
                return self._send_json(500, body)
            if item.kind == "done":
                assert item.outcome is not None
                return self._send_json(200, _completion(job, item.outcome))

    def _stream(self, job: _Job) -> None:
        req = job.request
        chunks = ChunkBuilder(job.completion_id, int(time.time()), req.model)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            self._write(sse(chunks.role()))
            for item in _items(job):
                for payload in _sse_payloads(item, chunks, req.include_usage):
                    self._write(sse(payload))
            self._write(sse("[DONE]"))
            self._write(b"")  # the last chunk of a chunked body
        except (BrokenPipeError, ConnectionResetError):
            job.cancelled.set()  # the client left: stop generating for it
            self.close_connection = True

    def _write(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


def _items(job: _Job) -> Iterator[_Item]:
    """The worker's items for `job`, up to and including the last one."""
    while True:
        item = job.out.get()
        yield item
        if item.kind != "events":
            return


def _usage(outcome: _Outcome) -> dict[str, Any]:
    return usage(outcome.prompt_tokens, outcome.completion_tokens, outcome.cached_tokens)


def _completion(job: _Job, outcome: _Outcome) -> dict[str, Any]:
    return completion_response(
        job.completion_id, int(time.time()), job.request.model, outcome.parsed, _usage(outcome)
    )


def _sse_payloads(item: _Item, chunks: ChunkBuilder, include_usage: bool) -> list[Any]:
    if item.kind == "events":
        return [chunks.event(e) for e in item.events]
    if item.kind == "error":
        return [error_body(item.error, "server_error", None, "engine_error")]
    assert item.outcome is not None
    payloads: list[Any] = [chunks.final(item.outcome.parsed)]
    if include_usage:
        payloads.append(chunks.usage(_usage(item.outcome)))
    return payloads


# ---------------------------------------------------------------------------------------------
# Test double: a model that replays scripted completions instead of sampling


class ReplayModel:
    """TEST DOUBLE. Stands in for the model: each request generates the next scripted text.

    Its sessions return logits that put all probability on the next scripted token, so the
    real generation loop, stop handling, prefix cache and DSML translation all run; only the
    weights are replaced. Used by tests and by `dsv4 serve --replay` (demos without weights).
    """

    def __init__(self, completions: list[str], tokenizer: Any, vocab_size: int) -> None:
        if not completions:
            raise ValueError("ReplayModel needs at least one scripted completion")
        self.tokenizer, self.vocab_size = tokenizer, vocab_size
        self._scripts = [tokenizer.encode(text) for text in completions]
        self._next = 0
        self._lock = threading.Lock()

    def new_session(self) -> _ReplaySession:
        return _ReplaySession(self)

    def next_script(self) -> list[int]:
        """The next completion's token ids (the script repeats from the start when used up)."""
        with self._lock:
            script = self._scripts[self._next % len(self._scripts)]
            self._next += 1
            return list(script)

    def one_hot(self, token: int) -> torch.Tensor:
        logits = torch.full((self.vocab_size,), float("-inf"))
        logits[token] = 0.0
        return logits


class _ReplaySession:
    def __init__(self, model: ReplayModel) -> None:
        self.model, self.pos = model, 0
        self._pending: list[int] = []

    def prefill(self, ids: list[int], logits: str = "all") -> torch.Tensor:
        self.pos += len(ids)
        self._pending = self.model.next_script()
        rows = {"all": len(ids), "last": 1, "none": 0}[logits]
        return self._next_logits().expand(rows, -1)

    def decode(self, token_id: int) -> torch.Tensor:
        self.pos += 1
        return self._next_logits()

    def fork(self) -> _ReplaySession:
        twin = _ReplaySession(self.model)
        twin.pos = self.pos
        return twin

    def _next_logits(self) -> torch.Tensor:
        # A script ends with the end-of-sentence token whether or not its text writes one.
        token = self._pending.pop(0) if self._pending else EOS_ID
        return self.model.one_hot(token)
