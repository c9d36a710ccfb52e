"""Pydantic models of every LLM answer; their JSON schemas are sent as response formats.

Every hard rule lives in the schema the model sees (lengths, counts, the persona-name
pattern, the judge's persona ids), so a structured-output engine that follows the schema can
never produce an answer p4r rejects. What a schema cannot say is normalised (whitespace,
persona-id spellings) or reported as a warning, never a reason to drop an item.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, create_model

from p4r.reasoning.domains import Domain

MAX_PERSONAS = 7
# A persona name: 1 to 6 words separated by single spaces (the prompt asks for 2 to 3; longer
# names are kept and reported). Anchored because JSON-schema patterns match anywhere; plain
# character classes because grammar engines (llama.cpp) support few regex escapes.
NAME_PATTERN = r"^[^ ]+( [^ ]+){0,5}$"
NAME_MAX_WORDS = 6


class _Strict(BaseModel):
    model_config = ConfigDict(extra="ignore")


def _squash(value: Any) -> Any:
    """Collapse runs of whitespace: stylistic, so it is normalised instead of rejected."""
    return " ".join(value.split()) if isinstance(value, str) else value


Squashed = Annotated[str, BeforeValidator(_squash)]


class SummaryOut(_Strict):
    """An objective paragraph about one item."""

    summary: str = Field(min_length=20, max_length=4000,
                         description="One objective paragraph about the item.")


class AspectsOut(_Strict):
    """Base of the per-domain aspect models: slot → value (null when the review is silent)."""


@cache
def _aspects_model(name: str, slots: tuple[tuple[str, str], ...]) -> type[AspectsOut]:
    fields: dict[str, Any] = {}
    for slot, description in slots:
        fields[slot] = (str | None, Field(default=None, description=description))
        fields[f"{slot}_reason"] = (str | None, Field(
            default=None, description=f"The evidence for {slot}, in one short sentence."))
    model_name = "".join(p.capitalize() for p in name.replace("-", "_").split("_")) + "Aspects"
    return create_model(model_name, __base__=AspectsOut, **fields)


def aspects_model(domain: Domain) -> type[AspectsOut]:
    """The aspect answer of ``domain``: each slot and its ``_reason``, with its description."""
    return _aspects_model(domain.name, tuple((a.slot, a.description) for a in domain.aspects))


class PersonaOut(_Strict):
    """One persona as the model writes it (ids are assigned by p4r)."""

    name: Squashed = Field(min_length=2, max_length=80, pattern=NAME_PATTERN,
                           description="A short name of 2 to 3 words (at most 6).")
    description: Squashed = Field(min_length=10, max_length=2000,
                                  description="Who this person is, in a sentence or two.")
    rationale: Squashed = Field(min_length=10, max_length=2000,
                                description="Why this item suits them, citing concrete "
                                            "aspects.")


class PersonasOut(_Strict):
    """Personas of one item (the count bounds depend on its evidence: see personas_model)."""

    personas: list[PersonaOut] = Field(min_length=1, max_length=MAX_PERSONAS)


def persona_bounds(n_reviews: int) -> tuple[int, int]:
    """How many personas an item gets: 1 for one review, 1–3 with none, else 2–7."""
    if n_reviews == 1:
        return 1, 1
    if n_reviews == 0:
        return 1, 3
    return 2, MAX_PERSONAS


@cache
def personas_model(low: int, high: int) -> type[PersonasOut]:
    """PersonasOut whose schema states the count bounds for this item."""
    return create_model(  # type: ignore[call-overload, no-any-return]
        "PersonasOut", __base__=PersonasOut,
        personas=(list[PersonaOut], Field(min_length=low, max_length=high)))


class AlignOut(_Strict):
    """The judge's choice for one interaction."""

    persona_id: str = Field(description="Id of the persona that best explains the "
                                        "interaction.")
    reason: str = Field(min_length=10, max_length=2000, description="Two sentences on why.")


@cache
def align_model(persona_ids: tuple[str, ...]) -> type[AlignOut]:
    """AlignOut whose schema lists the item's persona ids (other spellings are normalised)."""
    return create_model(  # type: ignore[call-overload, no-any-return]
        "AlignOut", __base__=AlignOut,
        persona_id=(str, Field(description="Id of the persona that best explains the "
                                           "interaction.",
                               json_schema_extra={"enum": list(persona_ids)})))


def schema_fingerprint(stage: str, domain: Domain) -> str:
    """The answer schema a stage sends for ``domain`` (representative bounds), for versions."""
    model: type[BaseModel] = {
        "summary": SummaryOut, "aspects": aspects_model(domain),
        "personas": personas_model(2, MAX_PERSONAS), "align": align_model(("P1", "P2")),
    }[stage]
    return json.dumps(model.model_json_schema(), sort_keys=True)
