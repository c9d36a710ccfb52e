"""Encoder training through the encoder itself: LoRA (peft) or every weight, with InfoNCE.

(The default method, a linear head over cached embeddings, lives in :mod:`p4r.encoder.head`;
both train on the tuples defined here, through the epoch loop of :mod:`p4r.encoder.loop` and
the losses of :mod:`p4r.encoder.losses`.)

A training tuple is one judge alignment: the user's last n interactions before the target
(weighted γ^(L-1-i)) and the persona the judge chose. The user vector is the decayed weighted
mean computed inside the loss, so gradients reach every history embedding. Negatives are the
other tuples' positives in the batch, except personas of the positive's own item (they are
masked: a sibling persona is not a wrong answer to learn against).
"""

from __future__ import annotations

import json
import math
import os
import random
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from p4r.datasets.jsonl import as_str, read_jsonl, require
from p4r.datasets.models import Dataset
from p4r.encoder.fingerprint import fingerprint_for
from p4r.encoder.judge_free import SUMMARY_PERSONA
from p4r.encoder.loop import (
    BestEpoch,
    EpochLog,
    TrainReport,
    require_tuples,
    run_epochs,
    score_held_out,
)
from p4r.encoder.losses import in_batch_info_nce
from p4r.encoder.model import import_torch, open_sentence_transformer
from p4r.encoder.profile import decay_weights
from p4r.encoder.ranking import RankingTask
from p4r.encoder.templates import interaction_text, persona_text, summary_text
from p4r.errors import InputError
from p4r.fsutil import atomic_write_text
from p4r.settings import TrainSettings


@dataclass(frozen=True)
class TrainingTuple:
    """History texts (oldest first), the judged persona, and all personas of its item."""

    user_id: str
    item_id: str
    history: tuple[str, ...]
    positive: int  # index into item_personas
    item_personas: tuple[str, ...]

    @property
    def positive_text(self) -> str:
        """Text of the persona the judge chose."""
        return self.item_personas[self.positive]


def build_tuples(dataset: Dataset, alignments: Path, last_n: int) -> list[TrainingTuple]:
    """Join alignments with histories and personas; alignments naming unknown items, personas
    or users without earlier history raise or are skipped with a clear reason."""
    by_user: dict[str, list[Any]] = defaultdict(list)
    for it in dataset.interactions:
        by_user[it.user_id].append(it)
    tuples: list[TrainingTuple] = []
    for line, obj in read_jsonl(alignments):
        user = as_str(require(obj, "user_id", alignments, line), alignments, line, "user_id")
        item = as_str(require(obj, "item_id", alignments, line), alignments, line, "item_id")
        persona = as_str(require(obj, "persona_id", alignments, line), alignments, line,
                         "persona_id")
        texts = _persona_texts(dataset, item)
        if not texts:
            raise InputError(f"item {item!r} has neither personas nor a summary in dataset "
                             f"{dataset.name!r}", file=alignments, line=line, field="item_id")
        ids = list(texts)
        if persona not in ids:
            raise InputError(f"persona {persona!r} is not one of {ids}", file=alignments,
                             line=line, field="persona_id")
        history = by_user.get(user, [])
        target_ts = obj.get("timestamp")
        if target_ts is None:
            target_ts = next((i.timestamp for i in history if i.item_id == item), None)
        before = [i for i in history if target_ts is not None and i.timestamp < float(target_ts)]
        if not before:
            continue  # nothing to build a user vector from
        tuples.append(TrainingTuple(
            user_id=user, item_id=item,
            history=tuple(interaction_text(i) for i in before[-last_n:]),
            positive=ids.index(persona), item_personas=tuple(texts.values())))
    return tuples


def _persona_texts(dataset: Dataset, item: str) -> dict[str, str]:
    """Persona id → text for an item: its personas, or its summary as the one persona
    :data:`~p4r.encoder.judge_free.SUMMARY_PERSONA` when it has none (what the index scores)."""
    record = dataset.items.get(item)
    personas = dataset.personas.get(item)
    if personas:
        summary = record.summary if record else ""
        return {p.persona_id: persona_text(p, summary) for p in personas}
    if record is not None and (record.summary or record.title):
        return {SUMMARY_PERSONA: summary_text(record)}
    return {}


def split_by_user(tuples: Sequence[TrainingTuple], fraction: float,
                  seed: int) -> tuple[list[TrainingTuple], list[TrainingTuple], list[str]]:
    """Hold out a seeded share of *users* (at least one when fraction > 0): validation must
    measure users the encoder never saw, not other tuples of the same users.

    Returns:
        Training tuples, the held-out users' tuples, and the held-out users.
    """
    users = sorted({t.user_id for t in tuples})
    random.Random(seed).shuffle(users)
    n_val = 0 if fraction <= 0 or len(users) < 2 else max(1, round(len(users) * fraction))
    held = set(users[:n_val])
    train = [t for t in tuples if t.user_id not in held]
    val = [t for t in tuples if t.user_id in held]
    return train, val, sorted(held)


def _device_and_dtype(precision: str) -> tuple[str, Any]:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if precision == "fp32":
        return device, None
    if precision == "bf16" or device == "cpu" or torch.cuda.is_bf16_supported():
        return device, torch.bfloat16
    return device, torch.float16


def _return_freed_memory() -> None:
    """Make glibc give large freed blocks back to the OS (no-op elsewhere).

    Each checkpointed chunk allocates and frees a few hundred MB of activations in tensors
    whose sizes vary with padding. With glibc's dynamic mmap threshold those land in the heap
    after the first frees and fragment it: RSS climbed to 3.6–4.5 GB at batch 16 and 256
    tokens although at most one chunk is alive. A fixed 1 MiB threshold keeps large tensors
    in their own mappings, returned on free: the same step peaks at 1.1 GB.
    """
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return


class EncoderTrainer:
    """Fits LoRA adapters (or the full model) of a sentence-transformers encoder."""

    def __init__(self, base_model: str, settings: TrainSettings, *, gamma: float,
                 threads: int | None = None, max_seq_length: int | None = None) -> None:
        _return_freed_memory()
        torch, _ = import_torch(threads)
        self.settings = settings
        self.gamma = gamma
        self.base_model = base_model
        self.device, self.autocast_dtype = _device_and_dtype(settings.precision)
        torch.manual_seed(settings.seed)
        # One length for training, indexing and serving: the caller passes the encoder's.
        self.model = open_sentence_transformer(base_model, device=self.device,
                                               max_seq_length=max_seq_length
                                               or settings.max_seq_length)
        self.max_seq_length = int(self.model.max_seq_length)
        self.peft = settings.method == "lora"
        if self.peft:
            from peft import LoraConfig, get_peft_model

            config = LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha,
                                lora_dropout=settings.lora_dropout,
                                target_modules=list(settings.target_modules), bias="none")
            _set_transformer(self.model, get_peft_model(self.model[0].auto_model, config))

    # -- forward pieces ----------------------------------------------------------------------
    def _autocast(self) -> Any:
        import torch

        return torch.autocast(device_type=self.device, dtype=self.autocast_dtype,
                              enabled=self.autocast_dtype is not None)

    def _forward(self, texts: Sequence[str]) -> Any:
        import torch

        features = self.model.preprocess(list(texts))
        features = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v
                    for k, v in features.items()}
        with self._autocast():
            out = self.model(features)["sentence_embedding"]
        return out.float()

    def embed(self, texts: Sequence[str]) -> Any:
        """Unit embeddings with gradient (float32 out of the autocast region).

        Each distinct text is encoded once. While training, texts go through the model in
        chunks of ``chunk_size`` under activation checkpointing: only a chunk's output is kept
        and its activations are recomputed in the backward pass, so memory no longer grows with
        batch × history × sequence length (keeping every activation of 176 sequences is what
        took 8 GB at batch 16).
        """
        import torch
        from torch.utils.checkpoint import checkpoint

        unique = list(dict.fromkeys(texts))
        position = {t: i for i, t in enumerate(unique)}
        size = self.settings.chunk_size
        checkpointed = self.model.training and torch.is_grad_enabled()
        parts = []
        for start in range(0, len(unique), size):
            chunk = unique[start:start + size]
            parts.append(checkpoint(self._forward, chunk, use_reentrant=False)
                         if checkpointed else self._forward(chunk))
        out = torch.cat(parts)[[position[t] for t in texts]]
        return torch.nn.functional.normalize(out, dim=-1)

    def encode_numpy(self, texts: Sequence[str]) -> np.ndarray:
        """Unit embeddings without gradient, in eval mode (validation)."""
        import torch

        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            out = np.concatenate([self.embed(texts[i:i + 64]).numpy()
                                  for i in range(0, len(texts), 64)])
        self.model.train(was_training)
        return out

    def user_vectors(self, batch: Sequence[TrainingTuple]) -> Any:
        """Decayed weighted mean of each tuple's history, inside the graph."""
        import torch

        texts = [t for tup in batch for t in tup.history]
        emb = self.embed(texts)
        weights = torch.tensor(np.concatenate([decay_weights(len(t.history), self.gamma)
                                               for t in batch]), dtype=emb.dtype,
                               device=emb.device)
        owner = torch.tensor([i for i, t in enumerate(batch) for _ in t.history],
                             device=emb.device)
        sums = torch.zeros(len(batch), emb.shape[1], device=emb.device, dtype=emb.dtype)
        sums.index_add_(0, owner, emb * weights[:, None])
        totals = torch.zeros(len(batch), device=emb.device, dtype=emb.dtype)
        totals.index_add_(0, owner, weights)
        return torch.nn.functional.normalize(sums / totals[:, None], dim=-1)

    def loss(self, batch: Sequence[TrainingTuple]) -> Any:
        """InfoNCE over in-batch negatives; same-item personas and duplicates are masked."""
        users = self.user_vectors(batch)
        texts = [t.positive_text for t in batch]
        return in_batch_info_nce(users, self.embed(texts), [t.item_id for t in batch], texts,
                                 self.settings.tau())

    # -- evaluation ----------------------------------------------------------------------------
    def agreement(self, tuples: Sequence[TrainingTuple]) -> tuple[float, float]:
        """Share of tuples whose judged persona ranks first among its item's personas, and
        the chance level (mean of 1/K)."""
        import torch

        if not tuples:
            return float("nan"), float("nan")
        self.model.eval()
        texts = sorted({p for t in tuples for p in t.item_personas})
        with torch.no_grad():
            persona = torch.cat([self.embed(texts[i:i + 64]) for i in range(0, len(texts), 64)])
            row_of = {text: i for i, text in enumerate(texts)}
            hits = 0
            for start in range(0, len(tuples), self.settings.batch_size):
                batch = tuples[start:start + self.settings.batch_size]
                users = self.user_vectors(batch)
                for row, tup in enumerate(batch):
                    rows = persona[[row_of[p] for p in tup.item_personas]]
                    hits += int(int(torch.argmax(rows @ users[row])) == tup.positive)
        chance = float(np.mean([1 / len(t.item_personas) for t in tuples]))
        return hits / len(tuples), chance

    def eval_loss(self, tuples: Sequence[TrainingTuple]) -> float | None:
        """Mean InfoNCE loss over validation batches of two or more tuples."""
        import torch

        losses = []
        self.model.eval()
        with torch.no_grad():
            for batch in _batches(list(tuples), self.settings.batch_size):
                if len(batch) >= 2:
                    losses.append(float(self.loss(batch)))
        return float(np.mean(losses)) if losses else None

    # -- training ------------------------------------------------------------------------------
    def fit(self, train: Sequence[TrainingTuple], val: Sequence[TrainingTuple],
            out_dir: Path, *, resume: bool = True, progress: bool | None = None,
            validation: RankingTask | None = None,
            on_epoch: Callable[[EpochLog], None] | None = None) -> TrainReport:
        """Train with AdamW, warmup then linear decay, checkpoints and early stopping.

        Args:
            train: training tuples.
            val: held-out users' tuples (loss and judge agreement, secondary figures).
            out_dir: output folder (checkpoint, best weights, model, log).
            resume: continue from the checkpoint in ``out_dir`` when there is one.
            progress: show a progress bar (None: when on a terminal).
            validation: next-item ranking of held-out users; early stopping and the kept
                epoch follow its HR@5 (then NDCG@10).
            on_epoch: called with each epoch's log as soon as it is written.
        """
        import torch

        s = self.settings
        require_tuples(train)
        out_dir.mkdir(parents=True, exist_ok=True)
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=s.lr(), weight_decay=s.weight_decay)
        steps_per_epoch = math.ceil(math.ceil(len(train) / s.batch_size) / s.grad_accum)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, _warmup_then_decay(max(1, steps_per_epoch * s.n_epochs()),
                                          s.warmup_ratio))
        report = TrainReport(out_dir=out_dir, model_dir=out_dir / "model",
                             adapter_dir=out_dir / "adapter" if self.peft else None)
        run = _EncoderRun(self, train, val, validation, out_dir, params, optimizer, scheduler,
                          resume=resume, progress=progress)
        return run_epochs(run, report, epochs=s.n_epochs(), patience=s.patience,
                          has_validation=validation is not None, on_epoch=on_epoch)

    # -- weights -------------------------------------------------------------------------------
    def trainable_state(self) -> dict[str, Any]:
        """Copies of the weights being trained (LoRA's, or every weight), by name."""
        return {n: p.detach().cpu().clone() for n, p in self.model.named_parameters()
                if p.requires_grad}

    def load_trainable(self, state: dict[str, Any]) -> None:
        """Put weights from :meth:`trainable_state` back into the model."""
        current = dict(self.model.named_parameters())
        for name, value in state.items():
            current[name].data.copy_(value)

    def save_weights(self, path: Path) -> None:
        """Write the trained weights to ``path/weights.pt``."""
        import torch

        path.mkdir(parents=True, exist_ok=True)
        torch.save(self.trainable_state(), path / "weights.pt")

    def load_weights(self, path: Path) -> None:
        """Read weights written by :meth:`save_weights`."""
        import torch

        self.load_trainable(torch.load(path / "weights.pt", weights_only=True))

    def save(self, out_dir: Path) -> Path:
        """Write the adapter (LoRA), the merged sentence-transformers model and its
        fingerprint; returns the merged model folder (what ``--encoder`` takes)."""
        import copy

        model_dir = out_dir / "model"
        if self.peft:
            peft_model = self.model[0].auto_model
            peft_model.save_pretrained(str(out_dir / "adapter"))
            merged = copy.deepcopy(self.model)
            _set_transformer(merged, merged[0].auto_model.merge_and_unload())
        else:
            merged = self.model
        merged.save(str(model_dir))
        fingerprint = fingerprint_for(str(model_dir))
        atomic_write_text(out_dir / "fingerprint.json",
                          json.dumps({**fingerprint.as_dict(), "base_model": self.base_model,
                                      "peft": self.peft}, indent=2))
        return model_dir


def _warmup_then_decay(total: int, warmup_ratio: float) -> Callable[[int], float]:
    """Learning-rate factor per step: linear warmup over ``warmup_ratio`` of ``total``, then
    linear decay to zero."""
    warmup = int(total * warmup_ratio)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return schedule


class _EncoderRun:
    """One fit of an :class:`EncoderTrainer` as the epoch loop drives it: the optimiser,
    scheduler and shuffling state, best weights in ``best/``, a checkpoint per epoch."""

    def __init__(self, trainer: EncoderTrainer, train: Sequence[TrainingTuple],
                 val: Sequence[TrainingTuple], validation: RankingTask | None, out_dir: Path,
                 params: list[Any], optimizer: Any, scheduler: Any, *, resume: bool,
                 progress: bool | None) -> None:
        self.trainer, self.train, self.val, self.validation = trainer, train, val, validation
        self.out_dir, self.params = out_dir, params
        self.optimizer, self.scheduler = optimizer, scheduler
        self.resume, self.progress = resume, progress
        self.rng = random.Random(trainer.settings.seed)

    def start(self, report: TrainReport, best: BestEpoch) -> int:
        """Load the checkpoint when resuming; returns the first epoch still to run."""
        first = self._load_checkpoint(report, best) if self.resume else 0
        for _ in range(first):
            self.rng.shuffle(list(range(len(self.train))))  # same order as an uninterrupted run
        return first

    def train_epoch(self, epoch: int) -> EpochLog:
        """One pass over the shuffled training tuples."""
        import torch
        from tqdm import tqdm

        s, model = self.trainer.settings, self.trainer.model
        order = list(range(len(self.train)))
        self.rng.shuffle(order)
        model.train()
        losses, steps = [], 0
        batches = list(_batches([self.train[i] for i in order], s.batch_size))
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{s.n_epochs()}", leave=False,
                   disable=None if self.progress is None else not self.progress)
        for index, batch in enumerate(bar):
            if len(batch) < 2:
                continue  # InfoNCE needs a negative
            loss = self.trainer.loss(batch) / s.grad_accum
            loss.backward()
            losses.append(loss.item() * s.grad_accum)
            if (index + 1) % s.grad_accum == 0 or index == len(batches) - 1:
                torch.nn.utils.clip_grad_norm_(self.params, 1.0)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                steps += 1
        return EpochLog(epoch=epoch, steps=steps, train_loss=float(np.mean(losses)),
                        val_loss=None, val_agreement=None, chance=None, seconds=0.0)

    def validate(self, log: EpochLog) -> None:
        score_held_out(log, self.validation, self.trainer.encode_numpy, self.trainer.gamma)
        if self.val:
            log.val_agreement, log.chance = self.trainer.agreement(self.val)
            log.val_loss = self.trainer.eval_loss(self.val)

    def snapshot_best(self) -> None:
        self.trainer.save_weights(self.out_dir / "best")

    def restore_best(self) -> None:
        if (self.out_dir / "best").exists():
            self.trainer.load_weights(self.out_dir / "best")

    def save(self) -> Path:
        return self.trainer.save(self.out_dir)

    def _load_checkpoint(self, report: TrainReport, best: BestEpoch) -> int:
        import torch

        state_path = self.out_dir / "checkpoint" / "state.pt"
        if not state_path.exists():
            return 0
        state = torch.load(state_path, weights_only=False)
        self.trainer.load_trainable(state["weights"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        best.score, best.stale = state["best"], state["stale"]
        best.epoch = report.best_epoch = state.get("best_epoch")
        report.epochs = [EpochLog(**e) for e in state["log"]]
        report.resumed_from = state["epoch"]
        return int(state["epoch"]) + 1

    def checkpoint(self, epoch: int, best: BestEpoch, report: TrainReport) -> None:
        import torch

        state_path = self.out_dir / "checkpoint" / "state.pt"
        state_path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"weights": self.trainer.trainable_state(),
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(), "epoch": epoch,
                    "best": best.score, "stale": best.stale, "best_epoch": report.best_epoch,
                    "log": [asdict(e) for e in report.epochs]}, state_path.with_suffix(".tmp"))
        os.replace(state_path.with_suffix(".tmp"), state_path)


def _batches(seq: list[TrainingTuple], size: int) -> Iterator[list[TrainingTuple]]:
    for start in range(0, len(seq), size):
        yield seq[start:start + size]


def load_adapter(base_model: str, adapter_dir: Path, max_seq_length: int = 128) -> Any:
    """Base sentence-transformers model with a saved LoRA adapter attached (for checks)."""
    from peft import PeftModel

    model = open_sentence_transformer(base_model, max_seq_length=max_seq_length)
    _set_transformer(model, PeftModel.from_pretrained(model[0].auto_model, str(adapter_dir)))
    return model


def _set_transformer(model: Any, inner: Any) -> None:
    """Replace the Hugging Face model inside the first sentence-transformers module.

    Recent sentence-transformers expose ``auto_model`` as a read-only view of ``.model``.
    """
    module = model[0]
    if isinstance(getattr(type(module), "auto_model", None), property):
        module.model = inner
    else:
        module.auto_model = inner
