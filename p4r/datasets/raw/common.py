"""Shared parts of the raw adapters: streaming JSON lines, review records, dedupe, k-core, sampling.

Every adapter turns its source into :class:`RawReview` records and, once the interactions are
final, item rows; the filtering that follows is the same for every source and lives here.
"""

from __future__ import annotations

import gzip
import random
import zlib
from abc import ABC, abstractmethod
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

from p4r.datasets.jsonl import bounded_lines, current_limits, parse_line
from p4r.errors import InputError
from p4r.fsutil import open_regular
from p4r.settings import FileLimits

GZIP_MAGIC = b"\x1f\x8b"


@dataclass(slots=True)
class RawReview:
    """One review as read from a raw source, already in canonical units (unix seconds)."""

    user_id: str
    item_id: str
    timestamp: float
    rating: float | None
    text: str
    title: str | None = None

    @property
    def key(self) -> tuple[str, str, float]:
        """Identity of an interaction: the same user, item and time is one review, not two."""
        return (self.user_id, self.item_id, self.timestamp)

    def to_row(self) -> dict[str, Any]:
        """The canonical ``reviews.jsonl`` row; ``aspects`` is filled later by the LLM stage."""
        row: dict[str, Any] = {"user_id": self.user_id, "item_id": self.item_id,
                               "rating": self.rating, "timestamp": compact_number(self.timestamp)}
        if self.title is not None:
            row["title"] = self.title
        row["text"] = self.text
        row["aspects"] = None
        return row


@dataclass
class ItemRecord:
    """One item as an adapter describes it; ``summary`` stays empty until the LLM stage."""

    item_id: str
    title: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_row(self) -> dict[str, Any]:
        """The canonical ``items.jsonl`` row."""
        return {"item_id": self.item_id, "title": self.title, "metadata": self.metadata,
                "summary": ""}


class RawSource(ABC):
    """A raw dataset: filtered reviews first, then items for the ids that survived filtering."""

    kind: str = ""

    def __init__(self) -> None:
        self.stats: Counter[str] = Counter()

    @property
    @abstractmethod
    def files(self) -> list[Path]:
        """The input files, recorded in the preparation manifest."""

    @abstractmethod
    def options(self) -> dict[str, Any]:
        """The source-specific filters in effect, recorded in the manifest."""

    @abstractmethod
    def reviews(self) -> Iterator[RawReview]:
        """Stream the reviews that pass the source filters; counts go to ``stats``."""

    @abstractmethod
    def items(self, reviews: list[RawReview]) -> dict[str, ItemRecord]:
        """Describe every item referenced by the final ``reviews`` (and no other)."""


def compact_number(value: float) -> int | float:
    """Write whole numbers as ints (``1472688000``, not ``1472688000.0``) in the outputs."""
    return int(value) if float(value).is_integer() else value


@contextmanager
def open_lines(path: Path) -> Iterator[IO[bytes]]:
    """Open a plain or gzipped file for reading lines (gzip told by its magic bytes, so a
    misnamed file still opens); both are closed on exit.

    Only a regular file is opened (a FIFO, device, folder or symlink loop is refused naming
    the path; a missing file is NotFoundError). Lines are decoded one by one (not by the
    text layer in chunks), so a bad byte is reported on its own line.
    """
    with open_regular(path) as handle:
        magic = handle.read(2)
        handle.seek(0)
        if magic != GZIP_MAGIC:
            yield handle
            return
        with gzip.GzipFile(fileobj=handle, mode="rb") as unpacked:
            yield unpacked  # type: ignore[misc]  # GzipFile is a binary IO, not IO[bytes] by name


def iter_json_lines(path: Path, desc: str | None = None, limits: FileLimits | None = None,
                    ) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` one line at a time (files can be gigabytes) with progress.

    Lines are checked by the same reader and parser as every canonical file (line length,
    UTF-8, JSON, objects, finite numbers, text length, valid Unicode); truncated gzip streams
    also raise InputError naming the file and line.
    """
    limits = current_limits(limits)
    number = 0
    with open_lines(path) as handle:
        lines = tqdm(bounded_lines(handle, path, limits.max_line_bytes),
                     desc=desc or path.name, unit=" lines", disable=None, leave=False)
        try:
            for number, raw in lines:
                obj = parse_line(raw, path, number, max_text_chars=limits.max_text_chars)
                if obj is None:
                    continue
                yield number, obj
        except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
            raise InputError(f"unreadable gzip data ({exc})", file=path,
                             line=number + 1) from None
        finally:
            lines.close()


def first_object(path: Path) -> dict[str, Any]:
    """The first JSON object of a file, used to recognise which kind of source it is."""
    for _line, obj in iter_json_lines(path, desc="peek"):
        return obj
    raise InputError("empty file: no JSON lines", file=path)


def dedupe(reviews: Iterable[RawReview], *, by_text: bool = False) -> tuple[list[RawReview], int]:
    """Keep the first review per (user, item, timestamp); return it and how many were dropped.

    Raw dumps repeat reviews (the 2018 Amazon 5-core lists one review under several variants of
    a product); counting them twice would inflate k-core degrees and leak into the split. With
    ``by_text`` the same (user, timestamp, text) under different items also collapses: those
    variant copies otherwise put a copy of a training review in the test split.
    """
    seen: set[tuple[str, str, float]] = set()
    seen_text: set[tuple[str, float, str]] = set()
    kept: list[RawReview] = []
    dropped = 0
    for review in reviews:
        text_key = (review.user_id, review.timestamp, " ".join(review.text.split()).lower())
        if review.key in seen or (by_text and text_key in seen_text):
            dropped += 1
            continue
        seen.add(review.key)
        seen_text.add(text_key)
        kept.append(review)
    return kept, dropped


def kcore(reviews: list[RawReview], k: int) -> list[RawReview]:
    """Repeatedly drop users and items with fewer than ``k`` interactions until none are left.

    Degrees count interactions (reviews), so a user who reviewed one item twice at different
    times counts two. ``k <= 1`` changes nothing.
    """
    if k <= 1:
        return list(reviews)
    current = list(reviews)
    while True:
        users = Counter(r.user_id for r in current)
        items = Counter(r.item_id for r in current)
        kept = [r for r in current if users[r.user_id] >= k and items[r.item_id] >= k]
        if len(kept) == len(current):
            return kept
        current = kept


def subsample_users(reviews: list[RawReview], max_interactions: int,
                    seed: int) -> list[RawReview]:
    """Keep whole user histories, users drawn in a seeded order, up to ``max_interactions``.

    Users are shuffled (from their sorted ids, so the draw depends only on the data and the
    seed) and taken while their full history fits the remaining budget; a user that does not
    fit is skipped, so the budget fills. Whole histories keep the sequential signal the
    leave-one-out split and the user profile need; sampling single reviews would not.
    """
    if len(reviews) <= max_interactions:
        return list(reviews)
    by_user: dict[str, list[RawReview]] = defaultdict(list)
    for review in reviews:
        by_user[review.user_id].append(review)
    order = sorted(by_user)
    random.Random(seed).shuffle(order)
    chosen: set[str] = set()
    budget = max_interactions
    for user in order:
        size = len(by_user[user])
        if size <= budget:
            chosen.add(user)
            budget -= size
            if budget == 0:
                break
    return [r for r in reviews if r.user_id in chosen]


def split_categories(value: Any) -> list[str]:
    """Yelp stores categories as ``"Food, Coffee & Tea"``; return them as a clean list."""
    if not value:
        return []
    if isinstance(value, list):
        return [str(v).strip() for v in value if str(v).strip()]
    return [part.strip() for part in str(value).split(",") if part.strip()]


def matches_any(wanted: Iterable[str], have: Iterable[str]) -> bool:
    """Case-insensitive: does any wanted category appear among the item's categories?"""
    lowered = {h.strip().lower() for h in have}
    return any(w.strip().lower() in lowered for w in wanted)
