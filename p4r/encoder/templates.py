"""Versioned text templates: what the encoder reads for a persona, a summary and an interaction.

The version enters the encoder fingerprint, so changing a template forces a re-index.
"""

from __future__ import annotations

from typing import Any

from p4r.datasets.models import Interaction, Item, Persona

TEMPLATE_VERSION = "t1"

# Aspect slots in a stable order; unknown slots follow alphabetically. "_reason" fields are
# the LLM's justification, not evidence about the user, so they are left out.
_ASPECT_ORDER = (
    "cuisine_category",
    "category_preference",
    "specific_dishes_or_attributes",
    "visit_purpose",
    "purchase_purpose",
    "quality_criteria",
    "visit_context",
    "usage_context",
)


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
    """Aspect slots as ``slot: value`` clauses, skipping nulls and reasons."""
    if not aspects:
        return ""
    keys = [k for k in _ASPECT_ORDER if k in aspects]
    keys += sorted(k for k in aspects if k not in _ASPECT_ORDER and not k.endswith("_reason"))
    clauses = []
    for key in keys:
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
