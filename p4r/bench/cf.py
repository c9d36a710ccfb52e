"""BPR-MF through ``implicit`` against p4r's former hand-written torch BPR, in one run.

:func:`run_cf_bench` trains both on a ``train.txt``/``test.txt`` folder (the Amazon Books CF
data in ``../shared/data/amazon-book-cf``) and reports HR@20 / NDCG@20 on the test file with
training wall and CPU time. The machine is shared and noisy, so every repetition trains each
variant once, the variants' order alternates between repetitions, and the time ratio is taken
per repetition (same load) before its median is reported.

The former generator is :func:`p4r.evaluation.generators.train_torch` with ``layers=0`` (plain
BPR-MF: it is LightGCN's loop without propagation), at its former defaults (64-d, 40 epochs,
Adam 5e-3, reg 1e-4).

implicit's defaults (``learning_rate=0.01``, ``regularization=0.01``) under-train at 64 factors
and 100 epochs here (HR@20 0.115 on the test file, seen once before any choice was made). The
defaults in :func:`p4r.evaluation.generators.train` were chosen by :func:`bpr_validation_grid`:
one random training item per user (seed 0) held out of ``train.txt``, never the test file.
Validation HR@20, seed 0, 100 epochs, 64 factors:

| lr \\ reg | 0.01 | 0.001 |
|---|---|---|
| 0.01 | 0.152 | 0.161 |
| 0.05 | 0.265 | 0.279 |
| 0.1 | 0.275 | 0.282 |
| 0.2 | 0.288 | 0.279 |

0.05–0.2 is one plateau (differences within a seed's noise); lr 0.1 with reg 0.001 sits in its
middle, and reg 0.001 was better at two of its three rates.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from p4r.evaluation.generators import (
    InteractionMatrix,
    TrainedModel,
    read_cf_lines,
    top_k,
    train,
    train_torch,
)
from p4r.evaluation.metrics import evaluate

Trainer = Callable[[InteractionMatrix, int, int], TrainedModel]
"""``(data, seed, threads) → trained model``."""


def _variants(torch_epochs: int, bpr_epochs: Sequence[int]) -> dict[str, Trainer]:
    out: dict[str, Trainer] = {
        "bpr-torch": lambda data, seed, threads: train_torch(
            data, layers=0, epochs=torch_epochs, seed=seed, threads=threads)}
    for epochs in bpr_epochs:
        out[f"bpr-implicit@{epochs}"] = (
            lambda data, seed, threads, epochs=epochs: train(  # type: ignore[misc]
                data, "bpr", epochs=epochs, seed=seed, threads=threads))
    return out


def read_split(root: Path) -> tuple[InteractionMatrix, dict[str, set[str]]]:
    """The training matrix and each test user's relevant items from ``root``."""
    matrix = InteractionMatrix.from_pairs(read_cf_lines(root / "train.txt"))
    gt: dict[str, set[str]] = {}
    for user, item in read_cf_lines(root / "test.txt"):
        gt.setdefault(user, set()).add(item)
    return matrix, gt


def _measure(trainer: Trainer, data: InteractionMatrix, gt: dict[str, set[str]], seed: int,
             threads: int, k: int) -> dict[str, float]:
    trained = trainer(data, seed, threads)
    started = time.perf_counter()
    ranked = top_k(trained, data, k)
    top_k_seconds = time.perf_counter() - started
    summary = evaluate({u: [i for i, _ in v] for u, v in ranked.items()}, gt, (k,)).summary()
    return {f"HR@{k}": summary[f"HR@{k}"], f"NDCG@{k}": summary[f"NDCG@{k}"],
            "train_wall_s": trained.seconds, "train_cpu_s": trained.cpu_seconds,
            "top_k_wall_s": top_k_seconds}


def run_cf_bench(root: Path, *, repeats: int = 3, threads: int = 1, k: int = 20,
                 torch_epochs: int = 40, bpr_epochs: Sequence[int] = (100, 40),
                 progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train every variant ``repeats`` times, interleaved; HR/NDCG@k and times per variant.

    Args:
        root: folder with ``train.txt`` and ``test.txt`` (``user item item …`` lines).
        repeats: repetitions; repetition r uses seed r for every variant.
        threads: CPU threads for both libraries (1 keeps implicit deterministic).
        k: the cut for HR and NDCG.
        torch_epochs: epochs of the former torch BPR (its default was 40).
        bpr_epochs: implicit BPR epoch counts to run (100 is p4r's default).
        progress: called with one line per finished run.

    Returns:
        ``{"rows": per-run rows, "summary": per-variant means/ranges and median time ratios
        against bpr-torch, "settings": ...}``.
    """
    data, gt = read_split(root)
    variants = _variants(torch_epochs, bpr_epochs)
    names = list(variants)
    rows: list[dict[str, Any]] = []
    for rep in range(repeats):
        order = names if rep % 2 == 0 else names[::-1]
        for name in order:
            row = {"variant": name, "repeat": rep, "seed": rep,
                   **_measure(variants[name], data, gt, rep, threads, k)}
            rows.append(row)
            if progress is not None:
                progress(" ".join(f"{key}={_fmt(v)}" for key, v in row.items()))
    return {"rows": rows, "summary": summarize(rows, k),
            "settings": {"repeats": repeats, "threads": threads, "k": k,
                         "users": data.n_users, "items": data.n_items,
                         "train_pairs": len(data.pairs), "test_users": len(gt)}}


def summarize(rows: Sequence[dict[str, Any]], k: int = 20) -> dict[str, dict[str, float]]:
    """Per variant: mean, min and max of the metrics, median times, and the median over
    repetitions of bpr-torch's time divided by the variant's (same repetition)."""
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_variant.setdefault(row["variant"], []).append(row)
    baseline = {r["repeat"]: r for r in by_variant.get("bpr-torch", [])}
    out: dict[str, dict[str, float]] = {}
    for name, runs in by_variant.items():
        entry: dict[str, float] = {}
        for metric in (f"HR@{k}", f"NDCG@{k}"):
            values = [r[metric] for r in runs]
            entry |= {metric: float(np.mean(values)), f"{metric}_min": min(values),
                      f"{metric}_max": max(values)}
        for clock in ("train_wall_s", "train_cpu_s", "top_k_wall_s"):
            entry[clock] = statistics.median(r[clock] for r in runs)
        paired = [r for r in runs if r["repeat"] in baseline]
        for clock in ("train_wall_s", "train_cpu_s"):
            if paired:
                entry[f"speedup_{clock}"] = statistics.median(
                    baseline[r["repeat"]][clock] / r[clock] for r in paired)
        out[name] = entry
    return out


def holdout_one_per_user(pairs: Sequence[tuple[str, str]], seed: int = 0
                         ) -> tuple[list[tuple[str, str]], dict[str, set[str]]]:
    """One random item per user with two or more items held out (a validation split)."""
    by_user: dict[str, list[str]] = {}
    for user, item in pairs:
        by_user.setdefault(user, []).append(item)
    rng = np.random.default_rng(seed)
    kept: list[tuple[str, str]] = []
    held: dict[str, set[str]] = {}
    for user in sorted(by_user):
        items = by_user[user]
        drop = int(rng.integers(len(items))) if len(items) >= 2 else -1
        if drop >= 0:
            held[user] = {items[drop]}
        kept.extend((user, item) for j, item in enumerate(items) if j != drop)
    return kept, held


def bpr_validation_grid(root: Path, *, lrs: Sequence[float] = (0.01, 0.05, 0.1, 0.2),
                        regs: Sequence[float] = (0.01, 0.001), epochs: int = 100,
                        seed: int = 0, k: int = 20) -> list[dict[str, float]]:
    """Validation HR@k of implicit BPR per (lr, reg) on a split of ``train.txt`` only."""
    kept, held = holdout_one_per_user(read_cf_lines(root / "train.txt"), seed)
    data = InteractionMatrix.from_pairs(kept)
    out = []
    for lr in lrs:
        for reg in regs:
            trained = train(data, "bpr", epochs=epochs, lr=lr, reg=reg, seed=seed)
            ranked = top_k(trained, data, k)
            hr = evaluate({u: [i for i, _ in v] for u, v in ranked.items()}, held,
                          (k,)).summary()[f"HR@{k}"]
            out.append({"lr": lr, "reg": reg, f"HR@{k}": hr})
    return out


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


if __name__ == "__main__":  # pragma: no cover - manual run
    import json
    import sys

    result = run_cf_bench(Path(sys.argv[1]), progress=print)
    print(json.dumps(result["summary"], indent=2))
