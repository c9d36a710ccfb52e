"""In-memory records shared by the readers, the indexer and the query module."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

from p4r.datasets.timestamps import TimestampError, to_unix_seconds


@dataclass(frozen=True)
class Persona:
    """One persona of one item: who would choose it, and why."""

    item_id: str
    persona_id: str
    name: str
    description: str
    rationale: str


@dataclass
class Item:
    """An item with its objective summary (the cold-start fallback text)."""

    item_id: str
    title: str = ""
    summary: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Interaction:
    """One observed user–item interaction (a review) with its extracted aspects."""

    user_id: str
    item_id: str
    timestamp: float
    rating: float | None = None
    text: str = ""
    aspects: dict[str, Any] | None = None
    item_summary: str = ""


@dataclass
class Dataset:
    """A validated dataset: items, personas per item and interactions in time order per user."""

    name: str
    root: Path
    layout: str
    items: dict[str, Item]
    personas: dict[str, list[Persona]]
    interactions: list[Interaction]
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def persona_count(self) -> int:
        """Total number of personas over all items."""
        return sum(len(p) for p in self.personas.values())

    @property
    def users(self) -> set[str]:
        """Distinct users that have at least one interaction."""
        return {i.user_id for i in self.interactions}


# -- canonical file rows ---------------------------------------------------------------------
# The offline stages read and rewrite the canonical files row by row. These models validate
# each row once, keep fields they do not know (``extra="allow"``) and dump back only what was
# in the file plus what a stage set, so a rewrite never loses or reshapes user data.


def _text(value: Any) -> Any:
    """``null`` text is the empty string; anything else must already be a string."""
    return "" if value is None else value


Text = Annotated[str, BeforeValidator(_text)]


def _checked_timestamp(value: Any) -> Any:
    """Refuse values the one timestamp rule cannot read, and keep the value as given (a stage
    rewrites the row without changing how its time was spelled). It runs before pydantic's
    coercion, which would turn ``true`` into ``1``."""
    try:
        to_unix_seconds(value)
    except TimestampError as exc:  # re-raised by pydantic with the field's location
        raise PydanticCustomError("timestamp", str(exc)) from None
    return value


RowTimestamp = Annotated[float | int | str, BeforeValidator(_checked_timestamp)]


class Row(BaseModel):
    """A canonical JSON-lines row: ids are strings, unknown fields are carried through."""

    model_config = ConfigDict(extra="allow", coerce_numbers_to_str=True,
                              validate_assignment=False)

    def to_json(self) -> dict[str, Any]:
        """The row as written: the fields read from the file plus those a stage set."""
        return self.model_dump(mode="json", exclude_unset=True)


class ItemRow(Row):
    """One line of ``items.jsonl``."""

    item_id: str = Field(min_length=1)
    title: Text = ""
    metadata: dict[str, Any] = Field(default_factory=dict)
    summary: Text = ""


class ReviewRow(Row):
    """One line of ``reviews.jsonl`` (or of a split file, which has no text)."""

    user_id: str = Field(min_length=1)
    item_id: str = Field(min_length=1)
    timestamp: RowTimestamp = 0
    rating: int | float | None = None
    title: Text = ""
    text: Text = ""
    aspects: dict[str, Any] | None = None

    @property
    def time(self) -> float:
        """The timestamp in unix seconds (validated on read)."""
        return to_unix_seconds(self.timestamp)

    @property
    def review_text(self) -> str:
        """Title and text as one string ("" when both are empty)."""
        return f"{self.title} {self.text}".strip()


class PersonaEntry(BaseModel):
    """One persona inside a ``personas.jsonl`` row."""

    model_config = ConfigDict(coerce_numbers_to_str=True)

    persona_id: str = Field(min_length=1)
    name: str
    description: str
    rationale: str


class PersonaSetRow(Row):
    """One line of ``personas.jsonl``: an item and its personas."""

    item_id: str = Field(min_length=1)
    personas: list[PersonaEntry]


class AlignmentRow(Row):
    """One line of ``alignments.jsonl``: the judge's persona for a training interaction."""

    user_id: str
    item_id: str
    timestamp: RowTimestamp | None = None
    persona_id: str
    reason: str
