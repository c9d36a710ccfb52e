"""Linear-head training: a d×d map on top of the frozen encoder, trained from cached embeddings.

Every text is encoded once by the frozen encoder (through the persistent embedding cache, at
the encoder's own sequence length, so the vectors ``p4r index upsert`` needs are the same ones).
Training then touches only ``W = I + Δ``: an epoch over a thousand tuples takes about a second
on two cores, and memory is a few hundred MB. Each tuple's loss is a softmax over every item
text of the catalogue (not just in-batch ones); texts of the user's own items other than the
positive are masked, since they are not wrong answers. The saved model is the base encoder with
a bias-free ``Dense`` layer before normalisation: a plain sentence-transformers folder that
indexes, serves and exports to ONNX like any other.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from p4r.encoder.base import BaseEncoder, Embed
from p4r.encoder.fingerprint import Fingerprint, fingerprint_for
from p4r.encoder.loop import (
    BestEpoch,
    EpochLog,
    TrainReport,
    require_tuples,
    run_epochs,
    score_held_out,
)
from p4r.encoder.losses import catalogue_info_nce
from p4r.encoder.model import import_torch, open_sentence_transformer
from p4r.encoder.profile import decay_weights
from p4r.encoder.ranking import RankingTask
from p4r.encoder.training import TrainingTuple
from p4r.fsutil import atomic_write_text
from p4r.settings import TrainSettings


class HeadTrainer:
    """Fits ``W`` so that ``normalize(W x)`` ranks each user's next item first."""

    def __init__(self, base_model: str, settings: TrainSettings, *, gamma: float,
                 embed_base: Embed, max_seq_length: int | None) -> None:
        import torch

        self.base_model = base_model
        self.settings = settings
        self.gamma = gamma
        self._embed_base = embed_base
        self._base: dict[str, np.ndarray] = {}  # the frozen encoder's vectors never change
        self.max_seq_length = max_seq_length
        torch.manual_seed(settings.seed)
        self.delta: Any = None  # set by fit once the dimension is known
        self.factors: list[Any] = []
        self.fingerprint: Fingerprint | None = None  # the saved model's, once saved

    # -- the map -------------------------------------------------------------------------------
    def _init_params(self, dim: int) -> list[Any]:
        import torch

        rank = self.settings.head_rank
        if rank:
            a = torch.nn.Parameter(torch.randn(rank, dim) * 0.01)
            b = torch.nn.Parameter(torch.zeros(dim, rank))
            self.factors = [a, b]
            return self.factors
        self.delta = torch.nn.Parameter(torch.zeros(dim, dim))
        return [self.delta]

    def weight(self) -> Any:
        """The current map ``I + Δ`` (or ``I + B A`` at low rank), as a torch tensor."""
        import torch

        delta = self.factors[1] @ self.factors[0] if self.factors else self.delta
        return torch.eye(delta.shape[0]) + delta

    def transform(self, vectors: np.ndarray) -> np.ndarray:
        """Apply the current map to unit base vectors; unit rows out."""
        import torch

        with torch.no_grad():
            w = self.weight().numpy()
        return unit_rows(np.asarray(vectors, dtype=np.float32) @ w.T)

    def embed_base(self, texts: Sequence[str]) -> np.ndarray:
        """The frozen encoder's unit vectors, each text encoded (or read) once per run."""
        missing = [t for t in dict.fromkeys(texts) if t not in self._base]
        if missing:
            self._base.update(zip(missing, np.asarray(self._embed_base(missing),
                                                      dtype=np.float32), strict=True))
        return np.stack([self._base[t] for t in texts])

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """What the trained model will return for ``texts`` (base vector, then the map)."""
        return self.transform(self.embed_base(texts))

    # -- training ------------------------------------------------------------------------------
    def fit(self, train: Sequence[TrainingTuple], catalogue: Mapping[str, Sequence[str]],
            own: Mapping[str, set[str]], out_dir: Path, *,
            validation: RankingTask | None = None,
            on_epoch: Callable[[EpochLog], None] | None = None) -> TrainReport:
        """Train, keep the best epoch by held-out ranking, save the model.

        Args:
            train: training tuples (history texts and the positive persona text).
            catalogue: every item's texts (personas, or summary): the softmax's negatives.
            own: each user's items, masked out of that user's negatives.
            out_dir: output folder; ``model/`` and ``fingerprint.json`` are written there.
            validation: next-item ranking of held-out users (early stopping, kept epoch).
            on_epoch: called with each epoch's log as soon as it is written.
        """
        import torch

        require_tuples(train)
        s = self.settings
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "train_log.jsonl").unlink(missing_ok=True)  # seconds to redo: no resume
        batch = _Tensors.build(train, catalogue, own, self.embed_base, self.gamma)
        params = self._init_params(batch.texts.shape[1])
        optimizer = torch.optim.AdamW(params, lr=s.lr(), weight_decay=s.weight_decay)
        report = TrainReport(out_dir=out_dir, model_dir=out_dir / "model", adapter_dir=None)
        run = _HeadRun(self, batch, params, optimizer, validation, out_dir)
        return run_epochs(run, report, epochs=s.n_epochs(), patience=s.patience,
                          has_validation=validation is not None, on_epoch=on_epoch)

    def step(self, batch: _Tensors, rows: list[int], optimizer: Any) -> float:
        """One AdamW step on the tuples ``rows``; returns the loss."""
        import torch

        w = self.weight()
        texts = torch.nn.functional.normalize(batch.texts @ w.T, dim=-1)
        history = torch.nn.functional.normalize(batch.history[rows] @ w.T, dim=-1)
        loss = catalogue_info_nce(history, batch.weights[rows], texts, batch.positive[rows],
                                  batch.mask[rows], self.settings.tau())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    # -- output --------------------------------------------------------------------------------
    def save(self, out_dir: Path) -> Path:
        """Write ``model/`` (base encoder + Dense head) and ``fingerprint.json``."""
        torch, sentence_transformer = import_torch()
        from sentence_transformers.sentence_transformer.modules import Dense

        base = open_sentence_transformer(self.base_model, max_seq_length=self.max_seq_length)
        modules = list(base)
        names = [type(m).__name__ for m in modules]
        at = names.index("Normalize") if "Normalize" in names else len(modules)
        with torch.no_grad():
            weight = self.weight().detach().clone()
        head = Dense(weight.shape[1], weight.shape[0], bias=False,
                     activation_function=torch.nn.Identity(), init_weight=weight)
        model = sentence_transformer(modules=[*modules[:at], head, *modules[at:]], device="cpu")
        model_dir = out_dir / "model"
        model.save(str(model_dir))
        self.fingerprint = fingerprint_for(str(model_dir))
        atomic_write_text(out_dir / "fingerprint.json",
                          json.dumps({**self.fingerprint.as_dict(),
                                      "base_model": self.base_model, "method": "head"},
                                     indent=2))
        return model_dir

    def encoder(self) -> HeadEncoder:
        """The saved model as a :class:`~p4r.encoder.base.TextEncoder` over the base vectors
        this run already holds (no model is loaded); call after :meth:`save`."""
        if self.fingerprint is None:
            raise RuntimeError("HeadTrainer.encoder() needs a saved model: call save() first")
        import torch

        with torch.no_grad():
            weight = self.weight().numpy().copy()
        return HeadEncoder(self.embed_base, weight, self.fingerprint)


class HeadEncoder(BaseEncoder):
    """A trained head as an encoder: ``normalize(W · base(text))`` from the frozen encoder's
    unit vectors; the same vectors as the saved model, without loading it."""

    def __init__(self, base: Embed, weight: np.ndarray, fingerprint: Fingerprint) -> None:
        super().__init__(fingerprint, batch_size=1, label="trained head")
        self.base, self.weight = base, weight

    def _load(self) -> np.ndarray:
        return self.weight

    def _embed(self, model: np.ndarray, texts: list[str], batch_size: int) -> np.ndarray:
        return unit_rows(np.asarray(self.base(texts), dtype=np.float32) @ model.T)


class _HeadRun:
    """One fit of a :class:`HeadTrainer` as the epoch loop drives it: batches from a seeded
    shuffle, the kept parameters in memory, no checkpoint (an epoch takes seconds)."""

    def __init__(self, trainer: HeadTrainer, batch: _Tensors, params: list[Any],
                 optimizer: Any, validation: RankingTask | None, out_dir: Path) -> None:
        self.trainer, self.batch, self.params = trainer, batch, params
        self.optimizer, self.validation, self.out_dir = optimizer, validation, out_dir
        self.rng = random.Random(trainer.settings.seed)
        self.kept = [p.detach().clone() for p in params]

    def start(self, report: TrainReport, best: BestEpoch) -> int:
        """Always from epoch 0: a head retrains in seconds, so there is nothing to resume."""
        return 0

    def train_epoch(self, epoch: int) -> EpochLog:
        rows = _shuffled_batches(len(self.batch.positive), self.trainer.settings.batch_size,
                                 self.rng)
        losses = [self.trainer.step(self.batch, r, self.optimizer) for r in rows]
        return EpochLog(epoch=epoch, steps=len(losses), train_loss=float(np.mean(losses)),
                        val_loss=None, val_agreement=None, chance=None, seconds=0.0)

    def validate(self, log: EpochLog) -> None:
        score_held_out(log, self.validation, self.trainer.embed, self.trainer.gamma)

    def snapshot_best(self) -> None:
        self.kept = [p.detach().clone() for p in self.params]

    def checkpoint(self, epoch: int, best: BestEpoch, report: TrainReport) -> None:
        """Nothing to persist (see :meth:`start`)."""

    def restore_best(self) -> None:
        import torch

        with torch.no_grad():
            for param, value in zip(self.params, self.kept, strict=True):
                param.copy_(value)

    def save(self) -> Path:
        return self.trainer.save(self.out_dir)


class _Tensors:
    """Base vectors of every text a training run needs, padded into tensors once."""

    def __init__(self, texts: Any, history: Any, weights: Any, positive: Any,
                 mask: Any) -> None:
        self.texts, self.history, self.weights = texts, history, weights
        self.positive, self.mask = positive, mask

    @classmethod
    def build(cls, train: Sequence[TrainingTuple], catalogue: Mapping[str, Sequence[str]],
              own: Mapping[str, set[str]], embed: Embed, gamma: float) -> _Tensors:
        import torch

        owner: dict[str, str] = {}
        for item, texts in sorted(catalogue.items()):
            for text in texts:
                owner.setdefault(text, item)
        for tup in train:
            owner.setdefault(tup.positive_text, tup.item_id)
        rows = list(owner)
        row_of = {t: i for i, t in enumerate(rows)}
        history_texts = sorted({t for tup in train for t in tup.history})
        vectors = np.asarray(embed(rows + history_texts), dtype=np.float32)
        base = dict(zip(rows + history_texts, vectors, strict=True))
        longest = max(len(t.history) for t in train)
        history = np.zeros((len(train), longest, vectors.shape[1]), dtype=np.float32)
        weights = np.zeros((len(train), longest), dtype=np.float32)
        mask = np.zeros((len(train), len(rows)), dtype=bool)
        items = np.array([owner[t] for t in rows])
        for k, tup in enumerate(train):
            history[k, :len(tup.history)] = [base[t] for t in tup.history]
            weights[k, :len(tup.history)] = decay_weights(len(tup.history), gamma)
            mask[k] = np.isin(items, list(own.get(tup.user_id, set()) | {tup.item_id}))
            mask[k, row_of[tup.positive_text]] = False
        return cls(torch.from_numpy(vectors[:len(rows)]), torch.from_numpy(history),
                   torch.from_numpy(weights), torch.tensor([row_of[t.positive_text]
                                                            for t in train]),
                   torch.from_numpy(mask))


def _shuffled_batches(n: int, size: int, rng: random.Random) -> list[list[int]]:
    order = list(range(n))
    rng.shuffle(order)
    return [order[i:i + size] for i in range(0, n, size) if len(order[i:i + size]) >= 2]


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """``vectors`` with each row scaled to length 1."""
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
