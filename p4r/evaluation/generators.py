"""Collaborative-filtering candidate generators: BPR-MF through ``implicit``, LightGCN in torch.

BPR-MF is implicit's CPU model (about 20× faster than the torch loop p4r had, and better at its
default 100 epochs; :mod:`p4r.bench.cf` measures both). ``implicit`` has no LightGCN and PyG's
was 4× slower, so LightGCN stays a compact torch loop with the BPR loss. Both keep p4r's
interface: :func:`train` on an :class:`InteractionMatrix` with one seed, :func:`top_k` with the
user's training items excluded.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from p4r.datasets.jsonl import read_text_lines
from p4r.errors import ConfigError, InputError

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
    """User and item embeddings of a trained generator: ``user_emb @ item_emb.T`` scores.

    ``recommender`` is the fitted ``implicit`` model when one trained these factors (BPR-MF);
    :func:`top_k` then asks it for recommendations. ``seconds`` and ``cpu_seconds`` are the
    training's wall and process CPU time (CPU time sums over threads).
    """

    name: str
    user_emb: np.ndarray
    item_emb: np.ndarray
    seconds: float
    epochs: int
    cpu_seconds: float = 0.0
    recommender: Any = None


def train(
    data: InteractionMatrix,
    model: Model,
    *,
    dim: int = 64,
    epochs: int | None = None,
    batch_size: int = 4096,
    lr: float | None = None,
    reg: float | None = None,
    layers: int = 3,
    seed: int = 0,
    threads: int | None = None,
) -> TrainedModel:
    """Train BPR-MF (``implicit``) or LightGCN (torch) on ``data``.

    Args:
        data: the training pairs.
        model: ``"bpr"`` or ``"lightgcn"``.
        dim: embedding width (BPR's ``factors``; its item bias is one more column).
        epochs: passes over the training pairs (default 100 for BPR, 60 for LightGCN).
        batch_size: LightGCN's minibatch (BPR's SGD takes one pair at a time).
        lr: learning rate (default 0.1 for BPR, 5e-3 for LightGCN).
        reg: L2 regularisation (default 0.001 for BPR, 1e-4 for LightGCN). BPR's defaults
            were chosen on a validation split of the Amazon Books training file
            (:mod:`p4r.bench.cf`); implicit's own (0.01, 0.01) under-train at 100 epochs.
        layers: LightGCN propagation layers.
        seed: the one seed for initialisation and sampling.
        threads: CPU threads. BPR defaults to 1, because implicit's SGD updates shared factors
            without locks (Hogwild), so more threads are faster but no longer reproducible.

    Returns:
        The trained embeddings, with wall and CPU training time.
    """
    if model == "bpr":
        return train_bpr(data, dim=dim, epochs=epochs or 100, lr=lr or 0.1,
                         reg=0.001 if reg is None else reg, seed=seed, threads=threads or 1)
    if model == "lightgcn":
        return train_torch(data, layers=layers, dim=dim, epochs=epochs or 60,
                           batch_size=batch_size, lr=lr or 5e-3,
                           reg=1e-4 if reg is None else reg, seed=seed, threads=threads)
    raise ValueError(f"unknown CF model {model!r}; expected 'bpr' or 'lightgcn'")


def user_item_matrix(data: InteractionMatrix) -> Any:
    """The training pairs as a ``users × items`` float32 CSR matrix of ones (implicit's input)."""
    from scipy.sparse import csr_matrix

    ones = np.ones(len(data.pairs), dtype=np.float32)
    matrix = csr_matrix((ones, (data.pairs[:, 0], data.pairs[:, 1])),
                        shape=(data.n_users, data.n_items), dtype=np.float32)
    matrix.sort_indices()
    return matrix


def _import_implicit_bpr() -> Any:
    try:
        from implicit.cpu.bpr import BayesianPersonalizedRanking
    except ImportError:
        raise ConfigError("BPR-MF needs the implicit package: pip install 'p4r[eval]'") from None
    return BayesianPersonalizedRanking


def train_bpr(data: InteractionMatrix, *, dim: int = 64, epochs: int = 100, lr: float = 0.1,
              reg: float = 0.001, seed: int = 0, threads: int = 1) -> TrainedModel:
    """BPR-MF with implicit's CPU model (plain SGD with an item bias).

    Each epoch draws, with replacement, as many training pairs (user, liked) as there are; the
    other item is the item of another random training pair, so negatives follow popularity
    (the torch loop drew them uniformly), and a draw whose other item the user liked is
    skipped. With ``threads=1`` and a fixed ``seed`` the factors are identical run to run.
    The returned ``user_emb`` carries implicit's constant-1 column and ``item_emb`` the item
    bias, so their dot product is exactly the score implicit ranks by.
    """
    bpr_class = _import_implicit_bpr()
    bpr = bpr_class(factors=dim, learning_rate=lr, regularization=reg, iterations=epochs,
                    num_threads=threads, verify_negative_samples=True, random_state=seed)
    matrix = user_item_matrix(data)
    wall, cpu = time.perf_counter(), time.process_time()
    bpr.fit(matrix, show_progress=False)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return TrainedModel("bpr", np.asarray(bpr.user_factors), np.asarray(bpr.item_factors),
                        wall, epochs, cpu, recommender=bpr)


def train_torch(
    data: InteractionMatrix,
    *,
    layers: int,
    dim: int = 64,
    epochs: int = 60,
    batch_size: int = 4096,
    lr: float = 5e-3,
    reg: float = 1e-4,
    seed: int = 0,
    threads: int | None = None,
) -> TrainedModel:
    """LightGCN in torch: BPR loss, uniform negatives, Adam; ``layers`` propagation layers.

    ``layers=0`` is plain BPR-MF on the raw embeddings: p4r's hand-written generator before
    BPR moved to ``implicit``, kept only so :mod:`p4r.bench.cf` can measure the two side by
    side (it is the same loop, not a second implementation).
    """
    import torch

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    users = torch.nn.Embedding(data.n_users, dim)
    items = torch.nn.Embedding(data.n_items, dim)
    torch.nn.init.normal_(users.weight, std=0.1)
    torch.nn.init.normal_(items.weight, std=0.1)
    optimizer = torch.optim.Adam([users.weight, items.weight], lr=lr)

    adjacency = _normalized_adjacency(data) if layers > 0 else None

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
    wall, cpu = time.perf_counter(), time.process_time()
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
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return TrainedModel("lightgcn" if layers else "bpr-torch", u_all.detach().numpy().copy(),
                        i_all.detach().numpy().copy(), wall, epochs, cpu)


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
    """Top-K items per user by dot product, training items excluded, best first.

    An ``implicit`` model answers through its own batched ``recommend`` (training items
    filtered); other models are scored here in chunks of users, ties by item index. A user
    with fewer than K unseen items gets only those (never a training item as filler).
    """
    if model.recommender is not None:
        return _recommend_top_k(model.recommender, data, k)
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
            out[data.users[u]] = [(data.items[i], float(scores[row, i])) for i in order
                                  if scores[row, i] != -np.inf]
    return out


def _recommend_top_k(recommender: Any, data: InteractionMatrix,
                     k: int) -> dict[str, list[tuple[str, float]]]:
    """implicit's ``recommend`` for every user at once; slots it could not fill (a user who
    has seen almost every item) come back filtered, with the lowest float, and are dropped."""
    matrix = user_item_matrix(data)
    userids = np.arange(data.n_users)
    ids, scores = recommender.recommend(userids, matrix, N=min(k, data.n_items),
                                        filter_already_liked_items=True)
    floor = -np.finfo(scores.dtype).max
    out: dict[str, list[tuple[str, float]]] = {}
    for u in range(data.n_users):
        out[data.users[u]] = [(data.items[int(i)], float(s))
                              for i, s in zip(ids[u], scores[u], strict=True)
                              if i >= 0 and s > floor]
    return out


def popularity_top_k(data: InteractionMatrix, k: int = 20) -> dict[str, list[tuple[str, float]]]:
    """Most popular unseen items per user: the baseline a learned generator must beat."""
    counts = np.bincount(data.pairs[:, 1], minlength=data.n_items).astype(np.float64)
    model = TrainedModel("pop", np.ones((data.n_users, 1), dtype=np.float32),
                         counts[:, None].astype(np.float32), 0.0, 0)
    return top_k(model, data, k)
