"""Request and response models shared by the library, the CLI and the HTTP API.

Pydantic models, so the same definitions validate library calls, HTTP bodies and produce the
OpenAPI document of ``p4r serve``: every field carries a description and an example, because
that document is the contract apps generate their clients from.

Two schema rules make generated clients right with their tools' defaults:

* request models (:class:`Request`) list a field's default in its description, not in the
  schema's ``default`` keyword: generators such as ``openapi-typescript`` (``defaultNonNullable``,
  on by default) make every property with a ``default`` *required*, so a client would have to
  send ``allow_unknown`` and ``text`` although the server never needs them;
* response models (:class:`Answer`) mark every field ``required``: an answer always carries
  all of them (null where the type allows), so clients need no undefined checks.
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from p4r.datasets.strings import Id, ValidObject, ValidText
from p4r.datasets.timestamps import Timestamp
from p4r.query.results import PAD
from p4r.settings import (
    MAX_CANDIDATES_CAP,
    MAX_HISTORY_CAP,
    MAX_INTERACTIONS_CAP,
    MAX_TEXT_CHARS_CAP,
    Diversify,
    UserMode,
)

Explanation = Literal["persona", "summary", "unscored"]
UnscoredReason = Literal["duplicate", "padding"]

_PERSONA_EXAMPLE = {"persona_id": "P2", "name": "Omakase Devotee",
                    "description": "Books the chef's counter for long tasting menus.",
                    "rationale": "Reviews praise the 18-course omakase and the fish quality."}


def _defaults_in_descriptions(schema: dict[str, Any], _: type) -> None:
    """Move each optional property's ``default`` into its description (see the module doc)."""
    required = set(schema.get("required", ()))
    for name, prop in schema.get("properties", {}).items():
        if name in required or "default" not in prop:
            continue
        default = prop.pop("default")
        note = f"Optional; default {json.dumps(default)}."
        prop["description"] = f"{prop.get('description', '').rstrip()} {note}".strip()


class Request(BaseModel):
    """Base of request bodies: unknown fields are refused, defaults documented in words."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_defaults_in_descriptions)


class Answer(BaseModel):
    """Base of answers: every field is always present (required in the schema)."""

    model_config = ConfigDict(json_schema_serialization_defaults_required=True)


class PersonaOut(Answer):
    """The persona that explains a recommendation."""

    model_config = ConfigDict(json_schema_extra={"examples": [_PERSONA_EXAMPLE]})

    persona_id: str = Field(description="The persona's id within its item.", examples=["P2"])
    name: str = Field(description="A short name for the kind of customer.",
                      examples=["Omakase Devotee"])
    description: str = Field(description="Who this customer is and what they want.",
                             examples=[_PERSONA_EXAMPLE["description"]])
    rationale: str = Field(description="Why the item suits them, from its reviews.",
                           examples=[_PERSONA_EXAMPLE["rationale"]])


class RankedItemOut(Answer):
    """One reranked candidate, exactly as ``p4r query rerank --json`` prints it."""

    item_id: str = Field(description="The candidate's item id.", examples=["tide-sushi"])
    score: float | None = Field(
        description="Cosine between the user's profile and the best persona (or the item's "
                    "summary); null for an unscored candidate. Comparable within one index "
                    "version only.", examples=[0.8365])
    explanation: Explanation = Field(
        description="What the score comes from: `persona` (the best persona, in `persona`), "
                    "`summary` (the item has no personas; its summary was scored) or "
                    "`unscored` (unknown to the index, kept last by `allow_unknown`).",
        examples=["persona"])
    persona: PersonaOut | None = Field(
        default=None, description="The persona that won (null unless `explanation` is "
                                  "`persona`).", examples=[_PERSONA_EXAMPLE])
    because: BecauseOut | None = Field(
        default=None,
        description="The user's past interaction this item is recommended for, among their "
                    "last n; null for `vector` requests, unscored items, or when the server "
                    "turns it off (`P4R_QUERY__BECAUSE=false`).",
        examples=[{"item_id": "cafe-lumen", "timestamp": 1705313400.0, "weight": 0.71}])


class BecauseOut(Answer):
    """The past interaction behind a recommendation ("because you liked ...")."""

    item_id: str = Field(description="The item the user interacted with.",
                         examples=["cafe-lumen"])
    timestamp: float = Field(description="When, in unix seconds.", examples=[1705313400.0])
    weight: float = Field(
        description="How strongly it speaks for this item: its attention weight in the "
                    "`interests` mode, else the cosine between that interaction and the "
                    "winning persona (or summary).", examples=[0.71])


class HistoryEntry(Request):
    """One interaction of a raw history, embedded on the fly (needs the serving encoder)."""

    item_id: Id = Field(description="The item interacted with.", examples=["cafe-lumen"])
    timestamp: Timestamp | None = Field(
        default=None, description="When (unix seconds or milliseconds, or ISO-8601); "
                                  "without one the entry's position in the list orders it.",
        examples=[1705313400, "2024-01-15T10:10:00Z"])
    text: ValidText = Field(default="", max_length=MAX_TEXT_CHARS_CAP,
                            description="The user's review text, if any.",
                            examples=["Quiet corner tables and a great flat white."])
    aspects: ValidObject | None = Field(
        default=None, description="Structured aspects of the review (any JSON object).",
        examples=[{"service": "friendly", "coffee": "excellent"}])
    summary: ValidText | None = Field(
        default=None, max_length=MAX_TEXT_CHARS_CAP,
        description="The item's summary; read from the index when omitted.",
        examples=["A bright neighbourhood cafe with specialty coffee."])


class RerankIn(Request):
    """One rerank request: exactly one of ``user_id``, ``history`` or ``vector``."""

    candidates: list[Id] = Field(
        min_length=1, max_length=MAX_CANDIDATES_CAP,
        description="Item ids to rank. Duplicates after the first and `[PAD]` entries are "
                    "not ranked; the answer lists them in `unscored`.",
        examples=[["tide-sushi", "cafe-lumen", "taqueria-sol"]])
    user_id: Id | None = Field(default=None, description="A user the index knows.",
                               examples=["u-chloe"])
    history: list[HistoryEntry] | None = Field(
        default=None, min_length=1, max_length=MAX_HISTORY_CAP,
        description="A raw history, embedded on the fly (slower; runs the encoder).",
        examples=[[{"item_id": "cafe-lumen", "timestamp": 1705313400,
                    "text": "Great flat white."}]])
    vector: list[float] | None = Field(
        default=None, min_length=1, max_length=8192,
        description="A user vector of the index's dimension (it is L2-normalised).",
        examples=[[0.12, -0.03, 0.4]])
    k: int | None = Field(default=None, ge=1,
                          description="Return only the k best items (all when omitted).",
                          examples=[10])
    allow_unknown: bool = Field(
        default=False, description="Keep candidates the index does not know, last and "
                                   "`unscored`, instead of refusing the request.",
        examples=[True])
    mode: UserMode | None = Field(
        default=None,
        description="How the user is scored: `default` (best persona against the decayed "
                    "mean of the last n interactions) or `interests` (attention over each of "
                    "the last n interactions, which keeps tastes apart). Omitted: the "
                    "server's `P4R_QUERY__USER_MODE`.", examples=["interests"])
    diversify: Diversify | None = Field(
        default=None,
        description="`proportional` shares the top k positions among the user's interests "
                    "by weight; `none` ranks by score alone. Omitted: the server's "
                    "`P4R_QUERY__DIVERSIFY`.", examples=["proportional"])

    @field_validator("vector")
    @classmethod
    def _finite(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and not all(math.isfinite(x) for x in value):
            raise ValueError("vector must hold finite numbers")
        return value


class UnscoredOut(Answer):
    """A candidate that was not ranked, and why."""

    item_id: str = Field(description="The candidate as given.", examples=["tide-sushi"])
    index: int = Field(description="Its position in `candidates` (from 0).", examples=[3])
    reason: UnscoredReason = Field(
        description="`duplicate`: the same id appeared earlier in the list (ranked there); "
                    "`padding`: `[PAD]`, the reference pipeline's filler.",
        examples=["duplicate"])


class RerankOut(Answer):
    """The reranked list of one request, with what was not ranked."""

    user_id: str | None = Field(default=None, description="The request's user id, if any.",
                                examples=["u-chloe"])
    items: list[RankedItemOut] = Field(description="Ranked candidates, best first (ties by "
                                                   "item id); unknown ones last when allowed.")
    unknown: list[str] = Field(default_factory=list,
                               description="Candidates the index does not know.",
                               examples=[["ghost-kitchen"]])
    unscored: list[UnscoredOut] = Field(
        default_factory=list, description="Candidates left out of `items`: repeated ids and "
                                          "`[PAD]`, each with its position.",
        examples=[[{"item_id": "tide-sushi", "index": 3, "reason": "duplicate"}]])


class LiveInteraction(Request):
    """A new interaction reported online; it updates the user's profile at once."""

    user_id: Id = Field(description="Who interacted.", examples=["u-ben"])
    item_id: Id = Field(description="With which item (known to the index, or give `text` or "
                                    "`aspects`).", examples=["tide-sushi"])
    timestamp: Timestamp
    rating: float | None = Field(default=None, description="A rating, if any (any finite "
                                                           "number).", examples=[5])
    text: ValidText = Field(default="", max_length=MAX_TEXT_CHARS_CAP,
                            description="The review text, if any.",
                            examples=["The omakase was the best meal of my year."])
    aspects: ValidObject | None = Field(
        default=None, description="Structured aspects of the review (any JSON object).",
        examples=[{"fish": "very fresh"}])

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


class InteractionsIn(Request):
    """A batch of live interactions."""

    interactions: list[LiveInteraction] = Field(
        min_length=1, max_length=MAX_INTERACTIONS_CAP,
        description="The interactions, logged durably before the answer.",
        examples=[[{"user_id": "u-ben", "item_id": "tide-sushi", "timestamp": 1750000000,
                    "rating": 5, "text": "The omakase was the best meal of my year."}]])


class AddReport(Answer):
    """What :meth:`Reranker.add_interactions` did: logged durably, or already known."""

    accepted: int = Field(description="Interactions logged now.", examples=[1])
    duplicates: int = Field(description="Interactions already logged (same user, item and "
                                        "time): not stored twice.", examples=[0])
    users: list[str] = Field(description="The users concerned, sorted.", examples=[["u-ben"]])


class ProfileEntry(Answer):
    """One of the interactions a profile is made of."""

    item_id: str = Field(description="The item.", examples=["tide-sushi"])
    timestamp: float = Field(description="When, in unix seconds.", examples=[1705313400.0])


class UserProfile(Answer):
    """A user's profile: the last n interactions it averages (oldest first)."""

    user_id: str = Field(description="The user.", examples=["u-ben"])
    interactions: list[ProfileEntry] = Field(
        description="The last n interactions, oldest first.",
        examples=[[{"item_id": "tide-sushi", "timestamp": 1705313400.0}]])
    live: int = Field(description="How many of them arrived after the served version was "
                                  "built.", examples=[1])
    version: int | None = Field(default=None, description="The index version answering.",
                                examples=[3])


__all__ = ["PAD", "AddReport", "Answer", "HistoryEntry", "InteractionsIn",
           "LiveInteraction", "PersonaOut", "ProfileEntry", "RankedItemOut", "Request",
           "RerankIn", "RerankOut", "UnscoredOut", "UserProfile"]
