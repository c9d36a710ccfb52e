"""Collaborative-filtering candidate generators: BPR-MF and LightGCN in compact torch.

No maintained library installs offline here with LightGCN (``implicit`` has BPR only, RecBole
pulls a large stack), so both models are written out; they share data handling, the BPR loss
and the masked top-K.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from p4r.datasets.jsonl import read_text_lines
from p4r.errors import InputError

Model = Literal["bpr", "lightgcn"]


@dataclass
class InteractionMatrix:
    """Training pairs over contiguous integer ids, with the original ids kept."""

    users: list[str]
    items: list[str]
    pairs: np.ndarray  # (n, 2) int64 of (user index, item index)

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)

    @classmethod
    def from_pairs(cls, pairs: Sequence[tuple[str, str]]) -> InteractionMatrix:
        """Index users and items in first-seen order; duplicate pairs collapse."""
        users: dict[str, int] = {}
        items: dict[str, int] = {}
        rows = {(users.setdefault(u, len(users)), items.setdefault(i, len(items)))
                for u, i in pairs}
        array = np.array(sorted(rows), dtype=np.int64).reshape(-1, 2)
        return cls(users=list(users), items=list(items), pairs=array)


def read_cf_lines(path: Path) -> list[tuple[str, str]]:
    """``user item item …`` lines (the EXP3RT / LightGCN text format) as pairs."""
    pairs = []
    for number, line in read_text_lines(path):
        parts = line.split()
        if not parts:
            continue
        if len(parts) == 1:
            continue  # a user without items in this part of the split
        if not all(p.lstrip("-").isdigit() or p for p in parts):
            raise InputError("expected 'user item item ...'", file=path, line=number)
        pairs.extend((parts[0], item) for item in parts[1:])
    return pairs


@dataclass
class TrainedModel:
    """User and item embeddings of a trained generator."""

    name: str
    user_emb: np.ndarray
    item_emb: np.ndarray
    seconds: float
    epochs: int


def train(
    data: InteractionMatrix,
    model: Model,
    *,
    dim: int = 64,
    epochs: int | None = None,
    batch_size: int = 4096,
    lr: float | None = None,
    reg: float = 1e-4,
    layers: int = 3,
    seed: int = 0,
    threads: int | None = None,
) -> TrainedModel:
    """Train BPR-MF or LightGCN with the BPR loss and uniform negative sampling."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    epochs = epochs or (40 if model == "bpr" else 60)
    lr = lr or 5e-3
    users = torch.nn.Embedding(data.n_users, dim)
    items = torch.nn.Embedding(data.n_items, dim)
    torch.nn.init.normal_(users.weight, std=0.1)
    torch.nn.init.normal_(items.weight, std=0.1)
    params = [users.weight, items.weight]
    optimizer = torch.optim.Adam(params, lr=lr)

    adjacency = _normalized_adjacency(data) if model == "lightgcn" else None

    def propagate() -> tuple[torch.Tensor, torch.Tensor]:
        if adjacency is None:
            return users.weight, items.weight
        layer = torch.cat([users.weight, items.weight])
        total = layer
        for _ in range(layers):
            layer = torch.sparse.mm(adjacency, layer)
            total = total + layer
        mean = total / (layers + 1)
        return mean[:data.n_users], mean[data.n_users:]

    positives = data.pairs
    seen = set(map(tuple, positives.tolist()))
    started = time.perf_counter()
    for _ in range(epochs):
        order = rng.permutation(len(positives))
        for start in range(0, len(order), batch_size):
            batch = positives[order[start:start + batch_size]]
            negatives = rng.integers(0, data.n_items, size=len(batch))
            for j, (u, n) in enumerate(zip(batch[:, 0], negatives, strict=True)):
                while (int(u), int(n)) in seen:  # resample the rare collisions
                    n = rng.integers(0, data.n_items)
                negatives[j] = n
            u_all, i_all = propagate()
            u = u_all[torch.from_numpy(batch[:, 0])]
            pos = i_all[torch.from_numpy(batch[:, 1])]
            neg = i_all[torch.from_numpy(negatives)]
            loss = -torch.nn.functional.logsigmoid((u * pos).sum(1) - (u * neg).sum(1)).mean()
            ego = (users.weight[torch.from_numpy(batch[:, 0])].pow(2).sum()
                   + items.weight[torch.from_numpy(batch[:, 1])].pow(2).sum()
                   + items.weight[torch.from_numpy(negatives)].pow(2).sum()) / len(batch)
            optimizer.zero_grad()
            (loss + reg * ego / 2).backward()
            optimizer.step()
    with torch.no_grad():
        u_all, i_all = propagate()
    return TrainedModel(model, u_all.detach().numpy().copy(), i_all.detach().numpy().copy(),
                        time.perf_counter() - started, epochs)


def _normalized_adjacency(data: InteractionMatrix):  # type: ignore[no-untyped-def]
    """Symmetric D^-1/2 A D^-1/2 of the user–item bipartite graph (sparse)."""
    import torch

    n = data.n_users + data.n_items
    rows = np.concatenate([data.pairs[:, 0], data.pairs[:, 1] + data.n_users])
    cols = np.concatenate([data.pairs[:, 1] + data.n_users, data.pairs[:, 0]])
    degree = np.bincount(rows, minlength=n).astype(np.float32)
    inv_sqrt = np.where(degree > 0, degree ** -0.5, 0.0)
    values = inv_sqrt[rows] * inv_sqrt[cols]
    index = torch.from_numpy(np.stack([rows, cols]))
    return torch.sparse_coo_tensor(index, torch.from_numpy(values.astype(np.float32)),
                                   (n, n), check_invariants=False).coalesce()


def top_k(model: TrainedModel, data: InteractionMatrix, k: int = 20,
          chunk: int = 2048) -> dict[str, list[tuple[str, float]]]:
    """Top-K items per user by dot product, training items excluded."""
    train_by_user: dict[int, list[int]] = {}
    for u, i in data.pairs.tolist():
        train_by_user.setdefault(u, []).append(i)
    out: dict[str, list[tuple[str, float]]] = {}
    k = min(k, data.n_items)
    for start in range(0, data.n_users, chunk):
        stop = min(start + chunk, data.n_users)
        scores = model.user_emb[start:stop] @ model.item_emb.T
        for row, u in enumerate(range(start, stop)):
            scores[row, train_by_user.get(u, [])] = -np.inf
        best = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        for row, u in enumerate(range(start, stop)):
            order = best[row][np.argsort(-scores[row, best[row]], kind="stable")]
            out[data.users[u]] = [(data.items[i], float(scores[row, i])) for i in order]
    return out


def popularity_top_k(data: InteractionMatrix, k: int = 20) -> dict[str, list[tuple[str, float]]]:
    """Most popular unseen items per user: the baseline a learned generator must beat."""
    counts = np.bincount(data.pairs[:, 1], minlength=data.n_items).astype(np.float64)
    model = TrainedModel("pop", np.ones((data.n_users, 1), dtype=np.float32),
                         counts[:, None].astype(np.float32), 0.0, 0)
    return top_k(model, data, k)
