"""Latency benchmark: Reranker on synthetic Edge collections beside exact numpy in one run."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from p4r.collections.base import CollectionSpec
from p4r.collections.edge import EdgeBackend
from p4r.collections.naming import alias_name, point_id
from p4r.query.reranker import Reranker, RerankRequest

PER_ITEM = 5
_TEXT = "A synthetic persona used only to give the benchmark realistic payload sizes. " * 2


def build_synthetic(backend: EdgeBackend, dataset: str, personas: int, dim: int, seed: int = 0,
                    progress: bool = True) -> np.ndarray:
    """Create ``personas`` random unit vectors, 5 per item, with real-sized payloads."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((personas, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    name = f"p4r_{dataset}_personas_v1"
    backend.create_collection(CollectionSpec(name=name, dim=dim, metadata={"state": "complete"}))
    step = 4096
    for start in tqdm(range(0, personas, step), desc=f"build {personas}", disable=not progress,
                      leave=False):
        rows = range(start, min(start + step, personas))
        items = [f"i{r // PER_ITEM:06d}" for r in rows]
        ids = [point_id(dataset, it, f"P{r % PER_ITEM}") for r, it in zip(rows, items,
                                                                             strict=True)]
        payloads = [{"item_id": it, "persona_id": f"P{r % PER_ITEM}", "name": "Bench Persona",
                     "description": _TEXT, "rationale": _TEXT} for r, it in zip(rows, items,
                                                                                  strict=True)]
        backend.upsert(name, ids, vectors[start:start + len(ids)], payloads)
    backend.set_aliases({alias_name(dataset): name})
    return vectors


def numpy_rerank(matrix: np.ndarray, user: np.ndarray, item_rows: np.ndarray) -> np.ndarray:
    """Exact baseline: candidate rows (items × 5) → max cosine per item → order."""
    scores = (matrix[item_rows.ravel()] @ user).reshape(item_rows.shape).max(axis=1)
    return np.argsort(-scores, kind="stable")


def _percentiles(samples: list[float]) -> tuple[float, float]:
    arr = np.asarray(samples) * 1000.0
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 99))


def run_bench(sizes: list[int], candidate_counts: list[int], users: int = 300, batch: int = 100,
              dim: int = 384, work_dir: Path | None = None,
              progress: bool = True) -> list[dict[str, Any]]:
    """Time single-user and batched reranking per user, with numpy measured in the same run."""
    root = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="p4r-bench-"))
    rows: list[dict[str, Any]] = []
    rng = np.random.default_rng(1)
    try:
        for size in sizes:
            backend = EdgeBackend(root / f"edge-{size}")
            dataset = f"bench{size}"
            matrix = build_synthetic(backend, dataset, size, dim, progress=progress)
            n_items = size // PER_ITEM
            for n_cands in candidate_counts:
                numpy_p50 = None
                for mode in ("single", "batch"):
                    # Fresh users, candidates and Reranker per mode: no explanation payload
                    # cached by an earlier mode can flatter a later one.
                    reranker = Reranker(dataset, backend, check_encoder=False)
                    picks = [rng.choice(n_items, size=n_cands, replace=False)
                             for _ in range(users)]
                    cands = [[f"i{i:06d}" for i in pick] for pick in picks]
                    queries = rng.standard_normal((users, dim), dtype=np.float32)
                    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
                    warm = rng.standard_normal((5, dim), dtype=np.float32)
                    for q in warm:  # id → item map, page cache, allocator
                        reranker.rerank(vector=q, candidates=[f"i{i:06d}" for i in
                                                              rng.choice(n_items, n_cands)])
                    if numpy_p50 is None:
                        numpy_times = []
                        for q, pick in zip(queries, picks, strict=True):
                            item_rows = pick[:, None] * PER_ITEM + np.arange(PER_ITEM)
                            t0 = time.perf_counter()
                            numpy_rerank(matrix, q, item_rows)
                            numpy_times.append(time.perf_counter() - t0)
                        numpy_p50, _ = _percentiles(numpy_times)
                    samples = []
                    if mode == "single":
                        for q, c in zip(queries, cands, strict=True):
                            t0 = time.perf_counter()
                            reranker.rerank(vector=q, candidates=c)
                            samples.append(time.perf_counter() - t0)
                    else:
                        for start in range(0, users - batch + 1, batch):
                            requests = [RerankRequest(candidates=cands[i], vector=queries[i])
                                        for i in range(start, start + batch)]
                            t0 = time.perf_counter()
                            reranker.rerank_batch(requests)
                            samples.append((time.perf_counter() - t0) / batch)
                    p50, p99 = _percentiles(samples)
                    rows.append({"personas": size, "candidates": n_cands, "mode": mode,
                                 "p50_ms": round(p50, 4), "p99_ms": round(p99, 4),
                                 "numpy_p50_ms": round(numpy_p50, 4)})
            backend.close()
    finally:
        if work_dir is None:
            shutil.rmtree(root, ignore_errors=True)
    return rows
