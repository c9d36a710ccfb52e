"""Real ``p4r serve`` processes under what issue 18 threw at them: a 250 MB body, 1,000
connections that never finish their head, an oversized head, a connection flood, SIGTERM,
``drop`` and ``prune`` while serving, credentials in the Qdrant URL, and TLS. Each asserts
answers (and what the process holds), not just exit codes."""

from __future__ import annotations

import contextlib
import os
import re
import select
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from p4r.bench.serve import free_port
from p4r.settings import Settings
from tests.serve.conftest import REPO, LiveServer, start_server, stop_server
from tests.serve.test_processes import BODY, _demo_v2, wait_until

pytestmark = pytest.mark.system  # every test starts `p4r serve` processes

MB = 1024 * 1024


def status_of(proc_pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in bytes."""
    fields = {}
    for line in Path(f"/proc/{proc_pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) * 1024
    return fields


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``python -m p4r.cli ARGS`` with this test's environment."""
    return subprocess.run([sys.executable, "-m", "p4r.cli", *args], capture_output=True,
                          text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.fixture
def server(demo_settings: Settings, tmp_path: Path) -> Iterator[LiveServer]:
    live = start_server(tmp_path, "--dataset", "demo",
                        env={"P4R_SERVE__HEADER_TIMEOUT": "2", "P4R_SERVE__BODY_TIMEOUT": "3"})
    yield live
    stop_server(live)


# -- big bodies ----------------------------------------------------------------------------------
def _send_until_answered(port: int, head: bytes, chunk: bytes, total: int) -> dict[str, Any]:
    """Send ``head`` then up to ``total`` bytes of body; stop at the server's answer or its
    close. Returns the answer, bytes sent, and seconds taken."""
    start = time.monotonic()
    sent = 0
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        while sent < total:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
            try:
                sock.sendall(chunk)
            except OSError:  # reset or broken pipe: the server closed
                break
            sent += len(chunk)
        sock.settimeout(10)
        with contextlib.suppress(OSError):
            while part := sock.recv(65536):
                answer += part
    return {"answer": answer, "sent": sent, "seconds": time.monotonic() - start}


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_a_250_mb_body_is_refused_fast_with_constant_memory(server: LiveServer,
                                                            declared: bool) -> None:
    before = status_of(server.proc.pid)
    total = 250 * MB
    chunk = b"x" * MB
    if declared:
        head = (f"POST /v1/rerank HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: "
                f"application/json\r\ncontent-length: {total}\r\n\r\n").encode()
        body = chunk
    else:
        head = (b"POST /v1/rerank HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: "
                b"application/json\r\ntransfer-encoding: chunked\r\n\r\n")
        body = b"%x\r\n" % len(chunk) + chunk + b"\r\n"
    result = _send_until_answered(server.port, head, body, total)
    after = status_of(server.proc.pid)
    print(f"\n{'declared' if declared else 'chunked'} 250 MB body: refused after "
          f"{result['sent'] / MB:.1f} MB sent in {result['seconds']:.2f} s; server RSS "
          f"{before['VmRSS'] / MB:.0f} → {after['VmRSS'] / MB:.0f} MB, peak "
          f"{before['VmHWM'] / MB:.0f} → {after['VmHWM'] / MB:.0f} MB")
    assert result["answer"].startswith(b"HTTP/1.1 413 "), result["answer"][:200]
    assert b'"code":"payload_too_large"' in result["answer"].replace(b" ", b"")
    assert result["seconds"] < 10
    assert result["sent"] < 64 * MB  # refused at the limit (4 MiB), not after the body
    assert after["VmHWM"] - before["VmHWM"] < 64 * MB
    assert server.request("GET", "/healthz")[0] == 200


# -- slow and oversized heads, too many connections ----------------------------------------------
def _unfinished(port: int, count: int) -> list[socket.socket]:
    """``count`` connections that send half a request head and then nothing."""
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        socks.append(sock)
    return socks


def test_1000_unfinished_heads_do_not_stop_healthz_and_are_closed(server: LiveServer) -> None:
    socks = _unfinished(server.port, 1000)
    try:
        start = time.monotonic()
        status, body = server.request("GET", "/healthz", timeout=5)
        took = time.monotonic() - start
        print(f"\n/healthz beside 1000 unfinished heads: {took * 1000:.1f} ms")
        assert (status, body["status"]) == (200, "ok")
        assert took < 1.0
        # P4R_SERVE__HEADER_TIMEOUT=2: each is answered 408 and closed.
        time.sleep(2.5)
        answers = []
        for sock in socks:
            sock.settimeout(5)
            data = b""
            with contextlib.suppress(OSError):
                while part := sock.recv(4096):
                    data += part
            answers.append(data)
        assert all(a.startswith(b"HTTP/1.1 408 ") for a in answers), {a[:40] for a in answers}
        assert b"P4R_SERVE__HEADER_TIMEOUT" in answers[0]
    finally:
        for sock in socks:
            sock.close()
    assert server.request("GET", "/healthz")[0] == 200


def test_an_oversized_head_is_refused(server: LiveServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        with contextlib.suppress(OSError):
            for _ in range(200):  # 200 KB of headers, over the 64 KiB limit
                sock.sendall(b"X-Big: " + b"a" * 1017 + b"\r\n" + b"X-Pad: " + b"b" * 1014
                             + b"\r\n")
        sock.settimeout(10)
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:100]


def test_a_slow_body_is_cut_off(server: LiveServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/rerank HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: "
                     b"application/json\r\ncontent-length: 100\r\n\r\n{\"user")
        sock.settimeout(10)
        start = time.monotonic()
        answer = sock.recv(4096)
        took = time.monotonic() - start
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:100]
    assert 2.0 < took < 8.0  # P4R_SERVE__BODY_TIMEOUT=3


def test_connections_over_the_cap_are_refused_at_once(demo_settings: Settings,
                                                      tmp_path: Path) -> None:
    live = start_server(tmp_path, "--dataset", "demo",
                        env={"P4R_SERVE__MAX_CONNECTIONS": "40",
                             "P4R_SERVE__HEADER_TIMEOUT": "2"})
    socks = _unfinished(live.port, 40)
    try:
        extra = socket.create_connection(("127.0.0.1", live.port), timeout=10)
        extra.settimeout(5)
        answer = extra.recv(4096)
        extra.close()
        assert answer.startswith(b"HTTP/1.1 503 "), answer[:100]
        assert b"P4R_SERVE__MAX_CONNECTIONS" in answer
    finally:
        for sock in socks:
            sock.close()
    # Once the idle ones are gone, new connections are served again.
    wait_until(lambda: _healthz_ok(live), timeout=10)
    stop_server(live)


def _healthz_ok(live: LiveServer) -> bool:
    with contextlib.suppress(OSError):
        return live.request("GET", "/healthz", timeout=2)[0] == 200
    return False


# -- shutdown ------------------------------------------------------------------------------------
@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_shuts_down_cleanly_with_status_0(demo_settings: Settings, tmp_path: Path,
                                                   workers: str) -> None:
    live = start_server(tmp_path, "--dataset", "demo", "--workers", workers)
    assert live.request("POST", "/v1/rerank", BODY)[0] == 200
    live.proc.send_signal(signal.SIGTERM)
    assert live.proc.wait(timeout=30) == 0
    output = live.output()
    assert "Traceback" not in output, output
    assert "Finished server process" in output or "Received SIGTERM" in output, output


# -- drop and prune while serving ----------------------------------------------------------------
def test_drop_while_serving_answers_503_not_indexed(demo_settings: Settings,
                                                     tmp_path: Path) -> None:
    live = start_server(tmp_path, "--dataset", "demo", "--reload-interval", "0.3",
                        "--allow-anonymous-writes")
    try:
        assert live.request("POST", "/v1/rerank", BODY)[0] == 200
        dropped = cli("index", "drop", "--dataset", "demo", "--yes")
        assert dropped.returncode == 0, dropped.stdout + dropped.stderr
        ready = wait_until(lambda: _not_ready(live), timeout=20)
        assert ready["code"] == "not_indexed" and ready["version"] is None
        status, body = live.request("POST", "/v1/rerank", BODY)
        assert (status, body["error"]["code"]) == (503, "not_indexed")
        status, body = live.request("POST", "/v1/interactions", {"interactions": [
            {"user_id": "u-ben", "item_id": "tide-sushi", "timestamp": 1.75e9}]})
        assert (status, body["error"]["code"]) == (503, "not_indexed")
        assert "run: p4r" in body["error"]["message"]
        assert str(demo_settings.data_dir) not in str(body)
    finally:
        stop_server(live)
    assert "Traceback" not in live.output()


def _not_ready(live: LiveServer) -> dict[str, Any] | None:
    status, body = live.request("GET", "/readyz")
    return body if status == 503 else None


def _deleted_store_files(pid: int, data_dir: Path) -> list[str]:
    """Files under the data dir this process still maps or holds open after they were
    deleted (what keeps a pruned version's disk space)."""
    held = []
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        if str(data_dir) in line and line.endswith("(deleted)"):
            held.append(line.split(maxsplit=5)[-1])
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if str(data_dir) in target and target.endswith("(deleted)"):
                held.append(target)
    return held


def test_prune_while_serving_never_answers_404_and_frees_the_old_version(
        demo_settings: Settings, tmp_path: Path) -> None:
    live = start_server(tmp_path, "--dataset", "demo", "--reload-interval", "0.5")
    answers: list[tuple[int, Any]] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            answers.append(live.request("POST", "/v1/rerank", BODY))

    thread = threading.Thread(target=hammer)
    try:
        thread.start()
        # --full: a small change would be an overlay on v1, and prune keeps an overlay's base
        upsert = cli("index", "upsert", "--dataset", "demo", "--full", "--data-dir",
                     str(_demo_v2(tmp_path)))
        assert upsert.returncode == 0, upsert.stdout + upsert.stderr
        pruned = cli("index", "prune", "--dataset", "demo", "--keep", "1", "--yes")
        assert pruned.returncode == 0, pruned.stdout + pruned.stderr
        assert "pruned 1 version" in pruned.stdout
        wait_until(lambda: live.request("GET", "/readyz")[1]["version"] == 2, timeout=30)
        after = len(answers)
        wait_until(lambda: len(answers) >= after + 3)
    finally:
        stop.set()
        thread.join()
    try:
        print(f"\nprune while serving: {len(answers)} answers, "
              f"{sum(1 for s, _ in answers if s == 200)} of them 200")
        statuses = {status for status, _ in answers}
        assert statuses <= {200, 503}, statuses
        gone = {body["error"]["code"] for status, body in answers if status == 503}
        assert gone <= {"version_gone"}, gone
        assert answers[-1][0] == 200 and answers[-1][1]["version"] == 2
        # The server let go of version 1: no deleted file of the store is mapped or open.
        held = wait_until(lambda: not _deleted_store_files(live.proc.pid,
                                                           demo_settings.data_dir), timeout=10)
        assert held
    finally:
        stop_server(live)
    assert "Traceback" not in live.output()


# -- secrets -------------------------------------------------------------------------------------
def test_credentials_in_the_qdrant_url_reach_no_body_and_no_log(demo_settings: Settings,
                                                                 tmp_path: Path) -> None:
    port = free_port()  # nothing listens there: Qdrant is unreachable (loopback only)
    url = f"http://user:pw-S3CRET@127.0.0.1:{port}/?api-key=Q-SECRET-KEY"
    live = start_server(tmp_path, "--dataset", "demo", "--access-log", wait_ready=False,
                        env={"P4R_BACKEND": "server", "P4R_QDRANT__URL": url})
    try:
        bodies = [live.request("GET", "/readyz"), live.request("POST", "/v1/rerank", BODY),
                  live.request("GET", "/healthz?api-key=CLIENT-SECRET")]
    finally:
        stop_server(live)
    for status, body in bodies[:2]:
        assert status == 503
        text = str(body)
        for secret in ("pw-S3CRET", "Q-SECRET-KEY", "user:", "127.0.0.1", str(port)):
            assert secret not in text, (secret, text)
    output = live.output()
    assert "Q-SECRET-KEY" not in output and "pw-S3CRET" not in output
    assert "CLIENT-SECRET" not in output
    assert "/healthz?api-key=***" in output  # the access log line, masked


# -- exposure and TLS ----------------------------------------------------------------------------
def test_tls_serves_https(demo_settings: Settings, tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    made = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                           "-keyout", str(key), "-out", str(cert), "-days", "1",
                           "-subj", "/CN=localhost",
                           "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                          capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    context = ssl.create_default_context(cafile=str(cert))
    live = start_server(tmp_path, "--dataset", "demo", "--ssl-certfile", str(cert),
                        "--ssl-keyfile", str(key), tls=context)
    try:
        assert live.url.startswith("https://")
        status, body = live.request("POST", "/v1/rerank", BODY)
        assert (status, body["version"]) == (200, 1)
        # Plain HTTP is not answered as HTTP.
        with socket.create_connection(("127.0.0.1", live.port), timeout=5) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            sock.settimeout(5)
            reply = b""
            with contextlib.suppress(OSError):
                reply = sock.recv(100)
        assert not re.match(rb"HTTP/1\.1 200", reply)
    finally:
        stop_server(live)
