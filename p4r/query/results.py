"""What a rerank returns, as plain slotted dataclasses (one is built per returned item on the
serving path, and a frozen init costs ~5x more); their JSON form is what the CLI and the API
print."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from p4r.datasets.models import Interaction
from p4r.errors import InputError
from p4r.settings import Diversify, UserMode

Explanation = Literal["persona", "summary", "unscored"]
PAD = "[PAD]"  # pads candidate lists in the reference format; never an item


@dataclass(slots=True)
class PersonaInfo:
    """The persona that explains a recommendation."""

    persona_id: str
    name: str
    description: str
    rationale: str

    def as_dict(self) -> dict[str, str]:
        """JSON form (built by hand: ``dataclasses.asdict`` deep-copies, ~14x slower)."""
        return {"persona_id": self.persona_id, "name": self.name,
                "description": self.description, "rationale": self.rationale}

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> PersonaInfo:
        """From a persona point's payload (the indexer stores all four as strings)."""
        try:  # the fast path on every explanation read
            return cls(payload["persona_id"], payload["name"], payload["description"],
                       payload["rationale"])
        except KeyError:
            return cls(str(payload.get("persona_id", "")), str(payload.get("name", "")),
                       str(payload.get("description", "")), str(payload.get("rationale", "")))


@dataclass(slots=True)
class Because:
    """The user's past interaction that weighs most for a recommended item.

    Attributes:
        item_id: the item the user interacted with.
        timestamp: when (seconds since the epoch).
        weight: in the ``interests`` mode, that interaction's attention weight for the item
            (in (0, 1]; the weights of an item's n interactions sum to 1); in the ``default``
            mode, the cosine between that interaction's vector and the item's winning persona
            (its summary for an item without personas), the highest of the n, to float32
            precision as the scores are.
    """

    item_id: str
    timestamp: float
    weight: float

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"item_id": self.item_id, "timestamp": self.timestamp, "weight": self.weight}


@dataclass(slots=True)
class RankedItem:
    """One reranked candidate: its score, what explains it, and (where the user's history is
    known) the past interaction behind it."""

    item_id: str
    score: float | None
    explanation: Explanation
    persona: PersonaInfo | None = None
    because: Because | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON form: ``item_id``, ``score``, ``explanation``, ``persona`` and ``because``
        (each null when unknown)."""
        p, b = self.persona, self.because
        return {"item_id": self.item_id, "score": self.score, "explanation": self.explanation,
                "persona": p.as_dict() if p else None, "because": b.as_dict() if b else None}


@dataclass(frozen=True, slots=True)
class Unscored:
    """A candidate the ranking leaves out, and why: a repeat of an id already in the list
    (``duplicate``) or a ``[PAD]`` filler (``padding``); ``index`` is its input position."""

    item_id: str
    index: int
    reason: Literal["duplicate", "padding"]

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"item_id": self.item_id, "index": self.index, "reason": self.reason}


def unscored_of(candidates: Sequence[str]) -> list[Unscored]:
    """The candidates a ranking leaves out (repeats and ``[PAD]``), each with its position."""
    seen: set[str] = set()
    out: list[Unscored] = []
    for index, item_id in enumerate(candidates):
        if item_id == PAD:
            out.append(Unscored(item_id, index, "padding"))
        elif item_id in seen:
            out.append(Unscored(item_id, index, "duplicate"))
        else:
            seen.add(item_id)
    return out


@dataclass
class RerankResult:
    """Ranked candidates (best first), the candidate ids the index does not know, and the
    candidates left out (repeats, ``[PAD]``): none vanishes silently."""

    items: list[RankedItem]
    unknown: list[str] = field(default_factory=list)
    user_id: str | None = None
    unscored: list[Unscored] = field(default_factory=list)


@dataclass(frozen=True)
class RerankRequest:
    """One user's request: exactly one of ``user_id``, ``history`` or ``vector``.

    ``mode`` and ``diversify`` override the reranker's settings (``P4R_QUERY__USER_MODE``,
    ``P4R_QUERY__DIVERSIFY``) for this request; None takes the setting. A ``vector`` request
    has no history, so it is scored in the default mode and never re-ranked.
    """

    candidates: Sequence[str]
    user_id: str | None = None
    history: Sequence[Mapping[str, Any] | Interaction] | None = None
    vector: np.ndarray | Sequence[float] | None = None
    k: int | None = None
    mode: UserMode | None = None
    diversify: Diversify | None = None


class UnknownCandidatesError(InputError):
    """Candidates that have neither personas nor a summary in the index."""

    def __init__(self, unknown: Sequence[str], dataset: str, *,
                 request_index: int | None = None) -> None:
        shown = ", ".join(unknown[:5]) + (" …" if len(unknown) > 5 else "")
        super().__init__(f"{len(unknown)} candidate(s) unknown to dataset {dataset!r}: {shown}",
                         field="candidates", request_index=request_index)
        self.unknown = list(unknown)
