"""One prompt template per stage, rendered for a domain.

A template mixes two kinds of placeholders: domain ones (``{item}``, ``{customer}``,
``{slots}``, ...; see :meth:`Domain.values`) are filled once when the domain is loaded, and
runtime ones (``{summary}``, ``{review}``, ...) per request. A domain file may override a
stage's ``system`` or ``user`` text under ``[prompts.<stage>]``; its placeholders are checked
at load time like every other text of the file.

The prompt version is a hash of the rendered system text, user template and answer schema, so
the cache can never serve an answer to a prompt that has since changed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from p4r.errors import InputError

if TYPE_CHECKING:
    from p4r.reasoning.domains import Domain


@dataclass(frozen=True)
class Template:
    """A stage's texts before a domain is applied, and the runtime fields its user text takes."""

    runtime: tuple[str, ...]
    system: str
    user: str


TEMPLATES: dict[str, Template] = {
    "summary": Template(
        runtime=("title", "source", "body"),
        system=("You describe {items} for a recommender system. Write plainly and objectively, "
                "like {summary_style}. Use only facts present in the input; never add or guess "
                "a fact, and never contradict the metadata. Answer with a JSON object only."),
        user=("Write one paragraph (3 to 6 sentences) that summarises this {item}: "
              "{summary_focus}.\n\n{title_label}: {title}\nSource: {source}\n{body}\n\n"
              'Reply as {{"summary": "..."}}.'),
    ),
    "aspects": Template(
        runtime=("summary", "rating", "review"),
        system=("You read one {customer} review and record what it reveals about the "
                "{customer}'s preferences. Fill a slot only when the review itself gives "
                "evidence; otherwise set the slot and its reason to null. Each reason quotes or "
                "paraphrases the evidence in one short sentence. Answer with a JSON object "
                "only."),
        user=("{Item}: {summary}\n\nReview (rating {rating}): {review}\n\nSlots:\n{slots}\n"
              "Give each slot a value and a matching <slot>_reason, both null when absent."),
    ),
    "personas": Template(
        runtime=("summary", "n_reviews", "evidence", "count_rule"),
        system=("You build personas for a recommender system: each persona is one kind of "
                "{customer} who chooses this {item}, and why. Ground every persona in concrete "
                "aspects from the reviews ({persona_grounding}). Keep critical and minority "
                "views as personas of their own. Never write two personas that say the same "
                "thing. Answer with a JSON object only."),
        user=("{Item}: {summary}\n\nWhat {n_reviews} review(s) reveal:\n{evidence}\n\n"
              "Write {count_rule}. Each persona has a name of 2 to 3 words, a one-sentence "
              "description of who they are, and a rationale that cites the concrete aspects "
              "that draw them to this {item}.\n"
              'Reply as {{"personas": [{{"name": "...", "description": "...", '
              '"rationale": "..."}}]}}.'),
    ),
    "align": Template(
        runtime=("profile", "summary", "personas"),
        system=("You are a careful judge. Given what a {customer} valued in the {items} of "
                "their earlier {interactions}, pick the one persona of the next {item} that "
                "best matches this {customer}. Base the choice on the evidence only. Answer "
                "with a JSON object only."),
        user=("The {customer}'s recent {interactions}, oldest first:\n{profile}\n\n"
              "Next {item}: {summary}\n\nIts personas:\n{personas}\n\n"
              "Choose the persona id that best explains why this {customer} {interacts} the "
              "next {item}, and give a two-sentence reason.\n"
              'Reply as {{"persona_id": "P1", "reason": "..."}}.'),
    ),
}
STAGES = tuple(TEMPLATES)


@dataclass(frozen=True)
class Prompt:
    """System text, a ``str.format`` user template with runtime fields only, and a version."""

    stage: str
    version: str
    system: str
    user: str
    runtime: tuple[str, ...]

    def fill(self, **values: object) -> str:
        """The user message for one request (every runtime field must be given)."""
        missing = set(self.runtime) - set(values)
        if missing:
            raise ValueError(f"{self.stage} prompt needs {sorted(missing)}")
        return self.user.format(**values)


def _version(stage: str, domain: Domain, system: str, user: str) -> str:
    from p4r.reasoning.schemas import schema_fingerprint

    body = json.dumps([system, user, schema_fingerprint(stage, domain)], sort_keys=True)
    return f"{stage}-{domain.name}-{hashlib.sha256(body.encode()).hexdigest()[:12]}"


def render_prompts(domain: Domain) -> dict[str, Prompt]:
    """Every stage's prompt for ``domain``; placeholder errors name the domain file."""
    from p4r.reasoning.domains import render

    unknown = set(domain.prompts) - set(TEMPLATES)
    if unknown:
        raise InputError(f"no stage {sorted(unknown)[0]!r} to override (stages: "
                         f"{', '.join(STAGES)})", file=domain.source, field="prompts")
    values = domain.values()
    prompts = {}
    for stage, template in TEMPLATES.items():
        override = domain.prompts.get(stage)
        system = (override.system if override and override.system else template.system)
        user = (override.user if override and override.user else template.user)
        where = f"prompts.{stage}" if override else f"(built-in {stage} template)"
        system = render(system, values, (), where=f"{where}.system",
                        source=domain.source).format()
        user = render(user, values, template.runtime, where=f"{where}.user",
                      source=domain.source)
        prompts[stage] = Prompt(stage, _version(stage, domain, system, user), system, user,
                                template.runtime)
    return prompts


_RENDERED: dict[str, dict[str, Prompt]] = {}


def _cached(domain: Domain) -> dict[str, Prompt]:
    key = domain.model_dump_json()  # domains hold dicts, so they are not hashable
    if key not in _RENDERED:
        _RENDERED[key] = render_prompts(domain)
    return _RENDERED[key]


def load_prompt(stage: str, domain: Domain | str) -> Prompt:
    """The prompt of ``stage`` for ``domain`` (a Domain or a built-in name)."""
    from p4r.reasoning.domains import as_domain

    if stage not in TEMPLATES:
        raise ValueError(f"no prompt for stage {stage!r} (stages: {', '.join(STAGES)})")
    return _cached(as_domain(domain))[stage]
