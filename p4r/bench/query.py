"""Latency benchmark: Reranker on synthetic Edge collections beside exact numpy in one run.

Every timed request is interleaved with its numpy baseline (same user, same candidates), so
the ratio compares the two under the same machine load; rows are repeated ``rounds`` times
and the median of the rounds' p50 is reported. Each request is timed twice: wall time and the
process's CPU time. On a quiet machine the two agree (wall/CPU = 1.00 for every row under
1.5 ms of CPU, measured); other jobs on the cores stretch wall time only, so a row whose
wall/CPU exceeds :data:`DISTURBED` is flagged ``disturbed`` and its CPU figures are the ones
to compare.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from p4r.encoder.fingerprint import Fingerprint
from p4r.query import Reranker, RerankRequest
from p4r.settings import DEFAULT_PROFILE, QuerySettings, VectorDatatype
from p4r.store.base import Backend
from p4r.store.edge import EdgeBackend
from p4r.store.lifecycle import create_version, finish_version, publish_version
from p4r.store.manifest import VersionManifest
from p4r.store.naming import collection_name, item_key, persona_key, point_id
from p4r.store.users import InteractionRecord

PER_ITEM = 5
DISTURBED = 1.5  # wall/CPU above this: other jobs shared the cores during the row
_TEXT = "A synthetic persona used only to give the benchmark realistic payload sizes. " * 2
_STEP = 4096


@dataclass
class Built:
    """A synthetic store: persona matrix (row = item * 5 + persona) and profile matrix; the
    build time of what ``p4r index upsert`` builds by default, and of the optional MaxSim
    collection apart."""

    matrix: np.ndarray
    profiles: np.ndarray
    build_seconds: float
    points: int
    maxsim_seconds: float | None = None


def item_id(index: int) -> str:
    """Item id of the synthetic item number ``index``."""
    return f"i{index:07d}"


def _unit(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    out = rng.standard_normal((rows, dim), dtype=np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def build_synthetic(backend: Backend, dataset: str, personas: int, dim: int, seed: int = 0,
                    progress: bool = True, users: int = 2000, maxsim: bool = False,
                    datatype: VectorDatatype = "float32") -> Built:
    """One published version of ``personas`` random unit vectors, 5 per item, with real-sized
    payloads and ``users`` profile points, built through the store's lifecycle as
    ``p4r index upsert`` builds one; with ``maxsim`` also the per-item MaxSim collection (timed
    apart: the default build has none)."""
    rng = np.random.default_rng(seed)
    vectors = _unit(rng, personas, dim)
    profiles = _unit(rng, users, dim)
    n_items = personas // PER_ITEM
    counts = {"personas": personas, **({"items": n_items} if maxsim else {})}
    fingerprint = Fingerprint(model="bench-synthetic", weights_sha256="0" * 64, dim=dim,
                              max_seq_length=256)
    manifest = VersionManifest(dataset=dataset, version=1, counts=counts,
                               shape={"personas": personas, "items": n_items},
                               encoder=fingerprint.as_dict(), vector_datatype=datatype,
                               created_at=time.time())
    names = {k: collection_name(dataset, k, 1) for k in counts}
    started = time.perf_counter()
    create_version(backend, manifest, counts, dim, max_group_size=PER_ITEM)
    for start in tqdm(range(0, personas, _STEP), desc=f"build {personas}", disable=not progress,
                      leave=False):
        rows = range(start, min(start + _STEP, personas))
        items = [item_id(r // PER_ITEM) for r in rows]
        ids = [point_id(*persona_key(dataset, it, f"P{r % PER_ITEM}")) for r, it in zip(rows, items,
                                                                             strict=True)]
        payloads = [{"item_id": it, "persona_id": f"P{r % PER_ITEM}", "name": "Bench Persona",
                     "description": _TEXT, "rationale": _TEXT}
                    for r, it in zip(rows, items, strict=True)]
        backend.upsert(names["personas"], ids, vectors[start:start + len(ids)], payloads)
    # One interaction per user in the user state: each profile is that interaction's vector.
    store = backend.user_store(dataset, fingerprint, DEFAULT_PROFILE)
    store.record([InteractionRecord(user_id=f"u{u}", item_id=item_id(u % n_items),
                                    timestamp=1.7e9, origin="file") for u in range(users)],
                 profiles)
    seconds = time.perf_counter() - started
    maxsim_seconds = None
    if maxsim:
        started = time.perf_counter()
        for start in tqdm(range(0, n_items, _STEP // PER_ITEM), desc=f"maxsim {n_items}",
                          disable=not progress, leave=False):
            chunk = range(start, min(start + _STEP // PER_ITEM, n_items))
            backend.upsert(names["items"],
                           [point_id(*item_key(dataset, item_id(i))) for i in chunk],
                           [vectors[i * PER_ITEM:(i + 1) * PER_ITEM] for i in chunk],
                           [{"item_id": item_id(i)} for i in chunk])
        maxsim_seconds = time.perf_counter() - started
    started = time.perf_counter()
    publish_version(backend, finish_version(backend, manifest))  # counts, seals, publishes
    seconds += time.perf_counter() - started
    return Built(vectors, profiles, seconds, personas + users, maxsim_seconds)


def numpy_rerank(matrix: np.ndarray, user: np.ndarray, item_rows: np.ndarray) -> np.ndarray:
    """Exact baseline: candidate rows (items × 5) → max cosine per item → order."""
    scores = (matrix[item_rows.ravel()] @ user).reshape(item_rows.shape).max(axis=1)
    return np.argsort(-scores, kind="stable")


def _p(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples) * 1000.0, q))


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (what else ran on the cores)."""
    return [round(x, 2) for x in os.getloadavg()]


class Samples:
    """Wall and CPU seconds per call of the reranker and of its numpy baseline."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.base_wall: list[float] = []
        self.base_cpu: list[float] = []

    def time(self, candidate: Callable[[], Any], baseline: Callable[[], Any],
             per: int = 1) -> None:
        """Time ``baseline`` then ``candidate``, both in wall and in process CPU time (which
        counts the engine's search thread too); ``per`` requests per candidate call."""
        w0, c0 = time.perf_counter(), time.process_time()
        baseline()
        w1, c1 = time.perf_counter(), time.process_time()
        candidate()
        w2, c2 = time.perf_counter(), time.process_time()
        self.base_wall.append(w1 - w0)
        self.base_cpu.append(c1 - c0)
        self.wall.append((w2 - w1) / per)
        self.cpu.append((c2 - c1) / per)

    def stats(self) -> tuple[float, float, float, float, float]:
        """p50, p99 and CPU p50 of the reranker; wall and CPU p50 of numpy (ms)."""
        return (_p(self.wall, 50), _p(self.wall, 99), _p(self.cpu, 50),
                _p(self.base_wall, 50), _p(self.base_cpu, 50))


def timed_row(stats: Sequence[float], **fields: Any) -> dict[str, Any]:
    """A latency row: wall and CPU p50 beside numpy's, their ratios, wall/CPU, whether other
    jobs disturbed it, and the 1-minute load average at its end."""
    p50, p99, cpu, base, base_cpu = stats
    wall_cpu = p50 / max(cpu, 1e-9)
    base_wall_cpu = base / max(base_cpu, 1e-9)
    return {**fields, "p50_ms": round(p50, 4), "p99_ms": round(p99, 4),
            "cpu_ms": round(cpu, 4), "numpy_p50_ms": round(base, 4),
            "numpy_cpu_ms": round(base_cpu, 4), "ratio": round(p50 / max(base, 1e-9), 2),
            "cpu_ratio": round(cpu / max(base_cpu, 1e-9), 2),
            "wall_over_cpu": round(wall_cpu, 2),
            "disturbed": bool(wall_cpu > DISTURBED or base_wall_cpu > DISTURBED),
            "load_1m": load_average()[0]}


def _interleaved(make_calls: Callable[[], list[tuple[Callable[[], Any], Callable[[], Any]]]],
                 per: int, rounds: int) -> list[float]:
    """Median over rounds of (p50, p99, CPU p50, numpy p50, numpy CPU p50) in ms; each call
    pair alternates. Every round gets fresh calls (a new Reranker, so explanations are read,
    not replayed)."""
    stats = []
    for _ in range(rounds):
        samples = Samples()
        for candidate, baseline in make_calls():
            samples.time(candidate, baseline, per)
        stats.append(samples.stats())
    return [float(x) for x in np.median(np.asarray(stats), axis=0)]


def _variants(maxsim: bool) -> list[tuple[int | None, str, bool]]:
    """(k, mode, through MaxSim) of each latency row; ``single cached`` replays requests whose
    explanations are in the LRU already (popular items) and whose query plans are cached, the
    others read them from the store."""
    out: list[tuple[int | None, str, bool]] = [
        (None, "single", False), (None, "single cached", False), (None, "batch", False),
        (10, "single", False), (10, "batch", False)]
    if maxsim:
        out += [(10, "single maxsim", True), (10, "batch maxsim", True)]
    return out


def _rows_for(fresh: Callable[[bool], Reranker], built: Built, size: int, n_cands: int,
              users: int, batch: int, rounds: int, rng: np.random.Generator,
              maxsim: bool = False) -> list[dict[str, Any]]:
    n_items = size // PER_ITEM
    rows: list[dict[str, Any]] = []
    for k, mode, through_maxsim in _variants(maxsim):
        per = batch if mode.startswith("batch") else 1

        def make_calls(k: int | None = k, mode: str = mode,
                       through_maxsim: bool = through_maxsim) -> list[Any]:
            # New users and candidates every round and row: nothing this process cached for
            # earlier requests (explanations, query plans) is reused, except by replaying.
            picks = [rng.choice(n_items, size=n_cands, replace=False) for _ in range(users)]
            cands = [[item_id(i) for i in pick] for pick in picks]
            item_rows = [pick[:, None] * PER_ITEM + np.arange(PER_ITEM) for pick in picks]
            queries = _unit(rng, users, built.matrix.shape[1])
            reranker = fresh(through_maxsim)
            if not mode.startswith("batch"):
                calls = [(lambda q=q, c=c: reranker.rerank(vector=q, candidates=c, k=k),
                          lambda q=q, r=r: numpy_rerank(built.matrix, q, r))
                         for q, c, r in zip(queries, cands, item_rows, strict=True)]
                if mode == "single cached":
                    for call, _ in calls:
                        call()
                return calls
            calls = []
            for start in range(0, users - batch + 1, batch):
                span = range(start, start + batch)
                reqs = [RerankRequest(candidates=cands[i], vector=queries[i], k=k)
                        for i in span]
                calls.append((lambda reqs=reqs: reranker.rerank_batch(reqs),
                              lambda span=span: [numpy_rerank(built.matrix, queries[i],
                                                              item_rows[i]) for i in span]))
            return calls

        stats = _interleaved(make_calls, per, rounds)
        if per > 1:  # numpy's figures are per call of `batch` users
            stats[3] /= batch
            stats[4] /= batch
        rows.append(timed_row(stats, personas=size, candidates=n_cands, k=k or "all",
                              mode=mode))
    return rows


def _user_rows(backend: EdgeBackend, dataset: str, built: Built, size: int, n_cands: int,
               users: int, rounds: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    """user_id requests: cold (profile read from the user state) against warm (profile in the
    process's LRU).

    Cold and warm requests alternate in one loop, each after its numpy baseline, so the two
    rows see the same machine state; the explanations of both come from the LRU (every
    request is replayed once first), so the difference is the profile read alone.
    """
    n_items = size // PER_ITEM
    samples = {"cold": Samples(), "warm": Samples()}
    for _ in range(rounds):
        order = rng.permutation(built.profiles.shape[0])[:2 * users]
        # Drawn before timing: a draw without replacement permutes every item and would
        # flush the CPU caches right before a timed request.
        picks = [rng.choice(n_items, size=n_cands, replace=False) for _ in order]
        cands = [[item_id(i) for i in pick] for pick in picks]
        reranker = Reranker(dataset, backend, QuerySettings(maxsim=False))
        assert reranker.served.users is not None
        reranker.served.users.clear_cache()  # every round starts with no profile in memory
        for u, c in zip(order, cands, strict=True):  # the same vector: explanations, no profile
            reranker.rerank(vector=built.profiles[u], candidates=c)
        for u in order[1::2]:
            reranker.user_vector(f"u{u}")
        for i, (u, pick, c) in enumerate(zip(order, picks, cands, strict=True)):
            state = "cold" if i % 2 == 0 else "warm"
            samples[state].time(
                lambda u=u, c=c, r=reranker: r.rerank(user_id=f"u{u}", candidates=c),
                lambda u=u, pick=pick: numpy_rerank(
                    built.matrix, built.profiles[u],
                    pick[:, None] * PER_ITEM + np.arange(PER_ITEM)))
    return [timed_row(samples[state].stats(), personas=size, candidates=n_cands, k="all",
                      mode=f"user_id {state}") for state in ("cold", "warm")]


_RSS_PROBE = """
import json, sys, resource
import numpy as np
from p4r.store.edge import EdgeBackend
from p4r.query import Reranker
from p4r.bench.query import item_id
from p4r.settings import QuerySettings, VectorDatatype
def rss(key="VmRSS"):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
before = rss()
if sys.argv[1] != "-":
    store = EdgeBackend(sys.argv[1])
    r = Reranker(sys.argv[2], store, QuerySettings(maxsim=sys.argv[6] == "1"))
    rng = np.random.default_rng(0); n_items = int(sys.argv[3]) // 5
    for _ in range(int(sys.argv[4])):
        q = rng.standard_normal(int(sys.argv[5])).astype("float32")
        r.rerank(vector=q, candidates=[item_id(i) for i in rng.choice(n_items, 20)])
        r.rerank(vector=q, candidates=[item_id(i) for i in rng.choice(n_items, 100)], k=10)
print(json.dumps({"rss": rss(), "before": before, "anon": rss("RssAnon"),
                  "file": rss("RssFile")}))
"""


def serving_rss(root: Path, dataset: str, size: int, dim: int,
                queries: int = 3000, maxsim: bool = False) -> dict[str, int]:
    """RSS in bytes (total, anonymous, file-backed) of a fresh process that opened the store
    and served ``queries`` (top 10 through MaxSim with ``maxsim``). Edge maps its segment
    files, so most of it is page cache."""
    out = subprocess.run([sys.executable, "-c", _RSS_PROBE, str(root), dataset, str(size),
                          str(queries), str(dim), "1" if maxsim else "0"],
                         capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    return {k: int(v) for k, v in json.loads(out.stdout).items()}


def drop_page_cache(root: Path) -> None:
    """Make the kernel forget the cached pages of every file under ``root``, as Edge does to
    a shard's files when a process closes one: the next reads of them are disk reads."""
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            with open(path, "rb") as handle:
                os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


IDLE_GAP_S = 0.001  # the pause before each "idle" warm request of the first-request rows


def first_requests(root: Path, dataset: str, size: int, dim: int, n_cands: int,
                   warm: int = 200) -> dict[str, dict[str, float]]:
    """The first request after a start and after a reload, beside the warm ones after each:
    back to back (the CPU caches as hot as they get) and each after a pause of
    :data:`IDLE_GAP_S` (what any request costs on a server that is not saturated: a core
    that waits loses its caches, see :mod:`p4r.serve.busy`).

    Run in a fresh process. A start opens the store with nothing of it in the page cache; a
    reload closes the backend (Edge drops its pages) and binds the version again on a new
    one, so the code paths are warm and only the data is cold. Each request has new
    candidates, so explanations are read from the store, not the LRU.
    """
    rng = np.random.default_rng(7)
    n_items = size // PER_ITEM
    requests = [(_unit(rng, 1, dim)[0], [item_id(i) for i in
                                          rng.choice(n_items, n_cands, replace=False)])
                for _ in range(4 * warm + 2)]
    it = iter(requests)

    def timed(reranker: Reranker) -> tuple[float, float, int, int]:
        vector, cands = next(it)
        before = resource.getrusage(resource.RUSAGE_SELF)
        w0, c0 = time.perf_counter(), time.process_time()
        reranker.rerank(vector=vector, candidates=cands)
        w1, c1 = time.perf_counter(), time.process_time()
        after = resource.getrusage(resource.RUSAGE_SELF)
        return (w1 - w0, c1 - c0, after.ru_majflt - before.ru_majflt,
                after.ru_minflt - before.ru_minflt)

    out: dict[str, dict[str, float]] = {}
    drop_page_cache(root)
    for event in ("start", "reload"):
        started = time.perf_counter()
        backend = EdgeBackend(root)
        reranker = Reranker(dataset, backend, QuerySettings(maxsim=False))
        bind = time.perf_counter() - started
        first = timed(reranker)
        rest = [timed(reranker) for _ in range(warm)]
        idle = []
        for _ in range(warm):
            time.sleep(IDLE_GAP_S)
            idle.append(timed(reranker))
        out[event] = {"bind_ms": bind * 1000, "first_ms": first[0] * 1000,
                      "first_cpu_ms": first[1] * 1000, "first_major_faults": first[2],
                      "first_minor_faults": first[3],
                      "warm_p50_ms": _p([r[0] for r in rest], 50),
                      "warm_cpu_ms": _p([r[1] for r in rest], 50),
                      "warm_major_faults": sum(r[2] for r in rest),
                      "idle_p50_ms": _p([r[0] for r in idle], 50)}
        backend.close()  # Edge drops the shards' pages, as the writer's close at sealing does
        drop_page_cache(root)  # and the p4r files' too: the worst case
    return out


_FIRST_PROBE = """
import json, sys
from pathlib import Path
from p4r.bench.query import first_requests
a = sys.argv[1:]
print(json.dumps(first_requests(Path(a[0]), a[1], int(a[2]), int(a[3]), int(a[4]))))
"""


def first_request_rows(root: Path, dataset: str, size: int, dim: int, n_cands: int,
                       rounds: int) -> list[dict[str, Any]]:
    """Rows ``first request (start)`` and ``(reload)``: medians over ``rounds`` fresh
    processes of the first request, over the median warm request after it."""
    runs = []
    for _ in range(rounds):
        out = subprocess.run([sys.executable, "-c", _FIRST_PROBE, str(root), dataset,
                              str(size), str(dim), str(n_cands)],
                             capture_output=True, text=True, check=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
        runs.append(json.loads(out.stdout))
    rows = []
    for event in ("start", "reload"):
        med = {key: float(np.median([run[event][key] for run in runs]))
               for key in runs[0][event]}
        wall_cpu = med["first_ms"] / max(med["first_cpu_ms"], 1e-9)
        rows.append({"personas": size, "candidates": n_cands, "k": "all",
                     "mode": f"first request ({event})",
                     **{key: round(value, 4) for key, value in med.items()},
                     "ratio": round(med["first_ms"] / max(med["warm_p50_ms"], 1e-9), 2),
                     "ratio_over_idle": round(med["first_ms"] / max(med["idle_p50_ms"], 1e-9),
                                              2),
                     "cpu_ratio": round(med["first_cpu_ms"] / max(med["warm_cpu_ms"], 1e-9), 2),
                     "wall_over_cpu": round(wall_cpu, 2),
                     "disturbed": bool(med["warm_p50_ms"] / max(med["warm_cpu_ms"], 1e-9)
                                       > DISTURBED),
                     "load_1m": load_average()[0]})
    return rows


def run_bench(sizes: list[int], candidate_counts: list[int], users: int = 300, batch: int = 100,
              dim: int = 384, work_dir: Path | None = None, progress: bool = True,
              rounds: int = 3, rss: bool = True, maxsim: bool = False,
              datatype: VectorDatatype = "float32") -> list[dict[str, Any]]:
    """Every row of the benchmark, each beside numpy measured in the same run; ``maxsim`` adds
    the per-item MaxSim collection and top-k rows served through it; ``datatype`` is how the
    engine stores vectors (numpy stays float32: the exact reference)."""
    root = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="p4r-bench-"))
    rows: list[dict[str, Any]] = []
    rng = np.random.default_rng(1)
    try:
        for size in sizes:
            folder = root / f"edge-{size}"
            backend = EdgeBackend(folder)
            dataset = f"bench{size}"
            built = build_synthetic(backend, dataset, size, dim, progress=progress,
                                    users=max(users, 2 * users), maxsim=maxsim,
                                    datatype=datatype)
            rows.append({"personas": size, "mode": "build",
                         "points_per_s": round(built.points / built.build_seconds)})
            if built.maxsim_seconds is not None:
                rows.append({"personas": size, "mode": "build maxsim",
                             "points_per_s": round(size // PER_ITEM / built.maxsim_seconds)})
            reranker = Reranker(dataset, backend, QuerySettings(maxsim=maxsim))
            for q in _unit(rng, 20, dim):  # id maps, page cache, allocator
                reranker.rerank(vector=q, candidates=[item_id(i) for i in
                                                      rng.choice(size // PER_ITEM, 100)])

            def fresh(through_maxsim: bool, dataset: str = dataset,
                      backend: EdgeBackend = backend) -> Reranker:
                return Reranker(dataset, backend, QuerySettings(maxsim=through_maxsim))

            for n_cands in candidate_counts:
                rows += _rows_for(fresh, built, size, n_cands, users, batch, rounds, rng,
                                  maxsim=maxsim)
            rows += _user_rows(backend, dataset, built, size, min(candidate_counts), users,
                               rounds, rng)
            backend.close()
            rows += first_request_rows(folder, dataset, size, dim, min(candidate_counts), rounds)
            if rss:
                raw = size * dim * 4
                empty = serving_rss(Path("-"), dataset, size, dim, 0)
                for through_maxsim in (False, True) if maxsim else (False,):
                    served = serving_rss(folder, dataset, size, dim, maxsim=through_maxsim)
                    rows.append({"personas": size,
                                 "mode": "rss maxsim" if through_maxsim else "rss",
                                 "rss_mb": round(served["rss"] / 2**20, 1),
                                 "anon_mb": round(served["anon"] / 2**20, 1),
                                 "file_mb": round(served["file"] / 2**20, 1),
                                 "interpreter_mb": round(empty["rss"] / 2**20, 1),
                                 "raw_vectors_mb": round(raw / 2**20, 1),
                                 "ratio_to_raw": round(served["rss"] / raw, 3)})
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        if work_dir is None:
            shutil.rmtree(root, ignore_errors=True)
    return rows
