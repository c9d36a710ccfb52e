"""Fixtures of the HTTP tests: the demo dataset indexed with the tiny encoder, apps, servers."""

from __future__ import annotations

import contextlib
import json
import os
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from p4r.bench.serve import free_port
from p4r.serve.app import create_app
from p4r.settings import EncoderSettings, Settings, load_settings
from p4r.store import open_backend
from tests.conftest import copy_sparse, upsert

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def tiny_settings(monkeypatch: pytest.MonkeyPatch, tiny_models: dict[str, Path]) -> Settings:
    """Settings of this test's data dir with the tiny encoder; also exported for subprocesses."""
    monkeypatch.setenv("P4R_ENCODER__MODEL", str(tiny_models["a"]))
    monkeypatch.setenv("P4R_SERVE__RELOAD_INTERVAL", "0.2")
    return load_settings()


@pytest.fixture(scope="session")
def _demo_store(tmp_path_factory: pytest.TempPathFactory, _demo_dataset, _tiny_encoder,  # type: ignore[no-untyped-def]
                tiny_models: dict[str, Path]) -> Path:
    """A data dir with the demo dataset indexed once per session (copied by each test)."""
    data_dir = tmp_path_factory.mktemp("demo-store") / "p4r-data"
    settings = Settings(data_dir=data_dir, encoder=EncoderSettings(model=str(tiny_models["a"])))
    with open_backend(settings) as store:
        upsert(_demo_dataset, store, _tiny_encoder)
    return data_dir


@pytest.fixture
def demo_settings(tiny_settings: Settings, _demo_store: Path) -> Settings:
    """The demo dataset indexed (version 1) on Edge in this test's data dir."""
    copy_sparse(_demo_store, tiny_settings.data_dir)
    return tiny_settings


# The in-process client's Host: a loopback name, trusted by default (TestClient's own
# "testserver" is not, as any name outside P4R_SERVE__TRUSTED_HOSTS).
LOCAL = "http://localhost"


def local_client(app: Any, **kwargs: Any) -> TestClient:
    """A TestClient sending ``Host: localhost``."""
    return TestClient(app, base_url=LOCAL, **kwargs)


def rerank_at_once(port: int, bodies: list[dict[str, Any]],
                   rounds: int = 20) -> list[tuple[int, Any]]:
    """``POST /v1/rerank`` each of ``bodies`` on its own kept-alive connection to a server on
    loopback, all written before any answer is read, ``rounds`` times: requests that reach
    the server together. Every (status, JSON body), in the order sent."""
    import asyncio

    from p4r.bench.serve import _post, _read_response

    async def send() -> list[tuple[int, Any]]:
        streams = [await asyncio.open_connection("127.0.0.1", port) for _ in bodies]
        answers = []
        try:
            for _ in range(rounds):
                for (_, writer), body in zip(streams, bodies, strict=True):
                    writer.write(_post("/v1/rerank", body))
                for reader, _ in streams:
                    status, data = await _read_response(reader)
                    answers.append((status, json.loads(data)))
        finally:
            for _, writer in streams:
                writer.close()
        return answers

    return asyncio.run(send())


@pytest.fixture
def client(demo_settings: Settings) -> Iterator[TestClient]:
    """The app serving the indexed demo dataset, in process (lifespan run by the client);
    writes allowed without a key (the key tests turn keys on themselves)."""
    settings = demo_settings.model_copy(update={"serve": demo_settings.serve.model_copy(
        update={"allow_anonymous_writes": True})})
    with local_client(create_app(settings, "demo")) as test_client:
        yield test_client


# -- real servers --------------------------------------------------------------------------------
class LiveServer:
    """A ``p4r serve`` process on a free loopback port; ``key`` is sent when set."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path,
                 key: str | None = None, tls: ssl.SSLContext | None = None) -> None:
        self.proc = proc
        self.port = port
        self.log = log
        self.key = key
        self.tls = tls
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"

    def request(self, method: str, path: str, body: Any = None, timeout: float = 30.0,
                headers: dict[str, str] | None = None) -> tuple[int, Any]:
        """One HTTP call; the status and the decoded JSON (or text) body."""
        data = json.dumps(body).encode() if body is not None else None
        sent = {"content-type": "application/json",
                **({"api-key": self.key} if self.key else {}), **(headers or {})}
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=sent)
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self.tls) as resp:
                status, raw = resp.status, resp.read()
                ctype = resp.headers.get("content-type", "")
        except urllib.error.HTTPError as exc:
            status, raw, ctype = exc.code, exc.read(), exc.headers.get("content-type", "")
        return status, json.loads(raw) if "json" in ctype else raw.decode()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_server(tmp_path: Path, *args: str, wait_ready: bool = True,
                 timeout: float = 120.0, env: dict[str, str] | None = None,
                 key: str | None = None, tls: ssl.SSLContext | None = None) -> LiveServer:
    """Start ``python -m p4r.cli serve ARGS`` with this test's environment (plus ``env``);
    requests send ``key`` when given, over TLS with ``tls``."""
    port = free_port()
    log = tmp_path / f"serve-{port}.log"
    environment = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "p4r.cli", "serve", "--port",
                                 str(port), "--log-level", "info", *args],
                                stdout=out, stderr=subprocess.STDOUT, env=environment,
                                cwd=tmp_path)
    server = LiveServer(proc, port, log, key, tls)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"p4r serve exited:\n{server.output()}"
        with contextlib.suppress(OSError):
            status, _ = server.request("GET", "/readyz", timeout=5)
            if status == 200 or (not wait_ready and status == 503):
                return server
        time.sleep(0.2)
    stop_server(server)
    raise AssertionError(f"p4r serve not up after {timeout}s:\n{server.output()}")


def stop_server(server: LiveServer) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()
