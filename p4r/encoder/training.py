"""Encoder training through the encoder itself: LoRA (peft) or every weight, with InfoNCE.

(The default method, a linear head over cached embeddings, lives in :mod:`p4r.encoder.head`;
both share the tuples, the epoch log and the keep-best rule defined here.)

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
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from p4r.datasets.jsonl import as_str, read_jsonl, require
from p4r.datasets.models import Dataset
from p4r.encoder.fingerprint import fingerprint_for, resolve_model_path
from p4r.encoder.profile import decay_weights
from p4r.encoder.ranking import RankingTask, score_task
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
    from p4r.encoder.judge_free import SUMMARY_PERSONA

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


@dataclass
class EpochLog:
    """One line of train_log.jsonl: loss, next-item ranking of held-out users (the early-stop
    signal) and judge agreement (secondary, only where items have several personas)."""

    epoch: int
    steps: int
    train_loss: float
    val_loss: float | None
    val_agreement: float | None
    chance: float | None
    seconds: float
    val_hr5: float | None = None
    val_ndcg10: float | None = None

    def line(self, epochs: int, baseline: dict[str, float] | None = None) -> str:
        """One human line: what this epoch did, next to the vanilla figure of the same run."""
        text = f"epoch {self.epoch + 1}/{epochs}: loss {self.train_loss:.4f}"
        if self.val_hr5 is not None and self.val_ndcg10 is not None:
            text += f", unseen users HR@5 {self.val_hr5:.3f} NDCG@10 {self.val_ndcg10:.3f}"
            if baseline:
                text += (f" (vanilla {baseline['HR@5']:.3f} / {baseline['NDCG@10']:.3f})")
        if self.val_agreement is not None and self.chance is not None and self.chance < 1:
            text += f", judge agreement {self.val_agreement:.3f} (chance {self.chance:.3f})"
        return text + f" in {self.seconds:.0f}s"


@dataclass
class TrainReport:
    """Where the outputs are and how training went."""

    out_dir: Path
    model_dir: Path
    adapter_dir: Path | None
    epochs: list[EpochLog] = field(default_factory=list)
    best_epoch: int | None = None
    resumed_from: int | None = None
    baseline: dict[str, float] | None = None
    stop_reason: str = ""


@dataclass
class BestEpoch:
    """Keeps the best epoch by held-out ranking (HR@5, then NDCG@10); by training loss when
    there is no validation. Counts epochs without gain for early stopping."""

    patience: int
    score: tuple[float, float] | None = None
    epoch: int | None = None
    stale: int = 0

    def update(self, log: EpochLog) -> bool:
        """Record an epoch; True when it is the new best."""
        score = ((log.val_hr5, log.val_ndcg10 or 0.0) if log.val_hr5 is not None
                 else (-log.train_loss, 0.0))
        if self.score is None or score > self.score:
            self.score, self.epoch, self.stale = score, log.epoch, 0
            return True
        self.stale += 1
        return False

    def exhausted(self, has_validation: bool) -> bool:
        """Stop when validation has not improved for ``patience`` epochs."""
        return has_validation and self.stale >= self.patience


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
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        _return_freed_memory()
        import torch
        import transformers
        from sentence_transformers import SentenceTransformer

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
        if threads:
            torch.set_num_threads(threads)
        self.settings = settings
        self.gamma = gamma
        self.base_model = base_model
        self.device, self.autocast_dtype = _device_and_dtype(settings.precision)
        torch.manual_seed(settings.seed)
        self.model = SentenceTransformer(str(resolve_model_path(base_model)), device=self.device)
        # One length for training, indexing and serving: the caller passes the encoder's.
        length = max_seq_length or settings.max_seq_length
        if length:
            self.model.max_seq_length = length
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
        import torch

        users = self.user_vectors(batch)
        positives = self.embed([t.positive_text for t in batch])
        logits = users @ positives.T / self.settings.tau()
        items = [t.item_id for t in batch]
        texts = [t.positive_text for t in batch]
        mask = torch.tensor([[i != j and (items[i] == items[j] or texts[i] == texts[j])
                              for j in range(len(batch))] for i in range(len(batch))],
                            device=logits.device)
        logits = logits.masked_fill(mask, float("-inf"))
        return torch.nn.functional.cross_entropy(logits, torch.arange(len(batch),
                                                                      device=logits.device))

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
        if len(train) < 2:
            raise InputError(f"need at least 2 training tuples, got {len(train)}",
                             field="alignments")
        out_dir.mkdir(parents=True, exist_ok=True)
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=s.lr(), weight_decay=s.weight_decay)
        steps_per_epoch = math.ceil(math.ceil(len(train) / s.batch_size) / s.grad_accum)
        total = max(1, steps_per_epoch * s.n_epochs())
        warmup = int(total * s.warmup_ratio)

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            return max(0.0, (total - step) / max(1, total - warmup))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        report = TrainReport(out_dir=out_dir, model_dir=out_dir / "model",
                             adapter_dir=out_dir / "adapter" if self.peft else None)
        best = BestEpoch(s.patience)
        start_epoch = self._resume(out_dir, optimizer, scheduler, report, best) if resume else 0
        rng = random.Random(s.seed)
        for _ in range(start_epoch):
            rng.shuffle(list(range(len(train))))  # same order as an uninterrupted run
        for epoch in range(start_epoch, s.n_epochs()):
            log = self._epoch(epoch, train, rng, optimizer, scheduler, params, progress)
            self._validate(log, val, validation)
            _record(report, log, out_dir, on_epoch)
            if best.update(log):
                report.best_epoch = epoch
                self._save_weights(out_dir / "best")
            self._checkpoint(out_dir, optimizer, scheduler, epoch, best, report)
            if best.exhausted(validation is not None) and epoch + 1 < s.n_epochs():
                report.stop_reason = (f"stopped after epoch {epoch + 1}: no gain on held-out "
                                      f"users for {s.patience} epochs")
                break
        if (out_dir / "best").exists():
            self._load_weights(out_dir / "best")
        self.save(out_dir)
        return report

    def _epoch(self, epoch: int, train: Sequence[TrainingTuple], rng: random.Random,
               optimizer: Any, scheduler: Any, params: list[Any],
               progress: bool | None) -> EpochLog:
        """One pass over the shuffled training tuples."""
        import torch
        from tqdm import tqdm

        s = self.settings
        started = time.perf_counter()
        order = list(range(len(train)))
        rng.shuffle(order)
        self.model.train()
        losses, steps = [], 0
        batches = list(_batches([train[i] for i in order], s.batch_size))
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{s.n_epochs()}", leave=False,
                   disable=None if progress is None else not progress)
        for index, batch in enumerate(bar):
            if len(batch) < 2:
                continue  # InfoNCE needs a negative
            loss = self.loss(batch) / s.grad_accum
            loss.backward()
            losses.append(loss.item() * s.grad_accum)
            if (index + 1) % s.grad_accum == 0 or index == len(batches) - 1:
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                steps += 1
        return EpochLog(epoch=epoch, steps=steps, train_loss=float(np.mean(losses)),
                        val_loss=None, val_agreement=None, chance=None,
                        seconds=round(time.perf_counter() - started, 2))

    def _validate(self, log: EpochLog, val: Sequence[TrainingTuple],
                  validation: RankingTask | None) -> None:
        """Fill the epoch's validation figures in place."""
        if validation is not None:
            hr, ndcg = score_task(validation, self.encode_numpy, self.gamma)
            log.val_hr5, log.val_ndcg10 = float(hr.mean()), float(ndcg.mean())
        if val:
            log.val_agreement, log.chance = self.agreement(val)
            log.val_loss = self.eval_loss(val)

    def _resume(self, out_dir: Path, optimizer: Any, scheduler: Any, report: TrainReport,
                best: BestEpoch) -> int:
        """Load the checkpoint when there is one; returns the first epoch still to run."""
        import torch

        state_path = out_dir / "checkpoint" / "state.pt"
        if not state_path.exists():
            return 0
        state = torch.load(state_path, weights_only=False)
        self._trainable_load(state["weights"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        best.score, best.stale = state["best"], state["stale"]
        best.epoch = report.best_epoch = state.get("best_epoch")
        report.epochs = [EpochLog(**e) for e in state["log"]]
        report.resumed_from = state["epoch"]
        return int(state["epoch"]) + 1

    def _checkpoint(self, out_dir: Path, optimizer: Any, scheduler: Any, epoch: int,
                    best: BestEpoch, report: TrainReport) -> None:
        import torch

        state_path = out_dir / "checkpoint" / "state.pt"
        state_path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"weights": self._trainable_state(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "epoch": epoch, "best": best.score,
                    "stale": best.stale, "best_epoch": report.best_epoch,
                    "log": [asdict(e) for e in report.epochs]}, state_path.with_suffix(".tmp"))
        os.replace(state_path.with_suffix(".tmp"), state_path)

    # -- weights -------------------------------------------------------------------------------
    def _trainable_state(self) -> dict[str, Any]:
        return {n: p.detach().cpu().clone() for n, p in self.model.named_parameters()
                if p.requires_grad}

    def _trainable_load(self, state: dict[str, Any]) -> None:
        current = dict(self.model.named_parameters())
        for name, value in state.items():
            current[name].data.copy_(value)

    def _save_weights(self, path: Path) -> None:
        import torch

        path.mkdir(parents=True, exist_ok=True)
        torch.save(self._trainable_state(), path / "weights.pt")

    def _load_weights(self, path: Path) -> None:
        import torch

        self._trainable_load(torch.load(path / "weights.pt", weights_only=True))

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


def _record(report: TrainReport, log: EpochLog, out_dir: Path,
            on_epoch: Callable[[EpochLog], None] | None) -> None:
    """Append the epoch to the report and ``train_log.jsonl``, then tell the caller."""
    report.epochs.append(log)
    with (out_dir / "train_log.jsonl").open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(asdict(log)) + "\n")
    if on_epoch is not None:
        on_epoch(log)


def _batches(seq: list[TrainingTuple], size: int) -> Iterator[list[TrainingTuple]]:
    for start in range(0, len(seq), size):
        yield seq[start:start + size]


def load_adapter(base_model: str, adapter_dir: Path, max_seq_length: int = 128) -> Any:
    """Base sentence-transformers model with a saved LoRA adapter attached (for checks)."""
    from peft import PeftModel
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(resolve_model_path(base_model)), device="cpu")
    model.max_seq_length = max_seq_length
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
