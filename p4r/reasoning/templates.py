"""The built-in prompt template of each stage, before a domain is applied.

A leaf: :mod:`p4r.reasoning.domains` checks a domain file's overrides against these stages and
their runtime fields, and :mod:`p4r.reasoning.prompts` renders and versions them.
"""

from __future__ import annotations

from dataclasses import dataclass


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
