"""Request and response models shared by the library, the CLI and the HTTP API.

Pydantic models, so the same definitions validate library calls, HTTP bodies and produce the
OpenAPI document of ``p4r serve``.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from p4r.datasets.strings import Id, ValidObject, ValidText
from p4r.datasets.timestamps import Timestamp

PAD = "[PAD]"
Explanation = Literal["persona", "summary", "unscored"]


class PersonaOut(BaseModel):
    """The persona that explains a recommendation."""

    persona_id: str
    name: str
    description: str
    rationale: str


class RankedItemOut(BaseModel):
    """One reranked candidate, exactly as ``p4r-query rerank --json`` prints it."""

    item_id: str
    score: float | None
    explanation: Explanation
    persona: PersonaOut | None = None


class HistoryEntry(BaseModel):
    """One interaction of a raw history, embedded on the fly (needs the serving encoder)."""

    model_config = ConfigDict(extra="forbid")

    item_id: Id
    # None: the entry's position in the list orders it.
    timestamp: Timestamp | None = None
    text: ValidText = Field(default="", max_length=20_000)
    aspects: ValidObject | None = None
    summary: ValidText | None = Field(default=None, max_length=20_000)


class RerankIn(BaseModel):
    """One rerank request: exactly one of ``user_id``, ``history`` or ``vector``."""

    model_config = ConfigDict(extra="forbid")

    candidates: list[Id] = Field(min_length=1, max_length=10_000)
    user_id: Id | None = None
    history: list[HistoryEntry] | None = Field(default=None, min_length=1, max_length=1000)
    vector: list[float] | None = Field(default=None, min_length=1, max_length=8192)
    k: int | None = Field(default=None, ge=1)
    allow_unknown: bool = False

    @field_validator("vector")
    @classmethod
    def _finite(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and not all(math.isfinite(x) for x in value):
            raise ValueError("vector must hold finite numbers")
        return value


class RerankOut(BaseModel):
    """The reranked list of one request, plus the candidate ids the index does not know."""

    user_id: str | None = None
    items: list[RankedItemOut]
    unknown: list[str] = []


class LiveInteraction(BaseModel):
    """A new interaction reported online; it updates the user's profile at once."""

    model_config = ConfigDict(extra="forbid")

    user_id: Id
    item_id: Id
    timestamp: Timestamp
    rating: float | None = None
    text: ValidText = Field(default="", max_length=20_000)
    aspects: ValidObject | None = None

    @field_validator("rating")
    @classmethod
    def _finite_number(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @field_validator("item_id")
    @classmethod
    def _not_pad(cls, value: str) -> str:
        if value == PAD:
            raise ValueError(f"{PAD} is a padding marker, not an item id")
        return value


class InteractionsIn(BaseModel):
    """A batch of live interactions."""

    model_config = ConfigDict(extra="forbid")

    interactions: list[LiveInteraction] = Field(min_length=1, max_length=10_000)


class AddReport(BaseModel):
    """What :meth:`Reranker.add_interactions` did: logged durably, or already known."""

    accepted: int
    duplicates: int
    users: list[str]


class ProfileEntry(BaseModel):
    """One of the interactions a profile is made of."""

    item_id: str
    timestamp: float


class UserProfile(BaseModel):
    """A user's profile: the last n interactions it averages (oldest first)."""

    user_id: str
    interactions: list[ProfileEntry]
    live: int = Field(description="How many of them arrived after the served version was built.")
    version: int | None = None
