"""A real OpenAI-compatible HTTP server on 127.0.0.1 with scripted answers (no patching).

Tests queue one-off replies (errors, bad JSON, delays) and set a responder for the rest; every
request body is recorded so tests can count what the client really sent.

It also serves the Batch API the way OpenAI documents it: ``POST /v1/files`` (multipart
upload, purpose ``batch``), ``POST /v1/batches``, ``GET /v1/batches/{id}`` and
``GET /v1/files/{id}/content``. A batch advances one status per poll (validating →
in_progress → completed after ``polls_to_complete`` polls) and answers each line with
``batch_responder`` (default: the chat responder); its bodies go to ``batch_bodies``, not to
``requests``, and every HTTP call is logged in ``calls``.
"""

from __future__ import annotations

import json
import re
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
        self.calls: list[tuple[str, str]] = []
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.batch_bodies: list[dict[str, Any]] = []
        self.batch_responder: Responder | None = None
        self.batch_errors: set[str] = set()  # custom_ids answered with an error line
        self.polls_to_complete = 2
        self.batch_status_final = "completed"
        self.expire: set[str] = set()  # batch ids that run only their first half, then expire
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                return

            def do_GET(self) -> None:
                outer.calls.append(("GET", self.path))
                batch = re.fullmatch(r"/v1/batches/([\w-]+)", self.path)
                content = re.fullmatch(r"/v1/files/([\w-]+)/content", self.path)
                if batch:
                    found = outer._poll(batch.group(1))
                    self._send(200 if found else 404, found or {"error": {"message": "no"}},
                               {})
                elif content and content.group(1) in outer.files:
                    self._send_bytes(outer.files[content.group(1)], "application/octet-stream")
                else:  # /v1/models, for health checks
                    self._send(200, {"object": "list", "data": [{"id": "scripted"}]}, {})

            def do_POST(self) -> None:
                outer.calls.append(("POST", self.path))
                length = int(self.headers.get("content-length", 0))
                raw = self.rfile.read(length)
                if self.path == "/v1/files":
                    self._send(200, outer._upload(self.headers["content-type"], raw), {})
                    return
                if self.path == "/v1/batches":
                    self._send(200, outer._create_batch(json.loads(raw)), {})
                    return
                body = json.loads(raw or b"{}")
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

            def _send_bytes(self, data: bytes, content_type: str) -> None:
                self.send_response(200)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

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
        # A short poll: stop() waits for the loop to notice (0.5 s by default, on every test).
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)

    def _next(self, body: dict[str, Any]) -> Reply:
        with self._lock:
            self.requests.append(body)
            if self.fail_after is not None and len(self.requests) > self.fail_after:
                return Reply(status=400)
            return self.queue.popleft() if self.queue else Reply()

    # -- Batch API ----------------------------------------------------------------------------
    def _upload(self, content_type: str, raw: bytes) -> dict[str, Any]:
        """Store the ``file`` part of a multipart upload; answer a FileObject."""
        from email.parser import BytesParser
        from email.policy import default

        message = BytesParser(policy=default).parsebytes(
            f"Content-Type: {content_type}\r\n\r\n".encode() + raw)
        parts = {p.get_param("name", header="content-disposition"): p
                 for p in message.iter_parts()}
        data = parts["file"].get_payload(decode=True)
        purpose = parts["purpose"].get_payload(decode=True).decode()
        with self._lock:
            file_id = f"file-{len(self.files) + 1}"
            self.files[file_id] = data
        return {"id": file_id, "object": "file", "bytes": len(data),
                "created_at": int(time.time()), "filename": parts["file"].get_filename(),
                "purpose": purpose, "status": "processed"}

    def _create_batch(self, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            batch_id = f"batch_{len(self.batches) + 1}"
            lines = self.files[body["input_file_id"]].decode().splitlines()
            self.batches[batch_id] = {
                "id": batch_id, "object": "batch", "endpoint": body["endpoint"],
                "input_file_id": body["input_file_id"],
                "completion_window": body["completion_window"], "status": "validating",
                "created_at": int(time.time()), "metadata": body.get("metadata"),
                "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
                "polls": 0}
            return self._public(batch_id)

    def _public(self, batch_id: str) -> dict[str, Any]:
        return {k: v for k, v in self.batches[batch_id].items() if k != "polls"}

    def _poll(self, batch_id: str) -> dict[str, Any] | None:
        """Advance the batch one step per poll; run its lines when it completes."""
        with self._lock:
            batch = self.batches.get(batch_id)
            if batch is None:
                return None
            if batch["status"] in ("validating", "in_progress"):
                batch["polls"] += 1
                batch["status"] = "in_progress"
                if batch["polls"] >= self.polls_to_complete:
                    self._run_batch(batch)
            return self._public(batch_id)

    def _run_batch(self, batch: dict[str, Any]) -> None:
        out, errors = [], []
        responder = self.batch_responder or self.responder
        lines = self.files[batch["input_file_id"]].decode().splitlines()
        if batch["id"] in self.expire:
            lines = lines[:len(lines) // 2]
        for raw in lines:
            line = json.loads(raw)
            self.batch_bodies.append(line["body"])
            if line["custom_id"] in self.batch_errors:
                errors.append({"id": "r", "custom_id": line["custom_id"], "response": {
                    "status_code": 500, "body": {"error": {"message": "scripted"}}},
                    "error": None})
                continue
            content = responder(line["body"])
            prompt_chars = sum(len(m.get("content") or "") for m in line["body"]["messages"])
            out.append({"id": "r", "custom_id": line["custom_id"], "error": None, "response": {
                "status_code": 200, "request_id": "req", "body": {
                    "id": "chatcmpl-batch", "object": "chat.completion", "created": 0,
                    "model": line["body"]["model"],
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": content}}],
                    "usage": {"prompt_tokens": prompt_chars // 4,
                              "completion_tokens": len(content) // 4,
                              "total_tokens": (prompt_chars + len(content)) // 4}}}})
        for kind, rows in (("output_file_id", out), ("error_file_id", errors)):
            if rows:
                file_id = f"file-{len(self.files) + 1}"
                self.files[file_id] = "".join(json.dumps(r) + "\n" for r in rows).encode()
                batch[kind] = file_id
        batch["status"] = "expired" if batch["id"] in self.expire else self.batch_status_final
        batch["request_counts"] = {"total": len(out) + len(errors), "completed": len(out),
                                   "failed": len(errors)}

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
