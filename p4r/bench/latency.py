"""The paper's scaling study on the Edge backend: latency against concurrent users and
against candidates per user, with the numpy brute-force line measured in the same run, each
in wall and in CPU time (a row whose wall/CPU exceeds 1.5 is flagged disturbed)."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from p4r.bench.query import (
    DISTURBED,
    PER_ITEM,
    build_synthetic,
    item_id,
    load_average,
    numpy_rerank,
)
from p4r.query import Reranker, RerankRequest
from p4r.store.edge import EdgeBackend


def run_latency(personas: int = 125_000, users_levels: tuple[int, ...] = (1, 10, 50, 100),
                candidate_levels: tuple[int, ...] = (20, 50, 100), repeats: int = 30,
                dim: int = 384, base_candidates: int = 20, seed: int = 0,
                work_dir: Path | None = None, progress: bool = True) -> list[dict[str, Any]]:
    """Median wall and CPU time of one rerank_batch call per setting, and numpy's for the
    same work."""
    root = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="p4r-latency-"))
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    try:
        backend = EdgeBackend(root / "edge")
        matrix = build_synthetic(backend, "latency", personas, dim, progress=progress).matrix
        reranker = Reranker("latency", backend)
        n_items = personas // PER_ITEM

        def measure(n_users: int, n_cands: int) -> dict[str, Any]:
            engine, baseline = [], []
            for _ in range(repeats):
                picks = [rng.choice(n_items, size=n_cands, replace=False) for _ in range(n_users)]
                queries = rng.standard_normal((n_users, dim), dtype=np.float32)
                queries /= np.linalg.norm(queries, axis=1, keepdims=True)
                requests = [RerankRequest(candidates=[item_id(i) for i in pick], vector=q)
                            for pick, q in zip(picks, queries, strict=True)]
                engine.append(_timed(lambda requests=requests: reranker.rerank_batch(requests)))
                baseline.append(_timed(lambda picks=picks, queries=queries: [
                    numpy_rerank(matrix, q, pick[:, None] * PER_ITEM + np.arange(PER_ITEM))
                    for pick, q in zip(picks, queries, strict=True)]))
            wall, cpu = (float(np.median(x)) * 1000 for x in zip(*engine, strict=True))
            base, base_cpu = (float(np.median(x)) * 1000 for x in zip(*baseline, strict=True))
            wall_cpu = wall / max(cpu, 1e-9)
            return {"personas": personas, "batch_ms": round(wall, 4),
                    "per_user_ms": round(wall / n_users, 4), "cpu_ms": round(cpu, 4),
                    "cpu_per_user_ms": round(cpu / n_users, 4),
                    "numpy_batch_ms": round(base, 4), "numpy_cpu_ms": round(base_cpu, 4),
                    "wall_over_cpu": round(wall_cpu, 2),
                    "disturbed": bool(wall_cpu > DISTURBED
                                      or base / max(base_cpu, 1e-9) > DISTURBED),
                    "load_1m": load_average()[0]}

        measure(10, base_candidates)  # warm-up: id map, caches
        for n_users in users_levels:
            rows.append({"study": "users", "users": n_users, "candidates": base_candidates,
                         **measure(n_users, base_candidates)})
        for n_cands in candidate_levels:
            rows.append({"study": "candidates", "users": 1, "candidates": n_cands,
                         **measure(1, n_cands)})
        backend.close()
    finally:
        if work_dir is None:
            shutil.rmtree(root, ignore_errors=True)
    return rows


def _timed(call: Callable[[], Any]) -> tuple[float, float]:
    """Wall and process CPU seconds of one call."""
    w0, c0 = time.perf_counter(), time.process_time()
    call()
    return time.perf_counter() - w0, time.process_time() - c0


def plot_latency(rows: list[dict[str, Any]], out: Path) -> Path:
    """Two panels (users, candidates), p4r against numpy, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, study, x_key, label in ((axes[0], "users", "users", "concurrent users (one call)"),
                                    (axes[1], "candidates", "candidates", "candidates per user")):
        part = [r for r in rows if r["study"] == study]
        xs = [r[x_key] for r in part]
        ax.plot(xs, [r["batch_ms"] for r in part], "o-", label="p4r on Qdrant Edge")
        ax.plot(xs, [r["numpy_batch_ms"] for r in part], "s--", label="numpy brute force")
        ax.set_xlabel(label)
        ax.set_ylabel("latency per call (ms)")
        ax.set_xticks(xs)
        ax.grid(alpha=0.3)
        ax.legend()
    personas = rows[0]["personas"] if rows else 0
    fig.suptitle(f"Rerank latency, {personas:,} personas, CPU")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
