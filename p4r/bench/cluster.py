"""Benchmarks of the cluster work (issue 17), each against a baseline from the same run.

* **delta vs full rebuild**: a catalog of ``personas`` personas (5 per item) changes 1% of its
  items; the change is applied as a delta in one store and as a full rebuild (``--full``) of
  the same data in another store of the same engine, interleaved, ``rounds`` times, on Edge
  and on the server backend (its local engine). Texts are embedded by a deterministic hash
  encoder (no model) through the embedding cache, so both sides pay the store's work, not a
  model's: the rebuild finds its unchanged texts in the cache, as a real rebuild would.
* **points requested**: persona points a 100-candidate, k = 10 request asks the server for,
  without the top-k bound (what p4r asked before) and with it.
* **sync vs async serving under a round trip**: the server backend over the local engine with
  a simulated ``rtt`` before each call (:mod:`p4r.bench.rtt`; the engine's replies are
  computed once and remembered, since a real server computes on its own machine), user_id
  requests from 1 and 8 concurrent clients on one event loop: the synchronous client called
  on the loop (what ``p4r serve`` did) against ``AsyncQdrantClient``-style awaiting (what it
  does now).

Wall time and CPU time are printed side by side; the machine's load average too.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import hashlib
import os
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from qdrant_client import QdrantClient

from p4r.bench.rtt import Answers, DelayedAsyncClient, DelayedClient
from p4r.datasets.models import Dataset, Interaction, Item, Persona
from p4r.encoder.cache import EmbeddingCache
from p4r.encoder.fingerprint import Fingerprint
from p4r.indexer import BuildOptions, index_dataset
from p4r.query import Reranker, RerankRequest
from p4r.settings import Settings
from p4r.store.base import Backend
from p4r.store.edge import EdgeBackend
from p4r.store.server import ServerBackend

PER_ITEM = 5


class HashEncoder:
    """A deterministic stand-in for a model: each text's vector comes from its hash (a fixed
    cost of a few microseconds per text), so a benchmark measures the store."""

    def __init__(self, dim: int = 384) -> None:
        self.fingerprint = Fingerprint(model="bench-hash", weights_sha256="1" * 64, dim=dim,
                                       max_seq_length=256)

    @property
    def dim(self) -> int:
        return self.fingerprint.dim

    def encode(self, texts: Sequence[str], *, batch_size: int | None = None) -> np.ndarray:
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")
            out[row] = np.random.default_rng(seed).standard_normal(self.dim)
        out /= np.linalg.norm(out, axis=1, keepdims=True)
        return out


def synthetic_dataset(personas: int, users: int = 500, seed: int = 0) -> Dataset:
    """A catalog of ``personas`` personas, 5 per item, every item with a summary, and a few
    interactions per user."""
    rng = random.Random(seed)
    n_items = personas // PER_ITEM
    items = {f"i{i:07d}": Item(f"i{i:07d}", f"Item {i}", f"Summary of item {i}.")
             for i in range(n_items)}
    by_item = {item: [Persona(item, f"P{p}", f"Persona {p} of {item}",
                              f"Description {p} of {item}.", f"Rationale {p} of {item}.")
                      for p in range(PER_ITEM)] for item in items}
    interactions = [Interaction(f"u{u}", f"i{rng.randrange(n_items):07d}",
                                1.6e9 + 3600 * j + u, 4.0, f"review {u}-{j}")
                    for u in range(users) for j in range(4)]
    return Dataset(name="bench", root=Path("."), layout="canonical", items=items,
                   personas=by_item, interactions=interactions)


def changed(data: Dataset, share: float, round_: int) -> Dataset:
    """``share`` of the items with one persona rewritten (a new rationale per round)."""
    out = copy.copy(data)
    out.personas = dict(data.personas)
    items = sorted(out.personas)
    for item in items[::max(int(1 / share), 1)]:
        personas = list(out.personas[item])
        personas[0] = replace(personas[0], rationale=f"Round {round_}: a new rationale.")
        out.personas[item] = personas
    return out


def _timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def _open(kind: str, root: Path) -> Backend:
    return EdgeBackend(root / "edge") if kind == "edge" else ServerBackend(QdrantClient(":memory:"))


def delta_rows(personas: int, rounds: int, work: Path,
               say: Callable[[str], None]) -> list[dict[str, Any]]:
    """Delta of 1% of the items against a full rebuild, per engine."""
    rows = []
    base = synthetic_dataset(personas)
    encoder = HashEncoder()
    for kind in ("edge", "server"):
        stores = {name: _open(kind, work / f"{kind}-{name}") for name in ("delta", "full")}
        cache = EmbeddingCache(work / f"{kind}-cache.sqlite")
        settings = Settings(data_dir=work / f"{kind}-data")
        say(f"{kind}: first build of {personas:,} personas (twice, not timed) …")
        for store in stores.values():
            index_dataset(settings, base, backend=store, encoder=encoder, cache=cache)
        samples: dict[str, list[tuple[float, float]]] = {"delta": [], "full": []}
        actions = set()
        for round_ in range(1, rounds + 1):
            data = changed(base, 0.01, round_)
            order = ("delta", "full") if round_ % 2 else ("full", "delta")
            for name in order:
                options = BuildOptions(full=name == "full")
                report, wall, cpu = _timed(functools.partial(
                    index_dataset, settings, data, backend=stores[name], encoder=encoder,
                    cache=cache, options=options))
                samples[name].append((wall, cpu))
                actions.add((name, report.action))
            say(f"{kind}: round {round_}/{rounds} done")
        for name in ("delta", "full"):
            walls, cpus = zip(*samples[name], strict=True)
            rows.append({"bench": "delta", "backend": kind, "mode": name,
                         "personas": personas, "wall_s": round(statistics.median(walls), 3),
                         "cpu_s": round(statistics.median(cpus), 3)})
        rows[-2]["actions"] = sorted(a for n, a in actions if n == "delta")
        rows[-1]["actions"] = sorted(a for n, a in actions if n == "full")
        rows[-2]["ratio_to_full"] = round(rows[-2]["wall_s"] / max(rows[-1]["wall_s"], 1e-9), 4)
        rows[-2]["cpu_ratio_to_full"] = round(rows[-2]["cpu_s"] / max(rows[-1]["cpu_s"], 1e-9),
                                              4)
        cache.close()
        for store in stores.values():
            store.close()
    return rows


def points_rows(say: Callable[[str], None]) -> list[dict[str, Any]]:
    """Persona points one 100-candidate, k = 10 request asks the server for."""
    say("points requested per request on the server backend …")
    data = synthetic_dataset(5_000, users=10)
    backend = ServerBackend(QdrantClient(":memory:"))
    index_dataset(Settings(), data, backend=backend, encoder=HashEncoder(), cache=None)
    name = backend.get_aliases()["p4r_bench_personas"]
    rng = np.random.default_rng(0)
    items = sorted(data.personas)
    out = []
    for label, limit in (("without the top-k bound (before)", None), ("with it", 10)):
        backend.points_requested = 0
        for _ in range(20):
            cands = [items[i] for i in rng.choice(len(items), 100, replace=False)]
            vector = rng.standard_normal((1, 384)).astype(np.float32)
            backend.best_per_group(name, vector, [cands], limits=[limit])
        out.append({"bench": "points", "backend": "server", "mode": label, "candidates": 100,
                    "k": 10, "points_per_request": backend.points_requested / 20})
    backend.close()
    return out


def rtt_rows(rtt: float, clients: Sequence[int], duration: float,
             say: Callable[[str], None]) -> list[dict[str, Any]]:
    """user_id requests from concurrent clients on one event loop, sync client against
    async, with ``rtt`` seconds before every store call."""
    data = synthetic_dataset(500, users=200)
    engine = QdrantClient(":memory:")
    index_dataset(Settings(), data, backend=ServerBackend(engine), encoder=HashEncoder(),
                  cache=None)
    items = sorted(data.personas)
    rng = random.Random(0)
    requests = [RerankRequest(candidates=rng.sample(items, 20), user_id=f"u{u % 200}")
                for u in range(2000)]
    rows = []
    answers = Answers()  # the engine's work is charged once, as a server's would be elsewhere
    for mode in ("sync", "async"):
        sync_client = DelayedClient(engine, rtt, answers)  # a call left on it pays the trip
        aclient = DelayedAsyncClient(engine, rtt, answers) if mode == "async" else None
        backend = ServerBackend(sync_client, url="simulated", aclient=aclient)  # type: ignore[arg-type]
        reranker = Reranker("bench", backend)
        for request in requests:  # every distinct request once: the replies are remembered
            reranker.rerank_batch([request])
        for n in clients:
            say(f"{mode} client, {n} concurrent client(s), {duration:.0f}s …")
            latencies, cpu = asyncio.run(_load(reranker, requests, n, duration, mode))
            rows.append({"bench": "rtt", "backend": "server (local engine + simulated rtt)",
                         "mode": mode, "clients": n, "rtt_ms": rtt * 1000,
                         "p50_ms": round(statistics.median(latencies) * 1000, 3),
                         "rps": round(len(latencies) / duration, 1),
                         "cpu_ms_per_request": round(cpu / max(len(latencies), 1) * 1000, 3)})
    for mode in ("sync", "async"):
        one, many = [r for r in rows if r["mode"] == mode][:2]
        many["p50_vs_1_client"] = round(many["p50_ms"] / max(one["p50_ms"], 1e-9), 2)
    return rows


async def _load(reranker: Reranker, requests: Sequence[RerankRequest], clients: int,
                duration: float, mode: str) -> tuple[list[float], float]:
    latencies: list[float] = []
    stop = time.perf_counter() + duration
    cpu = time.process_time()

    async def client(offset: int) -> None:
        i = offset
        while time.perf_counter() < stop:
            request = requests[i % len(requests)]
            t0 = time.perf_counter()
            if mode == "sync":  # the synchronous client, called on the event loop
                reranker.rerank_batch([request])
                await asyncio.sleep(0)
            else:
                await reranker.arerank_batch([request])
            latencies.append(time.perf_counter() - t0)
            i += clients

    await asyncio.gather(*(client(n) for n in range(clients)))
    return latencies, time.process_time() - cpu


def run_cluster_bench(personas: int = 125_000, rounds: int = 3, rtt: float = 0.002,
                      clients: Sequence[int] = (1, 8), duration: float = 3.0,
                      work_dir: Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Every row, with the load average before and after."""
    def say(line: str) -> None:
        if progress:
            print(line, flush=True)

    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="p4r-cluster-"))
    load = os.getloadavg()
    try:
        rows = points_rows(say) + rtt_rows(rtt, clients, duration, say) + \
            delta_rows(personas, rounds, work, say)
    finally:
        if work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    return {"rows": rows, "load_before": [round(x, 2) for x in load],
            "load_after": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count()}
