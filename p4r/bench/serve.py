"""Load benchmark of ``p4r serve`` on loopback, beside in-process rerank in the same run.

The server runs as real ``p4r serve`` processes on a free port. The load generator is a
minimal HTTP/1.1 keep-alive client on asyncio (a general-purpose client would spend more
time per request than the server does, and the numbers would measure the client); it checks
every status and, before the load, that the HTTP answers equal the in-process ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from p4r.errors import BackendError
from p4r.query import Reranker, open_reranker
from p4r.serve import browse
from p4r.settings import load_settings

HOST = "127.0.0.1"
# How a bench server answers POST /v1/rerank: the settings each path sets (all others come
# from the environment). "lean" is what p4r serve runs by default; the others each turn one
# of its parts off, so a row beside "lean" shows what that part is worth.
SERVER_PATHS: dict[str, dict[str, str]] = {
    "lean": {"P4R_SERVE__LEAN_RERANK": "true", "P4R_SERVE__COALESCE": "true"},
    "alone": {"P4R_SERVE__LEAN_RERANK": "true", "P4R_SERVE__COALESCE": "false"},
    "nopoll": {"P4R_SERVE__LEAN_RERANK": "true", "P4R_SERVE__COALESCE": "true",
               "P4R_SERVE__BUSY_POLL_US": "0"},
    "framework": {"P4R_SERVE__LEAN_RERANK": "false"},
}
DISTURBED = 1.5  # wall/CPU above this: other jobs shared the cores during the row
SERVERS: dict[int, int] = {}  # port → pid of the `p4r serve` process answering on it


@dataclass(frozen=True)
class BenchConfig:
    """What to measure: levels of concurrent clients, worker counts, time per level."""

    dataset: str
    clients: Sequence[int] = (1, 8, 64)
    workers: Sequence[int] = (1, 2)
    duration: float = 5.0
    warmup: float = 1.0
    candidates: int = 20
    distinct_requests: int = 500
    seed: int = 0
    paths: Sequence[str] = ("lean", "framework")  # SERVER_PATHS to run
    rounds: int = 1


@dataclass
class _Tally:
    samples: list[float] = field(default_factory=list)
    errors: int = 0
    cpu: list[float] = field(default_factory=list)  # in-process: CPU seconds per request
    server_cpu: float | None = None  # HTTP: CPU seconds the server's processes spent


def make_bodies(reranker: Reranker, config: BenchConfig) -> list[dict[str, Any]]:
    """Seeded user_id requests: known users, ``candidates`` known items each."""
    users = browse.some_users(reranker, 1000)
    items = [item.item_id for item in browse.some_items(reranker, 5000)]
    if not users or not items:
        raise BackendError(f"dataset {config.dataset!r} has no users or items to benchmark")
    rng = random.Random(config.seed)
    size = min(config.candidates, len(items))
    return [{"user_id": rng.choice(users), "candidates": rng.sample(items, size)}
            for _ in range(config.distinct_requests)]


def in_process_row(reranker: Reranker, bodies: list[dict[str, Any]],
                   config: BenchConfig) -> tuple[dict[str, Any], list[list[dict[str, Any]]]]:
    """Time ``Reranker.rerank`` one request per call; also return the first answers."""
    expected = [[item.as_dict() for item in reranker.rerank(**body).items] for body in bodies[:20]]
    tally = _Tally()
    warm_until = time.perf_counter() + config.warmup
    stop_at = warm_until + config.duration
    index = 0
    while (start := time.perf_counter()) < stop_at:
        cpu = time.process_time()
        reranker.rerank(**bodies[index % len(bodies)])
        if start >= warm_until:
            tally.samples.append(time.perf_counter() - start)
            tally.cpu.append(time.process_time() - cpu)
        index += 1
    return _row("in-process", None, 1, tally, config.duration), expected


def _row(mode: str, workers: int | None, clients: int, tally: _Tally,
         seconds: float) -> dict[str, Any]:
    """A row: wall p50/p99, rate, errors; CPU per request (in process: the caller's, over
    HTTP: the server processes', so the load generator's share is left out) and the
    1-minute load average. An in-process row whose wall/CPU exceeds 1.5 is disturbed."""
    ms = np.asarray(tally.samples or [float("nan")]) * 1000.0
    p50 = float(np.percentile(ms, 50))
    row = {"mode": mode, "workers": workers, "clients": clients,
           "p50_ms": round(p50, 4), "p99_ms": round(float(np.percentile(ms, 99)), 4),
           "rps": round(len(tally.samples) / seconds, 1), "requests": len(tally.samples),
           "errors": tally.errors, "cpu_ms": None, "disturbed": False,
           "load_1m": round(os.getloadavg()[0], 2)}
    if tally.cpu:
        cpu = float(np.percentile(tally.cpu, 50)) * 1000.0
        row.update(cpu_ms=round(cpu, 4), disturbed=bool(p50 / max(cpu, 1e-9) > DISTURBED))
    elif tally.server_cpu is not None and tally.samples:
        row["cpu_ms"] = round(tally.server_cpu / len(tally.samples) * 1000.0, 4)
    return row


# -- the server under test -------------------------------------------------------------------
def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _tree(pid: int) -> Iterator[int]:
    """Process ``pid`` and its descendants that are alive (a server's workers), each once."""
    todo, seen = [pid], set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            children = []
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children", encoding="ascii") as kids:
                    children += [int(child) for child in kids.read().split()]
        except (OSError, ValueError):
            continue  # gone meanwhile
        yield current
        todo += children


def tree_rss_mb(pid: int) -> dict[str, float]:
    """Resident memory (MB) of process ``pid`` and of each descendant alive, by pid: with
    workers, the supervisor holds no index and each worker holds its own."""
    out: dict[str, float] = {}
    for current in _tree(pid):
        with contextlib.suppress(OSError, ValueError, IndexError), \
                open(f"/proc/{current}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    out[str(current)] = round(int(line.split()[1]) / 1024.0, 1)
    return out


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) spent so far by process ``pid`` and its descendants that
    are alive (a server's workers); 0 for those that are gone."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for current in _tree(pid):
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(f"/proc/{current}/stat", encoding="ascii") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


@contextlib.contextmanager
def served(dataset: str, workers: int, timeout: float = 120.0, *,
           path: str = "lean") -> Iterator[int]:
    """Run ``p4r serve`` in its own processes until the block ends; yields its port (the
    process is :data:`SERVERS` ``[port]`` meanwhile). ``path`` is one of
    :data:`SERVER_PATHS`: "framework" answers the rerank routes through FastAPI
    (``P4R_SERVE__LEAN_RERANK=false``), the reference of the lean path."""
    port = free_port()
    env = {**os.environ, **SERVER_PATHS[path]}
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "p4r.cli", "serve", "--dataset", dataset,
             "--port", str(port), "--workers", str(workers), "--log-level", "warning"],
            stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            wait_ready(port, proc, timeout, log)
            SERVERS[port] = proc.pid
            yield port
        finally:
            SERVERS.pop(port, None)
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float, log: Any) -> None:
    """Poll ``/readyz`` until it answers 200; fail with the server's output if it exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            tail = log.read().decode(errors="replace")[-2000:]
            raise BackendError(f"p4r serve exited with status {proc.returncode}: {tail}")
        with contextlib.suppress(OSError):
            if asyncio.run(_get(port, "/readyz"))[0] == 200:
                return
        time.sleep(0.2)
    raise BackendError(f"p4r serve was not ready on port {port} after {timeout:.0f}s")


# -- a minimal HTTP/1.1 keep-alive client -----------------------------------------------------
def _post(path: str, body: dict[str, Any]) -> bytes:
    payload = json.dumps(body).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n")
    return head.encode() + payload


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = next((int(line.split(b":", 1)[1]) for line in lines[1:]
                   if line.lower().startswith(b"content-length:")), None)
    if length is None:
        raise BackendError("response without Content-Length")
    return status, await reader.readexactly(length)


async def _get(port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        return await _read_response(reader)
    finally:
        writer.close()


async def _answers(port: int, bodies: list[dict[str, Any]]) -> list[Any]:
    reader, writer = await asyncio.open_connection(HOST, port)
    answers = []
    try:
        for body in bodies:
            writer.write(_post("/v1/rerank", body))
            status, data = await _read_response(reader)
            answers.append(json.loads(data) if status == 200 else {"status": status})
    finally:
        writer.close()
    return answers


async def _client(port: int, payloads: list[bytes], offset: int, warm_until: float,
                  stop_at: float, tally: _Tally) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    index = offset
    try:
        while (start := time.perf_counter()) < stop_at:
            writer.write(payloads[index % len(payloads)])
            status, _ = await _read_response(reader)
            if start >= warm_until:
                tally.samples.append(time.perf_counter() - start)
                tally.errors += status != 200
            index += 1
    finally:
        writer.close()


async def _load(port: int, payloads: list[bytes], clients: int, config: BenchConfig) -> _Tally:
    tally = _Tally()
    warm_until = time.perf_counter() + config.warmup
    stop_at = warm_until + config.duration
    step = max(1, len(payloads) // clients)
    pid = SERVERS.get(port)
    work = [asyncio.ensure_future(_client(port, payloads, i * step, warm_until, stop_at, tally))
            for i in range(clients)]
    await asyncio.sleep(max(0.0, warm_until - time.perf_counter()))
    before = tree_cpu(pid) if pid else None
    await asyncio.gather(*work)
    if before is not None and pid:
        tally.server_cpu = tree_cpu(pid) - before
    return tally


def _run(coro: Any) -> Any:
    """Run on uvloop when installed (a cheaper client leaves more CPU to the server)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def same_answers(got: list[Any], expected: list[list[dict[str, Any]]]) -> bool:
    """Same items, order, explanations and personas; scores equal to 1e-6."""
    for answer, want in zip(got, expected, strict=True):
        items = answer.get("items") if isinstance(answer, dict) else None  # POST /v1/rerank
        if not isinstance(items, list) or len(items) != len(want):
            return False
        for a, w in zip(items, want, strict=True):
            if (a["item_id"], a["explanation"], a["persona"]) != (
                    w["item_id"], w["explanation"], w["persona"]):
                return False
            if (a["score"] is None) != (w["score"] is None) or (
                    w["score"] is not None and abs(a["score"] - w["score"]) > 1e-6):
                return False
    return True


def run_bench(config: BenchConfig, progress: bool = True) -> dict[str, Any]:
    """Per round: in-process rerank, then for each worker count and client level every
    server path (lean, framework) back to back, in alternating order; every server runs
    for the whole bench, so rounds interleave and the paths share the machine's state.
    Rows are medians over rounds; ratios are taken per round, then their median."""
    def say(message: str) -> None:
        if progress:
            print(message, file=sys.stderr, flush=True)

    load_start = [round(x, 2) for x in os.getloadavg()]
    reranker = open_reranker(load_settings(), config.dataset)
    per_round: list[list[dict[str, Any]]] = []
    memory: list[dict[str, Any]] = []
    match = True
    try:
        bodies = make_bodies(reranker, config)
        expected = [[item.as_dict() for item in reranker.rerank(**body).items]
                    for body in bodies[:20]]
        payloads = [_post("/v1/rerank", body) for body in bodies]
        with contextlib.ExitStack() as stack:
            ports = {(workers, path): stack.enter_context(
                served(config.dataset, workers, path=path))
                for workers in config.workers for path in config.paths}
            for port in ports.values():
                match &= same_answers(_run(_answers(port, bodies[:len(expected)])), expected)
            for round_ in range(config.rounds):
                say(f"round {round_ + 1}/{config.rounds}: in-process rerank …")
                rows = [in_process_row(reranker, bodies, config)[0]]
                paths = list(config.paths)
                if round_ % 2:
                    paths.reverse()
                for workers in config.workers:
                    for clients in config.clients:
                        for path in paths:
                            say(f"round {round_ + 1}/{config.rounds}: {path} path, {workers} "
                                f"worker(s), {clients} client(s) …")
                            tally = _run(_load(ports[workers, path], payloads, clients, config))
                            rows.append({**_row("http", workers, clients, tally,
                                                config.duration), "path": path})
                per_round.append(rows)
            memory = [{"path": path, "workers": workers,
                       "rss_mb": tree_rss_mb(SERVERS[port])}
                      for (workers, path), port in ports.items()]
    finally:
        reranker.backend.close()
    rows = _medians(per_round)
    return {"dataset": config.dataset, "candidates": config.candidates,
            "duration_s": config.duration, "rounds": config.rounds,
            "cpus": len(os.sched_getaffinity(0)), "answers_match": match, "rows": rows,
            "ratios": _ratios(per_round), "target": _target(rows), "server_rss": memory,
            "scaling": _scaling(rows),
            "load_average": {"start": load_start,
                             "end": [round(x, 2) for x in os.getloadavg()]}}


def _key(row: dict[str, Any]) -> tuple[Any, ...]:
    return row["mode"], row.get("path"), row["workers"], row["clients"]


def _medians(per_round: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per setting: the median of each figure over rounds (the rps range beside)."""
    settings: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for round_rows in per_round:
        for row in round_rows:
            settings.setdefault(_key(row), []).append(row)
    out = []
    for rows in settings.values():
        merged = dict(rows[0])
        for name in ("p50_ms", "p99_ms", "rps", "cpu_ms", "load_1m"):
            values = [r[name] for r in rows if r.get(name) is not None]
            merged[name] = round(float(np.median(values)), 4) if values else None
        merged["requests"] = sum(r["requests"] for r in rows)
        merged["errors"] = sum(r["errors"] for r in rows)
        merged["disturbed"] = any(r["disturbed"] for r in rows)
        merged["rps_range"] = [min(r["rps"] for r in rows), max(r["rps"] for r in rows)]
        out.append(merged)
    return out


def _ratios(per_round: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per worker count and client level: the lean path over each other path (requests/s,
    server CPU per request) and each path's server CPU per request over the in-process CPU
    of the same round. Medians over rounds, with their range."""
    paired: dict[tuple[int, int], dict[str, list[float]]] = {}
    for rows in per_round:
        base = next(r for r in rows if r["mode"] == "in-process")
        http = {(r["path"], r["workers"], r["clients"]): r for r in rows if r["mode"] == "http"}
        for (path, workers, clients), row in http.items():
            ratios = paired.setdefault((workers, clients), {})
            if row["cpu_ms"] and base["cpu_ms"]:
                ratios.setdefault(f"{path}_cpu_over_in_process", []).append(
                    row["cpu_ms"] / base["cpu_ms"])
            if path != "lean":
                continue
            for (other_path, w, c), other in http.items():
                if other_path == "lean" or (w, c) != (workers, clients):
                    continue
                if other["rps"]:
                    ratios.setdefault(f"lean_rps_over_{other_path}", []).append(
                        row["rps"] / other["rps"])
                if row["cpu_ms"] and other["cpu_ms"]:
                    ratios.setdefault(f"lean_cpu_over_{other_path}", []).append(
                        row["cpu_ms"] / other["cpu_ms"])
    return [{"workers": workers, "clients": clients,
             **{name: round(float(np.median(v)), 3) for name, v in values.items()},
             **{f"{name}_range": [round(min(v), 3), round(max(v), 3)]
                for name, v in values.items()}}
            for (workers, clients), values in paired.items()]


def _scaling(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Requests/s of each worker count over one worker's, per client level."""
    one = {(r["path"], r["clients"]): r["rps"] for r in rows
           if r["mode"] == "http" and r["workers"] == 1}
    return [{"path": r["path"], "workers": r["workers"], "clients": r["clients"],
             "rps_vs_1_worker": round(r["rps"] / one[r["path"], r["clients"]], 3)}
            for r in rows if r["mode"] == "http" and r["workers"] != 1
            and one.get((r["path"], r["clients"]))]


def _target(rows: list[dict[str, Any]]) -> dict[str, Any]:
    base = next(r for r in rows if r["mode"] == "in-process")
    ones = [r for r in rows if r["mode"] == "http" and r["clients"] == 1 and r["workers"] == 1]
    http = next((r for r in ones if r["path"] == "lean"), ones[0] if ones else None)
    if http is None:
        return {"path": None, "http_p50_ms": None, "in_process_p50_ms": base["p50_ms"],
                "overhead_ms": None, "met": None}
    overhead = http["p50_ms"] - base["p50_ms"]
    return {"path": http["path"], "http_p50_ms": http["p50_ms"],
            "in_process_p50_ms": base["p50_ms"], "overhead_ms": round(overhead, 4),
            "met": overhead <= 0.25}


