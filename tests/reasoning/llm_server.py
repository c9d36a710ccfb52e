"""A real OpenAI-compatible HTTP server on 127.0.0.1 with scripted answers (no patching).

Tests queue one-off replies (errors, bad JSON, delays) and set a responder for the rest; every
request body is recorded so tests can count what the client really sent.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    """One scripted HTTP answer: a JSON content string for 200, or an error status."""

    content: str | None = None
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


Responder = Callable[[dict[str, Any]], str]


class ScriptedLLM:
    """Serves ``POST /v1/chat/completions``; answers from the queue first, then the responder."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.queue: deque[Reply] = deque()
        self.responder: Responder = lambda request: "{}"
        self.fail_after: int | None = None  # serve this many requests, then 400 for all
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                return

            def do_GET(self) -> None:  # /v1/models, for health checks
                self._send(200, {"object": "list", "data": [{"id": "scripted"}]}, {})

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                reply = outer._next(body)
                if reply.delay:
                    time.sleep(reply.delay)
                if reply.status != 200:
                    payload = {"error": {"message": f"scripted {reply.status}",
                                         "type": "scripted", "code": reply.status}}
                    self._send(reply.status, payload, reply.headers)
                    return
                content = reply.content if reply.content is not None else outer.responder(body)
                prompt_chars = sum(len(m.get("content") or "") for m in body.get("messages", []))
                self._send(200, {
                    "id": "chatcmpl-scripted", "object": "chat.completion",
                    "created": int(time.time()), "model": body.get("model", "scripted"),
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": content}}],
                    "usage": {"prompt_tokens": prompt_chars // 4,
                              "completion_tokens": len(content) // 4,
                              "total_tokens": (prompt_chars + len(content)) // 4},
                }, reply.headers)

            def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str]) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _next(self, body: dict[str, Any]) -> Reply:
        with self._lock:
            self.requests.append(body)
            if self.fail_after is not None and len(self.requests) > self.fail_after:
                return Reply(status=400)
            return self.queue.popleft() if self.queue else Reply()

    @property
    def base_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> ScriptedLLM:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def user_text(request: dict[str, Any]) -> str:
    """The first user message of a chat request."""
    return next(m["content"] for m in request["messages"] if m["role"] == "user")


def system_text(request: dict[str, Any]) -> str:
    """The system message of a chat request."""
    return next(m["content"] for m in request["messages"] if m["role"] == "system")
