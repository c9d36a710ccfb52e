"""The one epoch loop of encoder training, shared by the linear head and LoRA/full training.

A method supplies an :class:`EpochTrainer` (how to train one epoch, validate, keep and restore
the best weights, checkpoint, save); :func:`run_epochs` owns what every method does the same
way: the epoch log (``train_log.jsonl`` and the caller's callback), the keep-best rule and
early stopping on held-out users.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sized
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from p4r.encoder.base import Embed
from p4r.encoder.ranking import RankingTask, score_task
from p4r.errors import InputError


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


class EpochTrainer(Protocol):
    """What one training run of a method gives the loop."""

    def start(self, report: TrainReport, best: BestEpoch) -> int:
        """Ready the output folder; the first epoch to run (past a checkpoint's, on resume)."""
        ...

    def train_epoch(self, epoch: int) -> EpochLog:
        """One pass over the training tuples; the log's loss and step count."""
        ...

    def validate(self, log: EpochLog) -> None:
        """Fill the log's validation figures in place."""
        ...

    def snapshot_best(self) -> None:
        """Keep the current weights as the best so far."""
        ...

    def checkpoint(self, epoch: int, best: BestEpoch, report: TrainReport) -> None:
        """Persist what a resumed run needs after ``epoch`` (nothing for a method that
        restarts in seconds)."""
        ...

    def restore_best(self) -> None:
        """Put the kept weights back."""
        ...

    def save(self) -> Path:
        """Write the trained model; returns its folder."""
        ...


def require_tuples(train: Sized) -> None:
    """Refuse to train on fewer than two tuples (a contrastive loss needs a negative)."""
    if len(train) < 2:
        raise InputError(f"need at least 2 training tuples, got {len(train)}",
                         field="alignments")


def run_epochs(trainer: EpochTrainer, report: TrainReport, *, epochs: int, patience: int,
               has_validation: bool,
               on_epoch: Callable[[EpochLog], None] | None = None) -> TrainReport:
    """Train up to ``epochs``, log each, keep the best, stop early, save the kept weights.

    Args:
        trainer: the method's run.
        report: filled in place (epochs, best epoch, stop reason); ``report.out_dir`` gets
            ``train_log.jsonl``.
        epochs: epoch budget.
        patience: epochs without held-out gain before stopping.
        has_validation: whether there are held-out users (no early stop without them).
        on_epoch: called with each epoch's log as soon as it is written.
    """
    best = BestEpoch(patience)
    for epoch in range(trainer.start(report, best), epochs):
        started = time.perf_counter()
        log = trainer.train_epoch(epoch)
        trainer.validate(log)
        log.seconds = round(time.perf_counter() - started, 2)
        record(report, log, on_epoch)
        if best.update(log):
            report.best_epoch = epoch
            trainer.snapshot_best()
        trainer.checkpoint(epoch, best, report)
        if best.exhausted(has_validation) and epoch + 1 < epochs:
            report.stop_reason = (f"stopped after epoch {epoch + 1}: no gain on held-out "
                                  f"users for {patience} epochs")
            break
    trainer.restore_best()
    trainer.save()
    return report


def record(report: TrainReport, log: EpochLog,
           on_epoch: Callable[[EpochLog], None] | None) -> None:
    """Append the epoch to the report and ``train_log.jsonl``, then tell the caller."""
    report.epochs.append(log)
    with (report.out_dir / "train_log.jsonl").open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(asdict(log)) + "\n")
    if on_epoch is not None:
        on_epoch(log)


def score_held_out(log: EpochLog, validation: RankingTask | None, embed: Embed,
                   gamma: float) -> None:
    """Put the held-out users' next-item HR@5 and NDCG@10 under ``embed`` into ``log``."""
    if validation is not None:
        hr, ndcg = score_task(validation, embed, gamma)
        log.val_hr5, log.val_ndcg10 = float(hr.mean()), float(ndcg.mean())
