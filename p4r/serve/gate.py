"""What every HTTP request passes before a route runs: its host, its key, its body size.

One pure ASGI middleware (no per-request objects beyond what the checks need, no dependency
solving), so the cost on the rerank path is a scan of the request's headers:

* **Host** (DNS rebinding): a ``Host`` header outside ``P4R_SERVE__TRUSTED_HOSTS`` answers 400
  ``untrusted_host``. The default is the loopback names.
* **Keys**, Qdrant's model: a read-write key (``P4R_SERVE__API_KEY``) and a read-only key
  (``P4R_SERVE__READ_ONLY_API_KEY``), sent as ``api-key: K`` or ``Authorization: Bearer K`` and
  compared in constant time. Routes under ``/v1/`` need a key once any key is configured (401
  without a valid one); write routes need the read-write key (403 with the read-only one).
  With no read-write key configured, writes answer 403 saying how to enable them, unless
  ``allow_anonymous_writes``. Health, readiness, metrics (unless ``metrics_require_key``),
  the OpenAPI document, ``/docs`` and the explorer's static files need no key.
* **Body size**: a ``Content-Length`` over ``max_body_bytes`` answers 413 before one byte of
  the body is read (one within it is left to the app as it is: the server frames the body by
  that length); a chunked body is read here, counted while it streams and refused as soon as
  it passes the limit. Either way memory stays bounded by the limit, whatever the client
  sends.
* **Path**: a percent-encoded path that is not UTF-8 answers 400 (ids must be valid Unicode,
  path parameters included).
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from urllib.parse import unquote_to_bytes

from pydantic import SecretStr
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from p4r.errors import ConfigError
from p4r.serve.errors import simple_body
from p4r.settings import ServeSettings


class Access(Enum):
    """What a route needs."""

    PUBLIC = "public"
    READ = "read"
    WRITE = "write"


# (method, path or path prefix ending in "/") of every route that changes state.
WRITE_ROUTES = (("POST", "/v1/interactions"), ("DELETE", "/v1/users/"))


def access_of(method: str, path: str, *, metrics_require_key: bool = False) -> Access:
    """The access a request needs, from its method and path alone (before routing)."""
    if path.startswith("/v1/"):
        for write_method, prefix in WRITE_ROUTES:
            if method == write_method and (
                    path == prefix or (prefix.endswith("/") and path.startswith(prefix))):
                return Access.WRITE
        return Access.READ
    if path == "/metrics" and metrics_require_key:
        return Access.READ
    return Access.PUBLIC


@dataclass(frozen=True)
class Keys:
    """The configured keys (as bytes) and whether writes may go without one."""

    write: bytes | None = None
    read: bytes | None = None
    allow_anonymous_writes: bool = False

    @property
    def any(self) -> bool:
        """Whether any key is configured (then every protected route needs one)."""
        return self.write is not None or self.read is not None


def _secret(value: SecretStr | None, file: Path | None, name: str) -> bytes | None:
    """One key from its setting or its file (``P4R_SERVE__<NAME>`` / ``…_FILE``)."""
    variable = f"P4R_SERVE__{name.upper()}"
    if value is not None and file is not None:
        raise ConfigError(f"set {variable} or {variable}_FILE, not both")
    if file is not None:
        try:
            text = file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ConfigError(f"cannot read {variable}_FILE={file}: {reason}") from None
        if not text:
            raise ConfigError(f"{variable}_FILE={file} is empty")
        return text.encode("utf-8")
    if value is None:
        return None
    secret = value.get_secret_value().strip()
    if not secret:
        raise ConfigError(f"{variable} is empty; unset it or give a key")
    return secret.encode("utf-8")


def load_keys(serve: ServeSettings) -> Keys:
    """The keys of ``serve`` settings; ConfigError naming the variable when one is unusable."""
    write = _secret(serve.api_key, serve.api_key_file, "api_key")
    read = _secret(serve.read_only_api_key, serve.read_only_api_key_file, "read_only_api_key")
    if write is not None and read is not None and hmac.compare_digest(write, read):
        raise ConfigError("P4R_SERVE__API_KEY and P4R_SERVE__READ_ONLY_API_KEY are the same "
                          "key; a read-only key must differ from the read-write one")
    return Keys(write=write, read=read, allow_anonymous_writes=serve.allow_anonymous_writes)


def _presented(api_key: bytes | None, authorization: bytes | None) -> bytes | None:
    """The key a request carries: ``api-key: K`` or ``Authorization: Bearer K``."""
    if api_key is not None:
        return api_key.strip()
    if authorization is not None:
        scheme, _, token = authorization.strip().partition(b" ")
        if scheme.lower() == b"bearer" and token.strip():
            return token.strip()
    return None


def check_access(keys: Keys, access: Access, presented: bytes | None) -> tuple[int, str,
                                                                             str] | None:
    """None when the request may go on, else ``(status, code, message)``."""
    if access is Access.PUBLIC:
        return None
    role: Access | None = None
    if keys.any:
        if presented is None:
            return 401, "unauthorized", ("this route needs a key: send 'api-key: KEY' or "
                                         "'Authorization: Bearer KEY'")
        # Both comparisons run whatever the first gives: the time does not tell which matched.
        is_write = keys.write is not None and hmac.compare_digest(presented, keys.write)
        is_read = keys.read is not None and hmac.compare_digest(presented, keys.read)
        if not (is_write or is_read):
            return 401, "unauthorized", "the key is not valid"
        role = Access.WRITE if is_write else Access.READ
    if access is Access.READ:
        return None
    if role is Access.WRITE:
        return None
    if keys.write is None and keys.allow_anonymous_writes:
        return None
    if keys.write is None:
        return 403, "forbidden", ("writes are disabled: this server has no read-write key; "
                                  "set P4R_SERVE__API_KEY (or P4R_SERVE__ALLOW_ANONYMOUS_WRITES="
                                  "true on a private network) and restart it")
    return 403, "forbidden", "the key is read-only; writes need the read-write key"


def host_name(host: bytes) -> str:
    """``b"Example.com:8000"`` → ``"example.com"``, ``b"[::1]:8000"`` → ``"::1"``."""
    text = host.decode("latin-1").strip().lower()
    if text.startswith("["):
        return text[1:text.find("]")] if "]" in text else text[1:]
    return text.rsplit(":", 1)[0] if text.count(":") == 1 else text


class HostRule:
    """Trusted ``Host`` names: exact names, ``*.suffix`` wildcards, or ``*`` for any."""

    def __init__(self, patterns: list[str]) -> None:
        cleaned = [p.strip().lower().strip("[]") for p in patterns if p.strip()]
        self.any = "*" in cleaned
        self.names = frozenset(p for p in cleaned if not p.startswith("*"))
        self.suffixes = tuple(p[1:] for p in cleaned if p.startswith("*."))
        self._seen: dict[bytes, bool] = {}

    def allows(self, host: bytes | None) -> bool:
        """Whether a request with this ``Host`` header may be answered (answers for the
        headers seen are remembered: clients send a handful of values)."""
        if self.any:
            return True
        if not host:
            return False
        known = self._seen.get(host)
        if known is None:
            name = host_name(host)
            known = name in self.names or (bool(self.suffixes) and name.endswith(self.suffixes))
            if len(self._seen) < 1024:  # bounded: a client cycling Host values gains nothing
                self._seen[host] = known
        return known


_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class Gate:
    """Pure ASGI middleware: trusted hosts, keys, body size and path encoding (module doc).

    Args:
        app: the application behind the gate.
        serve: the serve settings (hosts, keys, limits).
        keys: the resolved keys (:func:`load_keys`); read from ``serve`` when omitted.
    """

    def __init__(self, app: ASGIApp, serve: ServeSettings, keys: Keys | None = None) -> None:
        self.app = app
        self.hosts = HostRule(serve.trusted_hosts)
        self.keys = keys if keys is not None else load_keys(serve)
        self.max_body = serve.max_body_bytes
        self.metrics_require_key = serve.metrics_require_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = api_key = authorization = length = None
        for name, value in scope["headers"]:
            if name == b"host":
                host = value
            elif name == b"content-length":
                length = value
            elif name == b"api-key":
                api_key = value
            elif name == b"authorization":
                authorization = value
        method = scope["method"]
        has_body = method in _BODY_METHODS
        if not self.hosts.allows(host):
            shown = host.decode("latin-1")[:100] if host else "(none)"
            await _reject(send, 400, "untrusted_host",
                          f"host {shown!r} is not served here; add it to "
                          "P4R_SERVE__TRUSTED_HOSTS", close=has_body)
            return
        raw_path = scope.get("raw_path") or b""
        if b"%" in raw_path and not _utf8(raw_path):
            await _reject(send, 400, "bad_input", "the path is not valid UTF-8 once "
                          "percent-decoded (ids must be valid Unicode)", close=has_body)
            return
        access = access_of(method, scope["path"], metrics_require_key=self.metrics_require_key)
        if access is not Access.PUBLIC:
            refused = check_access(self.keys, access, _presented(api_key, authorization))
            if refused is not None:
                status, code, message = refused
                headers = [(b"www-authenticate", b'Bearer realm="p4r"')] if status == 401 else []
                await _reject(send, status, code, message, close=has_body, headers=headers)
                return
        if not has_body:
            await self.app(scope, receive, send)
            return
        if length is not None and length.isdigit():
            if int(length) > self.max_body:
                await _reject(send, 413, "payload_too_large", self._too_large(int(length)),
                              close=True)
                return
            # The server frames the body by its Content-Length: it cannot grow past it, so
            # the app reads it as it comes (no copy, no wrapper: the common, cheap path).
            await self.app(scope, receive, send)
            return
        body = await self._read_body(receive, send)  # chunked: counted as it streams
        if body is None:
            return
        await self.app(scope, replay(body, receive), send)

    async def _read_body(self, receive: Receive, send: Send) -> bytes | None:
        """The whole body, counted as it streams; None once refused or disconnected."""
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None  # the client went away
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_body:
                await _reject(send, 413, "payload_too_large", self._too_large(None),
                              close=True)
                return None
            if chunk:
                chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _too_large(self, length: int | None) -> str:
        size = f"{length:,} bytes" if length is not None else "the body"
        return (f"{size} is over the limit of {self.max_body:,} bytes "
                "(P4R_SERVE__MAX_BODY_BYTES)")


def _utf8(raw_path: bytes) -> bool:
    try:
        unquote_to_bytes(raw_path).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the already-read body once, then waits for a disconnect."""
    given = False

    async def replayed() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


async def _reject(send: Send, status: int, code: str, message: str, *, close: bool,
                  headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """Answer an error before any route ran. ``close``: the connection ends after it (an
    unread body would otherwise be read and thrown away)."""
    payload = json.dumps(simple_body(code, message)).encode()
    head = [(b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()), *(headers or [])]
    if close:
        head.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": payload})
