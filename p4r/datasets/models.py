"""In-memory records shared by the readers, the indexer and the query module."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


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
