"""Judge-free alignments: next-item self-labelling with the current encoder, zero LLM calls.

For each training interaction after a user's first, the item is the target; its persona is the
one closest to the user's decayed-mean history vector under the current encoder, or the item's
summary (persona id :data:`SUMMARY_PERSONA`) when the item has no personas. The rows are
``alignments.jsonl`` in the canonical format, so ``p4r-train`` reads them like the LLM judge's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from p4r.datasets.jsonl import read_jsonl
from p4r.datasets.models import Dataset, Interaction
from p4r.datasets.split import leave_one_out
from p4r.encoder.base import Embed
from p4r.encoder.ranking import user_matrix
from p4r.encoder.templates import interaction_text, persona_text

SUMMARY_PERSONA = "summary"


@dataclass(frozen=True)
class Agreement:
    """How often next-item self-labels pick the LLM judge's persona (items with ≥ 2 personas)."""

    compared: int
    agreed: int
    chance: float

    @property
    def rate(self) -> float:
        """Share of compared alignments that agree (NaN when none compare)."""
        return self.agreed / self.compared if self.compared else float("nan")


def training_histories(dataset: Dataset) -> dict[str, list[Interaction]]:
    """Each user's training interactions: the leave-one-out split's train part, so the
    validation and test targets of ``p4r-eval`` are never trained on."""
    return leave_one_out(dataset.interactions).train


def next_item_alignments(dataset: Dataset, embed: Embed, *, last_n: int, gamma: float,
                         users: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Canonical alignment rows for every next-item target with personas or a summary."""
    histories = training_histories(dataset)
    wanted = set(users) if users is not None else None
    targets: list[tuple[str, Interaction, list[Interaction]]] = []
    for user, rows in sorted(histories.items()):
        if wanted is not None and user not in wanted:
            continue
        for k in range(1, len(rows)):
            item = rows[k].item_id
            if dataset.personas.get(item) or (item in dataset.items
                                              and dataset.items[item].summary):
                targets.append((user, rows[k], rows[max(0, k - last_n):k]))
    choices = _closest_personas(dataset, targets, embed, gamma)
    out = []
    for (user, target, history), (persona_id, cosine) in zip(targets, choices, strict=True):
        reason = (f"next-item self-label: persona closest to the previous {len(history)} "
                  f"interactions (cosine {cosine:.3f})" if persona_id != SUMMARY_PERSONA else
                  "next-item: the item has no personas, its summary stands in")
        out.append({"user_id": user, "item_id": target.item_id, "timestamp": target.timestamp,
                    "persona_id": persona_id, "reason": reason})
    return out


def _closest_personas(dataset: Dataset, targets: Sequence[tuple[str, Interaction,
                                                                list[Interaction]]],
                      embed: Embed, gamma: float) -> list[tuple[str, float]]:
    """Per target, the persona id with the highest cosine to the history vector."""
    with_personas = [t for t in targets if dataset.personas.get(t[1].item_id)]
    vectors: dict[str, np.ndarray] = {}
    if with_personas:
        texts = sorted({interaction_text(i) for _, _, h in with_personas for i in h}
                       | {persona_text(p, _summary(dataset, t.item_id))
                          for _, t, _ in with_personas for p in dataset.personas[t.item_id]})
        vectors = dict(zip(texts, np.asarray(embed(texts), dtype=np.float64), strict=True))
    out = []
    for _, target, history in targets:
        personas = dataset.personas.get(target.item_id)
        if not personas:
            out.append((SUMMARY_PERSONA, float("nan")))
            continue
        user = user_matrix([np.stack([vectors[interaction_text(i)] for i in history])],
                           gamma)[0]
        sims = [float(vectors[persona_text(p, _summary(dataset, target.item_id))] @ user)
                for p in personas]
        best = int(np.argmax(sims))
        out.append((personas[best].persona_id, sims[best]))
    return out


def _summary(dataset: Dataset, item_id: str) -> str:
    item = dataset.items.get(item_id)
    return item.summary if item else ""


def agreement_with_judge(ours: Sequence[Mapping[str, Any]], judge_file: Path,
                         personas_per_item: Mapping[str, int]) -> Agreement:
    """Compare with an LLM judge's alignments on (user, item) pairs both labelled, where the
    item has more than one persona (with one, agreement is certain and says nothing)."""
    judged = {(str(o.get("user_id")), str(o.get("item_id"))): str(o.get("persona_id"))
              for _, o in read_jsonl(judge_file)}
    compared = agreed = 0
    chances = []
    for row in ours:
        key = (str(row["user_id"]), str(row["item_id"]))
        k = personas_per_item.get(key[1], 0)
        if key in judged and k > 1:
            compared += 1
            agreed += int(judged[key] == row["persona_id"])
            chances.append(1 / k)
    return Agreement(compared, agreed, float(np.mean(chances)) if chances else float("nan"))
