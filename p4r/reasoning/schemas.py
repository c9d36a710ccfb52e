"""Pydantic models of every LLM answer; their JSON schemas are sent as response formats."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="ignore")


class SummaryOut(_Strict):
    """An objective paragraph about one item."""

    summary: str = Field(min_length=20, description="One objective paragraph about the item.")


class YelpAspects(_Strict):
    """Review aspects for restaurants and food places; null where the review is silent."""

    cuisine_category: str | None = None
    cuisine_category_reason: str | None = None
    specific_dishes_or_attributes: str | None = Field(
        default=None, description="Dishes or attributes mentioned, each with its sentiment.")
    specific_dishes_or_attributes_reason: str | None = None
    visit_purpose: str | None = None
    visit_purpose_reason: str | None = None
    quality_criteria: str | None = None
    quality_criteria_reason: str | None = None
    visit_context: str | None = None
    visit_context_reason: str | None = None


class AmazonAspects(_Strict):
    """Review aspects for products; null where the review is silent."""

    category_preference: str | None = None
    category_preference_reason: str | None = None
    purchase_purpose: str | None = None
    purchase_purpose_reason: str | None = None
    quality_criteria: str | None = None
    quality_criteria_reason: str | None = None
    usage_context: str | None = None
    usage_context_reason: str | None = None


ASPECT_SCHEMAS: dict[str, type[_Strict]] = {"yelp": YelpAspects, "amazon": AmazonAspects}


def aspect_slots(schema: type[BaseModel]) -> list[str]:
    """The value slots of an aspect schema (reason fields excluded)."""
    return [name for name in schema.model_fields if not name.endswith("_reason")]


class PersonaOut(_Strict):
    """One persona as the model writes it (ids are assigned by p4r)."""

    name: str = Field(min_length=2, description="A 2-3 word name.")
    description: str = Field(min_length=10, description="Who this person is, in a sentence.")
    rationale: str = Field(min_length=10,
                           description="Why this item suits them, citing concrete aspects.")


class PersonasOut(_Strict):
    """Personas of one item."""

    personas: list[PersonaOut] = Field(max_length=7)


class AlignOut(_Strict):
    """The judge's choice for one interaction."""

    persona_id: str = Field(description="Id of the persona that best explains the interaction.")
    reason: str = Field(min_length=10, description="Two sentences on why.")
