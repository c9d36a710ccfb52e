"""The paper's scaling study on the Edge backend: latency against concurrent users and
against candidates per user, with the numpy brute-force line measured in the same run."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from p4r.bench.query import PER_ITEM, build_synthetic, item_id, numpy_rerank
from p4r.query import Reranker, RerankRequest
from p4r.store.edge import EdgeBackend


def run_latency(personas: int = 125_000, users_levels: tuple[int, ...] = (1, 10, 50, 100),
                candidate_levels: tuple[int, ...] = (20, 50, 100), repeats: int = 30,
                dim: int = 384, base_candidates: int = 20, seed: int = 0,
                work_dir: Path | None = None, progress: bool = True) -> list[dict[str, Any]]:
    """Median wall time of one rerank_batch call per setting, and numpy for the same work."""
    root = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="p4r-latency-"))
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    try:
        backend = EdgeBackend(root / "edge")
        matrix = build_synthetic(backend, "latency", personas, dim, progress=progress).matrix
        reranker = Reranker("latency", backend)
        n_items = personas // PER_ITEM

        def measure(n_users: int, n_cands: int) -> tuple[float, float]:
            engine, baseline = [], []
            for _ in range(repeats):
                picks = [rng.choice(n_items, size=n_cands, replace=False) for _ in range(n_users)]
                queries = rng.standard_normal((n_users, dim), dtype=np.float32)
                queries /= np.linalg.norm(queries, axis=1, keepdims=True)
                requests = [RerankRequest(candidates=[item_id(i) for i in pick], vector=q)
                            for pick, q in zip(picks, queries, strict=True)]
                t0 = time.perf_counter()
                reranker.rerank_batch(requests)
                engine.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                for pick, q in zip(picks, queries, strict=True):
                    numpy_rerank(matrix, q, pick[:, None] * PER_ITEM + np.arange(PER_ITEM))
                baseline.append(time.perf_counter() - t0)
            return float(np.median(engine)) * 1000, float(np.median(baseline)) * 1000

        measure(10, base_candidates)  # warm-up: id map, caches
        for n_users in users_levels:
            ms, numpy_ms = measure(n_users, base_candidates)
            rows.append({"study": "users", "users": n_users, "candidates": base_candidates,
                         "personas": personas, "batch_ms": round(ms, 4),
                         "per_user_ms": round(ms / n_users, 4),
                         "numpy_batch_ms": round(numpy_ms, 4)})
        for n_cands in candidate_levels:
            ms, numpy_ms = measure(1, n_cands)
            rows.append({"study": "candidates", "users": 1, "candidates": n_cands,
                         "personas": personas, "batch_ms": round(ms, 4),
                         "per_user_ms": round(ms, 4), "numpy_batch_ms": round(numpy_ms, 4)})
        backend.close()
    finally:
        if work_dir is None:
            shutil.rmtree(root, ignore_errors=True)
    return rows


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
