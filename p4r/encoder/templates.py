"""Versioned text templates: what the encoder reads for a persona, a summary and an interaction.

The version enters the encoder fingerprint, so changing a template forces a re-index.
"""

from __future__ import annotations

from typing import Any

from p4r.datasets.models import Interaction, Item, Persona

# "t2": aspect slots are read in the order the answer lists them (the aspects stage writes
# its domain file's order; reference files keep the reference pipeline's). "t1" put a
# hard-wired list of Yelp and Amazon slots first, so datasets with other slots read differently.
TEMPLATE_VERSION = "t2"


def persona_text(persona: Persona, item_summary: str = "") -> str:
    """Persona name, description, the item's summary and the preference rationale."""
    parts = [f"Persona: {persona.name}.", persona.description.strip()]
    if item_summary:
        parts.append(f"Item: {item_summary.strip()}")
    parts.append(f"Why: {persona.rationale.strip()}")
    return " ".join(p for p in parts if p)


def summary_text(item: Item) -> str:
    """The item on its own, for items without personas (cold start)."""
    head = f"Item: {item.title.strip()}." if item.title else "Item:"
    return f"{head} {item.summary.strip()}".strip()


def format_aspects(aspects: dict[str, Any] | None) -> str:
    """Aspect slots as ``slot: value`` clauses in the answer's order, skipping nulls and
    reasons."""
    if not aspects:
        return ""
    clauses = []
    for key in (k for k in aspects if not k.endswith("_reason")):
        value = aspects.get(key)
        if value in (None, "", [], {}):
            continue
        if isinstance(value, list | tuple):
            value = ", ".join(str(v) for v in value)
        clauses.append(f"{key.replace('_', ' ')}: {str(value).strip()}")
    return "; ".join(clauses)


def interaction_text(interaction: Interaction) -> str:
    """The item's summary plus the user's review aspects (review text when no aspects)."""
    parts = []
    if interaction.item_summary:
        parts.append(f"Item: {interaction.item_summary.strip()}")
    aspects = format_aspects(interaction.aspects)
    if aspects:
        parts.append(f"User experience: {aspects}.")
    elif interaction.text:
        parts.append(f"User review: {interaction.text.strip()}")
    return " ".join(parts) or f"Item {interaction.item_id}"
