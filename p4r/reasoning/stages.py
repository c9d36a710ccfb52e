"""Offline reasoning stages over a canonical dataset folder.

Each stage reads the canonical files, asks the LLM only for work that is not done yet, and
rewrites its output file atomically at the end. Every valid answer is cached as soon as it
arrives, so a crash loses nothing: the re-run takes finished answers from the cache.
"""

from __future__ import annotations

import json
import re
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tqdm import tqdm

from p4r.datasets.jsonl import read_jsonl, write_jsonl_atomic
from p4r.errors import InputError, NotFoundError
from p4r.reasoning.client import LLMClient, LLMOutputError
from p4r.reasoning.prompts import load_prompt
from p4r.reasoning.schemas import (
    ASPECT_SCHEMAS,
    AlignOut,
    PersonasOut,
    SummaryOut,
    aspect_slots,
)

R = TypeVar("R")
_FAIL_LOCK = threading.Lock()
MAX_NULL_FRACTION = 0.75
PROFILE_LENGTH = 5
# Metadata fields that say nothing about what an item is (adapters add them for Amazon 2018).
_COUNT_FIELDS = {"category", "review_count", "average_rating", "rating_number"}
_TEXT_LIMIT = 1500


@dataclass
class StageReport:
    """What one stage did."""

    stage: str
    done: int = 0
    skipped: int = 0
    dropped: int = 0
    failed: int = 0
    output: Path | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class Context:
    """Where the dataset lives, its domain, the client and run options."""

    root: Path
    domain: str
    client: LLMClient
    force: bool = False
    limit: int | None = None
    progress: bool | None = None


def detect_domain(root: Path) -> str:
    """``amazon`` when items look like products, else ``yelp``."""
    path = root / "items.jsonl"
    if path.exists():
        for _, obj in read_jsonl(path):
            meta = obj.get("metadata") or {}
            if any(k in meta for k in ("asin", "parent_asin", "main_category", "store")):
                return "amazon"
            if str(obj.get("item_id", "")).upper().startswith("B0"):
                return "amazon"
            break
    return "yelp"


def _read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        raise NotFoundError(f"{path} not found (run p4r-data prepare first)")
    return [obj for _, obj in read_jsonl(path)]


def _parallel(ctx: Context, jobs: Sequence[Callable[[], R]], desc: str,
              report: StageReport) -> list[R | None]:
    """Run jobs on ``concurrency`` threads, results in submission order, with a progress bar.

    A job whose answers stay invalid after every retry yields None and is counted as failed:
    one stubborn item does not sink a long stage, and the next run asks for it again (only
    valid answers are cached). Transport errors still stop the stage.
    """
    results: list[R | None] = [None] * len(jobs)

    def guarded(job: Callable[[], R]) -> R | None:
        try:
            return job()
        except LLMOutputError as exc:
            with _FAIL_LOCK:
                report.failed += 1
                if len(report.notes) < 5:
                    report.notes.append(str(exc))
            return None

    with ThreadPoolExecutor(max_workers=ctx.client.settings.concurrency) as pool, tqdm(
        total=len(jobs), desc=desc, unit="req", leave=False,
        disable=None if ctx.progress is None else not ctx.progress,
    ) as bar:
        futures = {pool.submit(guarded, job): index for index, job in enumerate(jobs)}
        try:
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                bar.update(1)
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return results


def _clip(text: str, limit: int = _TEXT_LIMIT) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " …"


def _review_text(row: dict[str, Any]) -> str:
    """A review's title and text as one string ("" when both are empty)."""
    return " ".join(str(row.get(k) or "") for k in ("title", "text")).strip()


def _reviews_by_item(root: Path) -> dict[str, list[dict[str, Any]]]:
    """Non-empty reviews grouped by item (an empty dict when there is no reviews file)."""
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    if (root / "reviews.jsonl").exists():
        for row in _read_rows(root / "reviews.jsonl"):
            if _review_text(row):
                grouped[str(row["item_id"])].append(row)
    return grouped


def _limit(ctx: Context, todo: list[R]) -> list[R]:
    return todo if ctx.limit is None else todo[:ctx.limit]


# -- summary -------------------------------------------------------------------------------------
def run_summary(ctx: Context) -> StageReport:
    """One objective paragraph per item from its metadata, or from its reviews without one."""
    report = StageReport("summary", output=ctx.root / "items.jsonl")
    items = _read_rows(ctx.root / "items.jsonl")
    reviews_by_item = _reviews_by_item(ctx.root)
    prompt = load_prompt("summary", ctx.domain)
    todo = [row for row in items if ctx.force or not str(row.get("summary") or "").strip()]
    report.skipped = len(items) - len(todo)
    todo = _limit(ctx, todo)

    def job(row: dict[str, Any]) -> Callable[[], str]:
        def ask() -> str:
            meta = row.get("metadata") or {}
            if row.get("title") or set(meta) - _COUNT_FIELDS:
                source, body = "metadata", "Metadata: " + json.dumps(meta, ensure_ascii=False)
            else:  # no metadata worth the name (ids and counts only): describe from reviews
                texts = [f"- {r.get('title') or ''} {r.get('text') or ''}".strip()
                         for r in reviews_by_item.get(str(row["item_id"]), [])[:8]]
                texts = [t for t in texts if t != "-"]
                if not texts and not row.get("title"):
                    return ""  # nothing to summarise from
                source = "customer reviews (no metadata)"
                body = "Reviews:\n" + "\n".join(_clip(t, 400) for t in texts)
            user = prompt.user.format(title=row.get("title") or row["item_id"],
                                      source=source, body=_clip(body, 4000))
            out = ctx.client.complete(system=prompt.system, user=user, schema=SummaryOut,
                                      prompt_version=prompt.version,
                                      cache_inputs={"item": row["item_id"], "user": user})
            return out.summary.strip()
        return ask

    answers = _parallel(ctx, [job(r) for r in todo], "summary", report)
    by_id = {str(r["item_id"]): a for r, a in zip(todo, answers, strict=True)}
    for row in items:
        answer = by_id.get(str(row["item_id"]))
        if answer:
            row["summary"] = answer
            report.done += 1
        elif answer == "":
            report.dropped += 1
    write_jsonl_atomic(ctx.root / "items.jsonl", items)
    return report


# -- aspects -------------------------------------------------------------------------------------
def null_fraction(aspects: dict[str, Any], slots: Sequence[str]) -> float:
    """Share of value slots that are null or empty."""
    empty = sum(1 for s in slots if aspects.get(s) in (None, "", "null", "None"))
    return empty / len(slots)


def run_aspects(ctx: Context) -> StageReport:
    """Aspects per review; tuples with more than 75% null slots are dropped (set to null)."""
    report = StageReport("aspects", output=ctx.root / "reviews.jsonl")
    reviews = _read_rows(ctx.root / "reviews.jsonl")
    summaries = {str(r["item_id"]): str(r.get("summary") or r.get("title") or "")
                 for r in _read_rows(ctx.root / "items.jsonl")} \
        if (ctx.root / "items.jsonl").exists() else {}
    schema = ASPECT_SCHEMAS[ctx.domain]
    slots = aspect_slots(schema)
    prompt = load_prompt("aspects", ctx.domain)
    todo_idx = []
    for index, row in enumerate(reviews):
        if row.get("aspects") and not ctx.force:
            report.skipped += 1
            continue
        if not _review_text(row):
            row["aspects"] = None  # an empty review carries no evidence: no request
            report.dropped += 1
            continue
        todo_idx.append(index)
    todo_idx = _limit(ctx, todo_idx)

    def job(index: int) -> Callable[[], dict[str, Any]]:
        def ask() -> dict[str, Any]:
            row = reviews[index]
            review = _clip(_review_text(row))
            user = prompt.user.format(summary=_clip(summaries.get(str(row["item_id"]), ""), 600)
                                      or "(no summary)", rating=row.get("rating"),
                                      review=review)
            out = ctx.client.complete(system=prompt.system, user=user, schema=schema,
                                      prompt_version=prompt.version,
                                      cache_inputs={"user": user})
            return out.model_dump()
        return ask

    answers = _parallel(ctx, [job(i) for i in todo_idx], "aspects", report)
    for index, aspects in zip(todo_idx, answers, strict=True):
        if aspects is None:
            continue
        if null_fraction(aspects, slots) > MAX_NULL_FRACTION:
            reviews[index]["aspects"] = None
            report.dropped += 1
        else:
            reviews[index]["aspects"] = aspects
            report.done += 1
    write_jsonl_atomic(ctx.root / "reviews.jsonl", reviews)
    return report


# -- personas ------------------------------------------------------------------------------------
def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def check_personas(out: PersonasOut, n_reviews: int) -> None:
    """Count rules by evidence, 2–3 word names (1–4 tolerated), no near-duplicates."""
    low, high = (1, 1) if n_reviews == 1 else (1, 3) if n_reviews == 0 else (2, 7)
    count = len(out.personas)
    if not low <= count <= high:
        wanted = f"exactly {low}" if low == high else f"{low} to {high}"
        raise ValueError(f"expected {wanted} personas, got {count}")
    seen_names: set[str] = set()
    for persona in out.personas:
        words = persona.name.split()
        if not 1 <= len(words) <= 4:
            raise ValueError(f"persona name {persona.name!r} should have 2 to 3 words")
        key = " ".join(w.lower() for w in words)
        if key in seen_names:
            raise ValueError(f"two personas are both named {persona.name!r}")
        seen_names.add(key)
    for i, a in enumerate(out.personas):
        for b in out.personas[i + 1:]:
            wa, wb = _words(a.description + " " + a.rationale), _words(
                b.description + " " + b.rationale)
            if wa and wb and len(wa & wb) / len(wa | wb) > 0.8:
                raise ValueError(f"personas {a.name!r} and {b.name!r} are near-duplicates")


def _count_rule(n_reviews: int) -> str:
    if n_reviews == 0:
        return ("1 to 3 personas inferred from the description alone (there are no reviews)")
    if n_reviews == 1:
        return "exactly 1 persona (there is a single review)"
    return ("between 2 and 7 personas: fewer when the reviews agree, more when they show "
            "distinct kinds of customers")


def _evidence(reviews: list[dict[str, Any]], slots: Sequence[str]) -> str:
    lines = []
    for n, row in enumerate(reviews[:25], start=1):
        aspects = row.get("aspects") or {}
        parts = [f"{s.replace('_', ' ')}: {aspects[s]}" for s in slots if aspects.get(s)]
        if not parts and row.get("text"):
            parts = [f"text: {_clip(str(row['text']), 300)}"]
        if parts:
            lines.append(f"Review {n} (rating {row.get('rating')}): " + "; ".join(parts))
    return "\n".join(lines) or "(none)"


def run_personas(ctx: Context) -> StageReport:
    """2–7 personas per item from its summary and review aspects (summary alone without)."""
    report = StageReport("personas", output=ctx.root / "personas.jsonl")
    items = _read_rows(ctx.root / "items.jsonl")
    reviews_by_item = _reviews_by_item(ctx.root)
    existing: dict[str, dict[str, Any]] = {}
    out_path = ctx.root / "personas.jsonl"
    if out_path.exists() and not ctx.force:
        existing = {str(r["item_id"]): r for r in _read_rows(out_path)}
    slots = aspect_slots(ASPECT_SCHEMAS[ctx.domain])
    prompt = load_prompt("personas", ctx.domain)
    todo = [r for r in items if str(r["item_id"]) not in existing]
    report.skipped = len(items) - len(todo)
    todo = _limit(ctx, [r for r in todo if str(r.get("summary") or "").strip()
                        or reviews_by_item.get(str(r["item_id"]))])

    def job(row: dict[str, Any]) -> Callable[[], list[dict[str, str]]]:
        def ask() -> list[dict[str, str]]:
            item_reviews = reviews_by_item.get(str(row["item_id"]), [])
            n_reviews = len(item_reviews)
            user = prompt.user.format(
                summary=_clip(str(row.get("summary") or row.get("title") or ""), 1200),
                n_reviews=n_reviews, evidence=_evidence(item_reviews, slots),
                count_rule=_count_rule(n_reviews))
            out = ctx.client.complete(
                system=prompt.system, user=user, schema=PersonasOut,
                prompt_version=prompt.version, cache_inputs={"user": user},
                check=lambda parsed: check_personas(parsed, n_reviews))
            return [{"persona_id": f"P{n}", "name": p.name.strip(),
                     "description": p.description.strip(), "rationale": p.rationale.strip()}
                    for n, p in enumerate(out.personas, start=1)]
        return ask

    answers = _parallel(ctx, [job(r) for r in todo], "personas", report)
    for row, personas in zip(todo, answers, strict=True):
        if personas is None:
            continue
        existing[str(row["item_id"])] = {"item_id": row["item_id"], "personas": personas}
        report.done += 1
    order = [str(r["item_id"]) for r in items if str(r["item_id"]) in existing]
    write_jsonl_atomic(out_path, [existing[i] for i in order])
    return report


# -- align ---------------------------------------------------------------------------------------
def _training_rows(root: Path, reviews: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Interactions of the training split (written by prepare), or all but each user's last
    two when no split exists."""
    split = root / "split" / "train.jsonl"
    if split.exists():
        return _read_rows(split)
    from p4r.datasets.jsonl import parse_timestamp
    from p4r.datasets.models import Interaction
    from p4r.datasets.split import leave_one_out

    interactions = [Interaction(user_id=str(r["user_id"]), item_id=str(r["item_id"]),
                                timestamp=parse_timestamp(r.get("timestamp", 0), root, n + 1,
                                                          "timestamp"))
                    for n, r in enumerate(reviews)]
    train = leave_one_out(interactions).train
    return [{"user_id": i.user_id, "item_id": i.item_id, "timestamp": i.timestamp}
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


def run_align(ctx: Context) -> StageReport:
    """For each training interaction, the judge picks the persona that best explains it."""
    from p4r.datasets.jsonl import parse_timestamp

    report = StageReport("align", output=ctx.root / "alignments.jsonl")
    reviews = _read_rows(ctx.root / "reviews.jsonl")
    summaries = {str(r["item_id"]): str(r.get("summary") or r.get("title") or "")
                 for r in _read_rows(ctx.root / "items.jsonl")}
    personas = {str(r["item_id"]): r["personas"]
                for r in _read_rows(ctx.root / "personas.jsonl")}
    slots = aspect_slots(ASPECT_SCHEMAS[ctx.domain])
    history: dict[str, list[tuple[float, dict[str, Any]]]] = defaultdict(list)
    for n, row in enumerate(reviews, start=1):
        ts = parse_timestamp(row.get("timestamp", 0), ctx.root / "reviews.jsonl", n,
                             "timestamp")
        history[str(row["user_id"])].append((ts, row))
    for rows in history.values():
        rows.sort(key=lambda pair: (pair[0], str(pair[1]["item_id"])))
    prompt = load_prompt("align", ctx.domain)

    targets = []
    for row in _training_rows(ctx.root, reviews):
        item = str(row["item_id"])
        if item not in personas:
            report.skipped += 1
            continue
        ts = float(row.get("timestamp", 0) or 0)
        before = [r for t, r in history[str(row["user_id"])] if t < ts][-PROFILE_LENGTH:]
        if not before:
            report.skipped += 1  # no earlier history: nothing for the judge to go on
            continue
        targets.append((row, before))
    targets = _limit(ctx, targets)

    def job(row: dict[str, Any], before: list[dict[str, Any]]) -> Callable[[], dict[str, Any]]:
        def ask() -> dict[str, Any]:
            item = str(row["item_id"])
            profile = "\n".join(
                f"- {_clip(summaries.get(str(r['item_id']), str(r['item_id'])), 300)} | "
                f"the user's experience: "
                + ("; ".join(f"{s.replace('_', ' ')}: {(r.get('aspects') or {}).get(s)}"
                             for s in slots if (r.get("aspects") or {}).get(s))
                   or _clip(str(r.get("text") or "(no review text)"), 200))
                for r in before)
            listed = "\n".join(f"{p['persona_id']}: {p['name']} — {p['description']} "
                               f"{p['rationale']}" for p in personas[item])
            valid = {p["persona_id"] for p in personas[item]}
            user = prompt.user.format(profile=profile, summary=_clip(summaries.get(item, item),
                                                                     800), personas=listed)

            def check(parsed: AlignOut) -> None:
                parsed.persona_id = normalize_persona_id(parsed.persona_id, item, valid)

            out = ctx.client.complete(system=prompt.system, user=user, schema=AlignOut,
                                      prompt_version=prompt.version,
                                      cache_inputs={"user": user}, check=check)
            return {"user_id": row["user_id"], "item_id": item, "timestamp": row.get("timestamp"),
                    "persona_id": out.persona_id, "reason": out.reason.strip()}
        return ask

    answers = [a for a in _parallel(ctx, [job(r, b) for r, b in targets], "align", report)
               if a is not None]
    report.done = len(answers)
    write_jsonl_atomic(ctx.root / "alignments.jsonl", answers)
    return report


STAGE_RUNNERS: dict[str, Callable[[Context], StageReport]] = {
    "summary": run_summary, "aspects": run_aspects, "personas": run_personas,
    "align": run_align,
}


def run_stages(ctx: Context, stages: Sequence[str]) -> list[StageReport]:
    """Run stages in order (``all`` = summary, aspects, personas, align)."""
    reports = []
    for stage in stages:
        if stage not in STAGE_RUNNERS:
            raise InputError(f"unknown stage {stage!r}", field="stage")
        reports.append(STAGE_RUNNERS[stage](ctx))
    return reports
