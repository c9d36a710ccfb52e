"""The four offline stages over a canonical dataset folder: summary, aspects, personas, align.

Each stage only says what is pending, what to ask for each unit and how the answers merge;
:mod:`p4r.reasoning.runner` runs them (concurrency, cache, retries, progress, atomic write).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from p4r.datasets.models import (
    AlignmentRow,
    Interaction,
    ItemRow,
    PersonaEntry,
    PersonaSetRow,
    ReviewRow,
    Row,
)
from p4r.reasoning.client import Request
from p4r.reasoning.domains import Domain
from p4r.reasoning.domains.detect import detect_domain
from p4r.reasoning.prompts import load_prompt
from p4r.reasoning.rows import read_rows
from p4r.reasoning.runner import (
    STAGES,
    Context,
    Job,
    Stage,
    StageReport,
    Work,
    register,
    run_stage,
    run_stages,
)
from p4r.reasoning.schemas import (
    AlignOut,
    PersonaOut,
    PersonasOut,
    SummaryOut,
    align_model,
    aspects_model,
    persona_bounds,
    personas_model,
)

MAX_NULL_FRACTION = 0.75
PROFILE_LENGTH = 5
# Metadata fields that say nothing about what an item is (adapters add them for Amazon 2018).
_COUNT_FIELDS = {"category", "review_count", "average_rating", "rating_number"}
_TEXT_LIMIT = 1500

__all__ = ["STAGES", "Context", "StageReport", "aspects_request", "detect_domain",
           "kept_aspects", "normalize_persona_id", "null_fraction", "persona_warnings",
           "run_align", "run_aspects", "run_personas", "run_stage", "run_stages", "run_summary"]


def _clip(text: str, limit: int = _TEXT_LIMIT) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " …"


def _reviews_by_item(root: Path) -> dict[str, list[ReviewRow]]:
    """Non-empty reviews grouped by item (an empty dict when there is no reviews file)."""
    grouped: dict[str, list[ReviewRow]] = defaultdict(list)
    if (root / "reviews.jsonl").exists():
        for row in read_rows(root / "reviews.jsonl", ReviewRow):
            if row.review_text:
                grouped[row.item_id].append(row)
    return grouped


def _summaries(root: Path) -> dict[str, str]:
    """Item summary (or title) by id; empty without an items file."""
    if not (root / "items.jsonl").exists():
        return {}
    return {r.item_id: r.summary or r.title for r in read_rows(root / "items.jsonl", ItemRow)}


def _aspect_clauses(aspects: dict[str, Any] | None, slots: Sequence[str]) -> list[str]:
    return [f"{s.replace('_', ' ')}: {aspects[s]}" for s in slots if aspects and aspects.get(s)]


# -- summary -------------------------------------------------------------------------------------
@register
class SummaryStage(Stage):
    """One objective paragraph per item from its metadata, or from its reviews without one."""

    name = "summary"
    help = "Objective item summaries from metadata (or reviews without it)."
    output = "items.jsonl"

    def pending(self) -> Work:
        self.items = read_rows(self.ctx.root / "items.jsonl", ItemRow)
        self.reviews = _reviews_by_item(self.ctx.root)
        self.prompt = load_prompt("summary", self.ctx.dom)
        todo = [row for row in self.items if self.ctx.force or not row.summary.strip()]
        return Work([Job(row, self._request(row)) for row in todo],
                    skipped=len(self.items) - len(todo))

    def _request(self, row: ItemRow) -> Request | None:
        if row.title or set(row.metadata) - _COUNT_FIELDS:
            source, body = "metadata", "Metadata: " + json.dumps(row.metadata,
                                                                 ensure_ascii=False)
        else:  # no metadata worth the name (ids and counts only): describe from reviews
            texts = [f"- {r.review_text}" for r in self.reviews.get(row.item_id, [])[:8]]
            if not texts:
                return None  # nothing to summarise from
            source = "reviews (no metadata)"
            body = "Reviews:\n" + "\n".join(_clip(t, 400) for t in texts)
        user = self.prompt.fill(title=row.title or row.item_id, source=source,
                                body=_clip(body, 4000))
        return Request(self.prompt.system, user, SummaryOut, self.prompt.version,
                       {"item": row.item_id, "user": user})

    def merge(self, results: list[tuple[Job, BaseModel | None]],
              report: StageReport) -> Sequence[Row]:
        for job, answer in results:
            if isinstance(answer, SummaryOut):
                job.ref.summary = answer.summary.strip()
                report.done += 1
            elif job.request is None:
                report.dropped += 1
        return self.items


# -- aspects -------------------------------------------------------------------------------------
def null_fraction(aspects: dict[str, Any], slots: Sequence[str]) -> float:
    """Share of value slots that are null or empty."""
    empty = sum(1 for s in slots if aspects.get(s) in (None, "", "null", "None"))
    return empty / len(slots)


def aspects_request(domain: Domain, summary: str, rating: float | None,
                    review: str) -> Request:
    """The aspects request of one review: the domain's prompt and schema over the item's
    summary, the rating and the review text. Files and live interactions ask the same way, so
    the same review shares one cached answer."""
    prompt, schema = load_prompt("aspects", domain), aspects_model(domain)
    user = prompt.fill(summary=_clip(summary, 600) or "(no summary)", rating=rating,
                       review=_clip(review))
    return Request(prompt.system, user, schema, prompt.version, {"user": user})


def kept_aspects(answer: BaseModel, slots: Sequence[str]) -> dict[str, Any] | None:
    """The aspects of a valid answer, or None when more than 75% of its slots are empty (such
    a tuple says too little: the review's text is embedded instead)."""
    aspects = answer.model_dump()
    return None if null_fraction(aspects, slots) > MAX_NULL_FRACTION else aspects


@register
class AspectsStage(Stage):
    """Aspects per review; tuples with more than 75% null slots are dropped (set to null)."""

    name = "aspects"
    help = "Aspects per review; mostly-empty tuples are dropped."
    output = "reviews.jsonl"

    def pending(self) -> Work:
        self.reviews = read_rows(self.ctx.root / "reviews.jsonl", ReviewRow)
        summaries = _summaries(self.ctx.root)
        jobs, skipped = [], 0
        for row in self.reviews:
            if row.aspects and not self.ctx.force:
                skipped += 1
                continue
            if not row.review_text:  # an empty review carries no evidence: no request
                jobs.append(Job(row, None))
                continue
            jobs.append(Job(row, aspects_request(self.ctx.dom, summaries.get(row.item_id, ""),
                                                 row.rating, row.review_text)))
        return Work(jobs, skipped=skipped)

    def merge(self, results: list[tuple[Job, BaseModel | None]],
              report: StageReport) -> Sequence[Row]:
        slots = self.ctx.dom.slots
        for job, answer in results:
            if answer is None and job.request is not None:
                continue  # failed: left for the next run
            aspects = kept_aspects(answer, slots) if answer is not None else None
            if aspects is None:
                job.ref.aspects = None
                report.dropped += 1
            else:
                job.ref.aspects = aspects
                report.done += 1
        return self.reviews


# -- personas ------------------------------------------------------------------------------------
def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def persona_warnings(personas: Sequence[PersonaOut | PersonaEntry]) -> list[str]:
    """Stylistic issues of one persona set: reported, never a reason to reject it."""
    notes = [f"name {p.name!r} has {len(p.name.split())} words (2 to 3 asked)"
             for p in personas if len(p.name.split()) > 3]
    seen: set[str] = set()
    for p in personas:
        key = p.name.lower()
        if key in seen:
            notes.append(f"two personas are both named {p.name!r}")
        seen.add(key)
    for i, a in enumerate(personas):
        for b in personas[i + 1:]:
            wa, wb = (_words(f"{x.description} {x.rationale}") for x in (a, b))
            if wa and wb and len(wa & wb) / len(wa | wb) > 0.8:
                notes.append(f"personas {a.name!r} and {b.name!r} are near-duplicates")
    return notes


def _count_rule(n_reviews: int) -> str:
    if n_reviews == 0:
        return "1 to 3 personas inferred from the description alone (there are no reviews)"
    if n_reviews == 1:
        return "exactly 1 persona (there is a single review)"
    return ("between 2 and 7 personas: fewer when the reviews agree, more when they show "
            "distinct tastes and needs")


def _evidence(reviews: list[ReviewRow], slots: Sequence[str]) -> str:
    lines = []
    for n, row in enumerate(reviews[:25], start=1):
        parts = _aspect_clauses(row.aspects, slots)
        if not parts and row.text:
            parts = [f"text: {_clip(row.text, 300)}"]
        if parts:
            lines.append(f"Review {n} (rating {row.rating}): " + "; ".join(parts))
    return "\n".join(lines) or "(none)"


def persona_request(domain: Domain, summary: str, reviews: list[ReviewRow]) -> Request:
    """The personas request of one item (also used to validate reference persona sets)."""
    prompt = load_prompt("personas", domain)
    n_reviews = len(reviews)
    user = prompt.fill(summary=_clip(summary, 1200), n_reviews=n_reviews,
                       evidence=_evidence(reviews, domain.slots),
                       count_rule=_count_rule(n_reviews))
    return Request(prompt.system, user, personas_model(*persona_bounds(n_reviews)),
                   prompt.version, {"user": user})


@register
class PersonasStage(Stage):
    """2–7 personas per item from its summary and review aspects (summary alone without)."""

    name = "personas"
    help = "2–7 grounded personas per item."
    output = "personas.jsonl"

    def pending(self) -> Work:
        root = self.ctx.root
        self.items = read_rows(root / "items.jsonl", ItemRow)
        reviews = _reviews_by_item(root)
        self.existing: dict[str, PersonaSetRow] = {}
        if (root / self.output).exists() and not self.ctx.force:
            self.existing = {r.item_id: r for r in read_rows(root / self.output,
                                                             PersonaSetRow)}
        todo = [r for r in self.items if r.item_id not in self.existing]
        askable = [r for r in todo if r.summary.strip() or reviews.get(r.item_id)]
        return Work([Job(r, persona_request(self.ctx.dom, r.summary or r.title,
                                            reviews.get(r.item_id, []))) for r in askable],
                    skipped=len(self.items) - len(todo))

    def merge(self, results: list[tuple[Job, BaseModel | None]],
              report: StageReport) -> Sequence[Row]:
        warned = 0
        for job, answer in results:
            if not isinstance(answer, PersonasOut):
                continue
            personas = [PersonaEntry(persona_id=f"P{n}", name=p.name.strip(),
                                     description=p.description.strip(),
                                     rationale=p.rationale.strip())
                        for n, p in enumerate(answer.personas, start=1)]
            warnings = persona_warnings(personas)
            if warnings:
                warned += 1
                if warned <= 3:
                    report.notes.append(f"item {job.ref.item_id}: {'; '.join(warnings)} (kept)")
            self.existing[job.ref.item_id] = PersonaSetRow(item_id=job.ref.item_id,
                                                           personas=personas)
            report.done += 1
        if warned > 3:
            report.notes.append(f"... {warned} items in all have stylistic warnings (kept)")
        return [self.existing[r.item_id] for r in self.items if r.item_id in self.existing]


# -- align ---------------------------------------------------------------------------------------
def _training_rows(root: Path, reviews: list[ReviewRow]) -> list[ReviewRow]:
    """Interactions of the training split (written by prepare), or all but each user's last
    two when no split exists."""
    split = root / "split" / "train.jsonl"
    if split.exists():
        return read_rows(split, ReviewRow)
    from p4r.datasets.split import leave_one_out

    train = leave_one_out(Interaction(user_id=r.user_id, item_id=r.item_id, timestamp=r.time)
                          for r in reviews).train
    return [ReviewRow(user_id=i.user_id, item_id=i.item_id, timestamp=i.timestamp)
            for rows in train.values() for i in rows]


def normalize_persona_id(raw: str, item_id: str, valid: set[str]) -> str:
    """Accept ``P3``, ``3``, ``<item>_P3`` or ``Persona 3`` for persona ``P3``."""
    text = raw.strip()
    if text in valid:
        return text
    if text.startswith(f"{item_id}_") and text[len(item_id) + 1:] in valid:
        return text[len(item_id) + 1:]
    digits = re.findall(r"\d+", text)
    if digits and f"P{int(digits[-1])}" in valid:
        return f"P{int(digits[-1])}"
    raise ValueError(f"persona_id {raw!r} is not one of {sorted(valid)}")


class _PersonaIdCheck:
    """Normalise the judge's persona id to one of the item's (a picklable, named check)."""

    def __init__(self, item_id: str, valid: set[str]) -> None:
        self.item_id, self.valid = item_id, valid

    def __call__(self, parsed: AlignOut) -> None:
        parsed.persona_id = normalize_persona_id(parsed.persona_id, self.item_id, self.valid)


@register
class AlignStage(Stage):
    """For each training interaction, the judge picks the persona that best explains it."""

    name = "align"
    help = "LLM judge: the persona that best explains each training interaction."
    output = "alignments.jsonl"

    def pending(self) -> Work:
        root = self.ctx.root
        reviews = read_rows(root / "reviews.jsonl", ReviewRow)
        self.summaries = _summaries(root)
        self.personas = self._load_personas()
        history: dict[str, list[tuple[float, ReviewRow]]] = defaultdict(list)
        for row in reviews:
            history[row.user_id].append((row.time, row))
        for rows in history.values():
            rows.sort(key=lambda pair: (pair[0], pair[1].item_id))
        self.prompt = load_prompt("align", self.ctx.dom)
        jobs, skipped = [], 0
        for row in _training_rows(root, reviews):
            before = [r for t, r in history[row.user_id] if t < row.time][-PROFILE_LENGTH:]
            if row.item_id not in self.personas or not before:
                skipped += 1  # no personas, or no earlier history for the judge to go on
                continue
            jobs.append(Job(row, self._request(row, before)))
        return Work(jobs, skipped=skipped)

    def _load_personas(self) -> dict[str, list[PersonaEntry]]:
        return {r.item_id: r.personas
                for r in read_rows(self.ctx.root / "personas.jsonl", PersonaSetRow)}

    def _request(self, row: ReviewRow, before: list[ReviewRow]) -> Request:
        slots = self.ctx.dom.slots
        profile = "\n".join(
            f"- {_clip(self.summaries.get(r.item_id, r.item_id), 300)} | the user's "
            "experience: " + ("; ".join(_aspect_clauses(r.aspects, slots))
                              or _clip(r.text or "(no review text)", 200))
            for r in before)
        personas = self.personas[row.item_id]
        listed = "\n".join(f"{p.persona_id}: {p.name} — {p.description} {p.rationale}"
                           for p in personas)
        user = self.prompt.fill(profile=profile, personas=listed, summary=_clip(
            self.summaries.get(row.item_id, row.item_id), 800))
        ids = tuple(p.persona_id for p in personas)
        return Request(self.prompt.system, user, align_model(ids), self.prompt.version,
                       {"user": user}, _PersonaIdCheck(row.item_id, set(ids)))

    def merge(self, results: list[tuple[Job, BaseModel | None]],
              report: StageReport) -> Sequence[Row]:
        rows = [AlignmentRow(user_id=job.ref.user_id, item_id=job.ref.item_id,
                             timestamp=job.ref.timestamp, persona_id=answer.persona_id,
                             reason=answer.reason.strip())
                for job, answer in results if isinstance(answer, AlignOut)]
        report.done = len(rows)
        return rows


def run_summary(ctx: Context) -> StageReport:
    """The summary stage (see :class:`SummaryStage`)."""
    return run_stage(ctx, "summary")


def run_aspects(ctx: Context) -> StageReport:
    """The aspects stage (see :class:`AspectsStage`)."""
    return run_stage(ctx, "aspects")


def run_personas(ctx: Context) -> StageReport:
    """The personas stage (see :class:`PersonasStage`)."""
    return run_stage(ctx, "personas")


def run_align(ctx: Context) -> StageReport:
    """The align stage (see :class:`AlignStage`)."""
    return run_stage(ctx, "align")
