"""Amazon Reviews 2023 (reviews + ``meta_*`` files) and Amazon Review Data 2018 (5-core files)."""

from __future__ import annotations

import contextlib
import math
import re
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from p4r.datasets.jsonl import (
    as_item_id,
    as_str,
    parse_rating,
    parse_timestamp,
    require,
    text_field,
)
from p4r.datasets.raw.common import (
    ItemRecord,
    RawReview,
    RawSource,
    iter_json_lines,
    matches_any,
    split_categories,
)
from p4r.errors import ConfigError, InputError

# The 2023 metadata worth keeping for item summaries; images, videos and co-purchase lists
# are large and say nothing an LLM summary can use.
META_FIELDS = ("main_category", "categories", "features", "description", "price",
               "average_rating", "rating_number", "store", "details")
_CATEGORY_2018 = re.compile(r"^(?P<category>[A-Za-z][A-Za-z_]*?)_5\.json(\.gz)?$")


def base_name(path: Path) -> str:
    """``All_Beauty.jsonl.gz`` → ``All_Beauty``."""
    name = path.name
    for suffix in (".gz", ".jsonl", ".json"):
        name = name.removesuffix(suffix)
    return name


def find_meta(reviews: Path) -> Path | None:
    """The ``meta_<Category>.jsonl(.gz)`` beside a 2023 review file, if it can be told apart.

    The file named after the review file wins; otherwise a single ``meta_*`` file in the folder
    is taken. Several unrelated ones are ambiguous and need ``--meta``.
    """
    folder = reviews.parent
    stem = base_name(reviews)
    for suffix in (".jsonl", ".jsonl.gz", ".json", ".json.gz"):
        candidate = folder / f"meta_{stem}{suffix}"
        if candidate.is_file():
            return candidate
    others = sorted(p for p in folder.glob("meta_*.json*") if p.is_file() and p != reviews)
    if len(others) == 1:
        return others[0]
    if len(others) > 1:
        raise ConfigError(f"{folder}: several metadata files "
                          f"({', '.join(p.name for p in others)}); choose one with --meta")
    return None


def _item_id(obj: dict[str, Any], path: Path, line: int) -> str:
    """2023 items are grouped by ``parent_asin`` (all variants of a product); ``asin`` if absent."""
    value = obj.get("parent_asin") or obj.get("asin")
    if value is None or (isinstance(value, str) and not value.strip()):
        raise InputError("missing required field", file=path, line=line, field="parent_asin")
    return as_item_id(value, path, line, "parent_asin")


def _millis(value: Any, path: Path, line: int) -> float:
    """2023 timestamps are milliseconds since the epoch; return seconds (finite, or an error)."""
    millis = math.nan
    if isinstance(value, int | float | str) and not isinstance(value, bool):
        with contextlib.suppress(ValueError, OverflowError):
            millis = float(value)
    if not math.isfinite(millis):
        raise InputError(f"expected milliseconds since the epoch, got {value!r}", file=path,
                         line=line, field="timestamp")
    return millis / 1000.0


class Amazon2023Source(RawSource):
    """One category of Amazon Reviews 2023: a review file and, optionally, its metadata file."""

    kind = "amazon2023"

    def __init__(self, reviews: Path, meta: Path | None = None, *,
                 categories: Sequence[str] = ()) -> None:
        """``meta`` defaults to the ``meta_*`` file beside ``reviews``; categories need it."""
        super().__init__()
        self.review_path = reviews
        self.meta_path = meta if meta is not None else find_meta(reviews)
        self.categories = [c for c in categories if c.strip()]
        if self.categories and self.meta_path is None:
            raise ConfigError(f"{reviews}: filtering by category needs the item metadata; no "
                              f"meta_*.jsonl found beside it, pass --meta")

    @property
    def files(self) -> list[Path]:
        """Review file, then metadata file when there is one."""
        return [self.review_path, *([self.meta_path] if self.meta_path else [])]

    def options(self) -> dict[str, Any]:
        """Categories in effect (empty means every item)."""
        return {"categories": self.categories}

    @staticmethod
    def _meta_lines(path: Path, desc: str) -> Iterator[tuple[int, str, dict[str, Any]]]:
        """Yield ``(line, item_id, object)`` per metadata line."""
        for line, obj in iter_json_lines(path, desc=desc):
            yield line, _item_id(obj, path, line), obj

    def _category_items(self) -> set[str]:
        """Items whose ``main_category`` or ``categories`` match the filter (ids only: cheap)."""
        kept: set[str] = set()
        if self.meta_path is None:
            return kept
        path = self.meta_path
        for line, item_id, obj in self._meta_lines(path, "amazon meta (categories)"):
            have = [text_field(obj, "main_category", path, line),
                    *split_categories(obj.get("categories"))]
            if matches_any(self.categories, have):
                kept.add(item_id)
        return kept

    def reviews(self) -> Iterator[RawReview]:
        """Stream the review file; with a category filter, only reviews of matching items."""
        allowed = self._category_items() if self.categories else None
        path = self.review_path
        for line, obj in iter_json_lines(path, desc="amazon reviews"):
            self.stats["source_reviews"] += 1
            item_id = _item_id(obj, path, line)
            if allowed is not None and item_id not in allowed:
                continue
            yield RawReview(
                user_id=as_str(require(obj, "user_id", path, line), path, line, "user_id"),
                item_id=item_id,
                timestamp=_millis(require(obj, "timestamp", path, line), path, line),
                rating=parse_rating(obj.get("rating"), path, line, "rating"),
                text=text_field(obj, "text", path, line),
                title=text_field(obj, "title", path, line),
            )

    def items(self, reviews: list[RawReview]) -> dict[str, ItemRecord]:
        """Metadata of the surviving items, read in a second pass so only they are held.

        Items missing from the metadata file keep an empty title and metadata.
        """
        wanted = {r.item_id for r in reviews}
        found: dict[str, ItemRecord] = {}
        path = self.meta_path
        if path is not None:
            for line, item_id, obj in self._meta_lines(path, "amazon meta"):
                if item_id in wanted and item_id not in found:
                    found[item_id] = ItemRecord(item_id, text_field(obj, "title", path, line),
                                                {k: obj.get(k) for k in META_FIELDS})
        self.stats["items_without_metadata"] = len(wanted - found.keys())
        return {i: found.get(i) or ItemRecord(i) for i in wanted}


class Amazon2018Source(RawSource):
    """An Amazon Review Data (2018) review file, e.g. ``All_Beauty_5.json.gz``; no item metadata."""

    kind = "amazon2018"

    def __init__(self, reviews: Path) -> None:
        """The category, when the file name follows ``<Category>_5.json.gz``, goes to metadata."""
        super().__init__()
        self.review_path = reviews
        match = _CATEGORY_2018.match(reviews.name)
        self.category = match.group("category") if match else None

    @property
    def files(self) -> list[Path]:
        """The review file."""
        return [self.review_path]

    def options(self) -> dict[str, Any]:
        """No source filters for 2018 files."""
        return {}

    def reviews(self) -> Iterator[RawReview]:
        """Stream the review file; the review ``summary`` becomes the review title."""
        path = self.review_path
        for line, obj in iter_json_lines(path, desc="amazon 2018 reviews"):
            self.stats["source_reviews"] += 1
            yield RawReview(
                user_id=as_str(require(obj, "reviewerID", path, line), path, line,
                               "reviewerID"),
                item_id=as_item_id(require(obj, "asin", path, line), path, line, "asin"),
                timestamp=parse_timestamp(require(obj, "unixReviewTime", path, line), path,
                                          line, "unixReviewTime"),
                rating=parse_rating(obj.get("overall"), path, line, "overall"),
                text=text_field(obj, "reviewText", path, line),
                title=text_field(obj, "summary", path, line),
            )

    def items(self, reviews: list[RawReview]) -> dict[str, ItemRecord]:
        """No titles exist in these files; metadata records what the final reviews say."""
        ratings: dict[str, list[float]] = defaultdict(list)
        counts: dict[str, int] = defaultdict(int)
        for review in reviews:
            counts[review.item_id] += 1
            if review.rating is not None:
                ratings[review.item_id].append(review.rating)
        items: dict[str, ItemRecord] = {}
        for item_id, count in counts.items():
            metadata: dict[str, Any] = {}
            if self.category:
                metadata["category"] = self.category
            metadata["review_count"] = count
            values = ratings.get(item_id)
            metadata["average_rating"] = round(sum(values) / len(values), 2) if values else None
            items[item_id] = ItemRecord(item_id, "", metadata)
        return items
