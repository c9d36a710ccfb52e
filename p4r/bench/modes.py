"""Latency of the ranking modes (issue 19) on a synthetic Edge version with MaxSim.

One published version of random unit personas (5 per item) with the per-item MaxSim
collection, and users with 10 interactions each in the user state. Every timed request runs
every variant back to back in a shuffled order (interleaved), so each ratio compares the
variants under the same machine load; CPU time (the calling thread's: Edge answers in it) is
taken beside wall time, and the whole measurement is repeated ``rounds`` times.

Variants, all ``user_id`` requests of one user, warm caches (each request is replayed once
first: profiles, explanations and winning vectors are in the LRUs, as for popular users and
items):

* ``default``: best persona cosine with the profile, explanations and "because";
* ``default, no because``: the same with ``P4R_QUERY__BECAUSE=false`` (no recent interaction
  vectors, no winning vectors read: the default request before issue 19), what "because"
  costs;
* ``interests (MaxSim)``: attention over the 10 history rows, one batch of 10 single-row
  MaxSim queries, then the winners' personas;
* ``interests (personas)``: the same through the filtered-persona fallback (no MaxSim);
* ``proportional``: the default mode with the top 10 shared among 3 interests.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from p4r.bench.query import PER_ITEM, build_synthetic, item_id
from p4r.query import Reranker
from p4r.settings import QuerySettings
from p4r.store.edge import EdgeBackend
from p4r.store.users import InteractionRecord

DATASET = "bench-modes"
HISTORY = 10
VARIANTS = ("default", "default, no because", "interests (MaxSim)", "interests (personas)",
            "proportional")


def _unit(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    out = rng.standard_normal((rows, dim)).astype(np.float32)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def add_users(reranker: Reranker, users: int, n_items: int, dim: int,
              rng: np.random.Generator) -> list[str]:
    """``users`` users with ``HISTORY`` interactions each (random vectors and items) in the
    user state of the reranker's version."""
    store = reranker.served.users
    assert store is not None
    names = [f"h{u}" for u in range(users)]
    for start in range(0, users, 200):
        chunk = names[start:start + 200]
        records = [InteractionRecord(user_id=u, item_id=item_id(int(rng.integers(n_items))),
                                     timestamp=1.7e9 + j, origin="file")
                   for u in chunk for j in range(HISTORY)]
        store.record(records, _unit(rng, len(records), dim))
    return names


def _calls(maxsim: Reranker, personas: Reranker, quiet: Reranker, user: str,
           cands: list[str], k: int | None) -> dict[str, Callable[[], Any]]:
    return {
        "default": lambda: maxsim.rerank(user_id=user, candidates=cands, k=k),
        "default, no because": lambda: quiet.rerank(user_id=user, candidates=cands, k=k),
        "interests (MaxSim)": lambda: maxsim.rerank(user_id=user, candidates=cands, k=k,
                                                    mode="interests"),
        "interests (personas)": lambda: personas.rerank(user_id=user, candidates=cands, k=k,
                                                        mode="interests"),
        "proportional": lambda: maxsim.rerank(user_id=user, candidates=cands, k=k or 10,
                                              diversify="proportional"),
    }


def _round(calls: list[dict[str, Callable[[], Any]]],
           rng: np.random.Generator) -> dict[str, tuple[list[float], list[float]]]:
    """One pass over the requests, every variant of a request back to back, shuffled."""
    samples: dict[str, tuple[list[float], list[float]]] = {v: ([], []) for v in VARIANTS}
    for request in calls:
        for index in rng.permutation(len(VARIANTS)):
            name = VARIANTS[int(index)]
            wall, cpu = time.perf_counter(), time.thread_time()
            request[name]()
            cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
            samples[name][0].append(wall)
            samples[name][1].append(cpu)
    return samples


def run_modes_bench(*, personas: int = 125_000, dim: int = 384, users: int = 200,
                    candidate_counts: tuple[int, ...] = (20, 100), rounds: int = 5,
                    k: int | None = None, seed: int = 0, work_dir: Path | None = None,
                    progress: bool = True) -> dict[str, Any]:
    """Median wall and CPU time per variant, and each variant's ratio to ``default``.

    Args:
        personas: synthetic personas (5 per item), with the MaxSim collection.
        dim: vector dimension.
        users: timed users (each with 10 interactions), one request each per round.
        candidate_counts: candidates per request.
        rounds: repeats; a ratio is taken per round (the same requests, interleaved) and the
            median round is reported with the lowest and highest.
        k: the requests' k (None: every candidate; proportional uses 10 then).
        seed: the random data and the candidate draws.
        work_dir: where the store is built (default: a temp folder, removed).
        progress: progress bars.

    Returns:
        ``{"setup": {...}, "rows": [{candidates, variant, wall_ms, cpu_ms, wall_ratio,
        cpu_ratio, wall_ratio_range, cpu_ratio_range}]}``.
    """
    rng = np.random.default_rng(seed)
    root = Path(tempfile.mkdtemp(prefix="p4r-bench-modes-", dir=work_dir))
    try:
        backend = EdgeBackend(root / "edge")
        started = time.perf_counter()
        build_synthetic(backend, DATASET, personas, dim, seed=seed, progress=progress,
                        users=1, maxsim=True)
        n_items = personas // PER_ITEM
        maxsim = Reranker(DATASET, backend, QuerySettings())
        names = add_users(maxsim, users, n_items, dim, rng)
        build_seconds = time.perf_counter() - started
        fallback = Reranker(DATASET, backend, QuerySettings(maxsim=False))
        quiet = Reranker(DATASET, backend, QuerySettings(because=False))
        assert maxsim.served.items is not None and fallback.served.items is None
        rows = []
        for n_cands in candidate_counts:
            calls = [_calls(maxsim, fallback, quiet, user,
                            [item_id(int(i)) for i in rng.choice(n_items, n_cands,
                                                                 replace=False)], k)
                     for user in names]
            for request in calls:  # warm: profiles, explanations and vectors in the LRUs
                for call in request.values():
                    call()
            per_round = [_round(calls, rng) for _ in tqdm(
                range(rounds), desc=f"{n_cands} candidates", disable=not progress,
                leave=False)]
            rows += _summarize(per_round, n_cands)
        backend.close()
        return {"setup": {"personas": personas, "items": n_items, "dim": dim, "users": users,
                          "history": HISTORY, "rounds": rounds, "k": k or "all",
                          "build_seconds": round(build_seconds, 1),
                          "engine": "Qdrant Edge, exact search, one thread"},
                "rows": rows}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _summarize(per_round: list[dict[str, tuple[list[float], list[float]]]],
               n_cands: int) -> list[dict[str, Any]]:
    """Per variant: the median round's medians (ms) and ratios to default, with the range of
    the per-round ratios."""
    out = []
    for name in VARIANTS:
        wall = [float(np.median(r[name][0])) for r in per_round]
        cpu = [float(np.median(r[name][1])) for r in per_round]
        wall_ratio = [w / float(np.median(r["default"][0])) for w, r in zip(wall, per_round,
                                                                             strict=True)]
        cpu_ratio = [c / float(np.median(r["default"][1])) for c, r in zip(cpu, per_round,
                                                                            strict=True)]
        out.append({"candidates": n_cands, "variant": name,
                    "wall_ms": round(float(np.median(wall)) * 1e3, 4),
                    "cpu_ms": round(float(np.median(cpu)) * 1e3, 4),
                    "wall_ratio": round(float(np.median(wall_ratio)), 3),
                    "cpu_ratio": round(float(np.median(cpu_ratio)), 3),
                    "wall_ratio_range": [round(min(wall_ratio), 3), round(max(wall_ratio), 3)],
                    "cpu_ratio_range": [round(min(cpu_ratio), 3), round(max(cpu_ratio), 3)]})
    return out


def format_rows(result: dict[str, Any]) -> str:
    """The rows as a markdown table."""
    setup = result["setup"]
    lines = [f"{setup['personas']:,} personas ({setup['items']:,} items, {setup['dim']}-d) "
             f"with MaxSim on {setup['engine']}; {setup['users']} users of {setup['history']} "
             f"interactions, k = {setup['k']}, {setup['rounds']} rounds, warm caches; ratios "
             "to default per round (median [lowest, highest])", "",
             "| candidates | variant | wall ms | CPU ms | wall ratio | CPU ratio |",
             "|---|---|---|---|---|---|"]
    for row in result["rows"]:
        wl, wh = row["wall_ratio_range"]
        cl, ch = row["cpu_ratio_range"]
        lines.append(f"| {row['candidates']} | {row['variant']} | {row['wall_ms']:.3f} | "
                     f"{row['cpu_ms']:.3f} | {row['wall_ratio']:.2f} [{wl:.2f}, {wh:.2f}] | "
                     f"{row['cpu_ratio']:.2f} [{cl:.2f}, {ch:.2f}] |")
    return "\n".join(lines)
