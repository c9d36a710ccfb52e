"""Training and encoding throughput in fp32 and bf16, measured in the same run."""

from __future__ import annotations

import time
from typing import Any

from p4r.datasets import load_dataset
from p4r.datasets.registry import PACKAGED
from p4r.encoder.templates import interaction_text, persona_text
from p4r.encoder.training import EncoderTrainer, TrainingTuple
from p4r.settings import Settings


def _demo_tuples(n: int) -> list[TrainingTuple]:
    data = load_dataset("demo", PACKAGED["demo"])
    texts = [interaction_text(i) for i in data.interactions]
    items = list(data.personas.items())
    out = []
    for k in range(n):
        item, personas = items[k % len(items)]
        summary = data.items[item].summary
        out.append(TrainingTuple(user_id=f"u{k}", item_id=f"{item}-{k}",
                                 history=tuple(texts[(k + j) % len(texts)] for j in range(5)),
                                 positive=0,
                                 item_personas=tuple(persona_text(p, summary) for p in personas)))
    return out


def run_train_bench(settings: Settings, *, steps: int, n_texts: int,
                    batch_size: int) -> list[dict[str, Any]]:
    """Rows of ``{what, precision, per_second, ratio_to_fp32}`` for training and encoding."""
    import torch

    rows: list[dict[str, Any]] = []
    tuples = _demo_tuples(batch_size * (steps + 1))
    texts = [t for tup in tuples for t in tup.history][:n_texts]
    base: dict[str, float] = {}
    for precision in ("fp32", "bf16"):
        # The head trains from cached vectors (no encoder steps): bench the adapter path.
        method = "lora" if settings.train.method == "head" else settings.train.method
        train_settings = settings.train.model_copy(update={"precision": precision,
                                                          "batch_size": batch_size,
                                                          "method": method})
        trainer = EncoderTrainer(settings.encoder.model, train_settings,
                                 gamma=settings.query.gamma, threads=settings.encoder.threads,
                                 max_seq_length=settings.encoder.max_seq_length)
        params = [p for p in trainer.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-4)
        trainer.model.train()
        batches = [tuples[i * batch_size:(i + 1) * batch_size] for i in range(steps + 1)]
        trainer.loss(batches[0]).backward()  # warm-up
        optimizer.zero_grad()
        started = time.perf_counter()
        for batch in batches[1:]:
            trainer.loss(batch).backward()
            optimizer.step()
            optimizer.zero_grad()
        step_rate = steps / (time.perf_counter() - started)
        trainer.model.eval()
        with torch.no_grad():
            trainer.embed(texts[:8])
            started = time.perf_counter()
            for i in range(0, len(texts), 32):
                trainer.embed(texts[i:i + 32])
            text_rate = len(texts) / (time.perf_counter() - started)
        for what, rate in (("train", step_rate), ("encode", text_rate)):
            base.setdefault(what, rate)
            rows.append({"what": what, "precision": precision, "per_second": round(rate, 3),
                         "ratio_to_fp32": round(rate / base[what], 3)})
    return rows
