"""Yelp Open Dataset: businesses filtered by place and category, their reviews streamed."""

from __future__ import annotations

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
from p4r.errors import NotFoundError

BUSINESS_FILE = "yelp_academic_dataset_business.json"
REVIEW_FILE = "yelp_academic_dataset_review.json"
DEFAULT_CITY = "Philadelphia"
DEFAULT_STATE = "PA"
DEFAULT_CATEGORIES = ("Restaurants", "Food")


def find_yelp_file(folder: Path, name: str) -> Path | None:
    """The Yelp file ``name`` in ``folder``, plain or gzipped, if present."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def yelp_folder(source: Path) -> Path:
    """Accept the dataset folder or one of its files, and return the folder."""
    return source.parent if source.is_file() else source


class YelpSource(RawSource):
    """Businesses of one city/state and category set, with the reviews written about them."""

    kind = "yelp"

    def __init__(self, source: Path, *, city: str | None = DEFAULT_CITY,
                 state: str | None = DEFAULT_STATE,
                 categories: Sequence[str] = DEFAULT_CATEGORIES) -> None:
        """Locate both files now so a wrong folder fails before any long read."""
        super().__init__()
        folder = yelp_folder(source)
        business = find_yelp_file(folder, BUSINESS_FILE)
        review = find_yelp_file(folder, REVIEW_FILE)
        if business is None or review is None:
            missing = [n for n, p in ((BUSINESS_FILE, business), (REVIEW_FILE, review)) if not p]
            raise NotFoundError(f"{folder}: Yelp file(s) not found: {', '.join(missing)} "
                                f"(.json or .json.gz)")
        self.business_path = business
        self.review_path = review
        self.city = (city or "").strip()
        self.state = (state or "").strip()
        self.categories = [c for c in categories if c.strip()]
        self._businesses: dict[str, ItemRecord] | None = None

    @property
    def files(self) -> list[Path]:
        """Business file, then review file."""
        return [self.business_path, self.review_path]

    def options(self) -> dict[str, Any]:
        """City, state and categories in effect (empty means no filter)."""
        return {"city": self.city, "state": self.state, "categories": self.categories}

    def _keep(self, business: dict[str, Any], line: int) -> bool:
        """Place and category filters, all case-insensitive (Yelp spells cities loosely)."""
        path = self.business_path
        city = text_field(business, "city", path, line).strip().lower()
        if self.city and city != self.city.lower():
            return False
        state = text_field(business, "state", path, line).strip().lower()
        if self.state and state != self.state.lower():
            return False
        return not self.categories or matches_any(
            self.categories, split_categories(business.get("categories")))

    def businesses(self) -> dict[str, ItemRecord]:
        """The kept businesses by id (read once; the business file is small)."""
        if self._businesses is None:
            path = self.business_path
            kept: dict[str, ItemRecord] = {}
            for line, obj in iter_json_lines(path, desc="yelp businesses"):
                business_id = as_item_id(require(obj, "business_id", path, line), path, line,
                                         "business_id")
                self.stats["source_items"] += 1
                if business_id in kept or not self._keep(obj, line):
                    continue
                metadata = {k: v for k, v in obj.items() if k not in ("business_id", "name")}
                metadata["categories"] = split_categories(obj.get("categories"))
                kept[business_id] = ItemRecord(business_id, text_field(obj, "name", path, line),
                                               metadata)
            self._businesses = kept
        return self._businesses

    def reviews(self) -> Iterator[RawReview]:
        """Stream the review file, parsing every line but keeping only kept businesses'."""
        kept = self.businesses()
        path = self.review_path
        for line, obj in iter_json_lines(path, desc="yelp reviews"):
            self.stats["source_reviews"] += 1
            business_id = as_str(require(obj, "business_id", path, line), path, line,
                                 "business_id")
            if business_id not in kept:
                continue
            # Yelp dates carry no zone; they are read as UTC, which only shifts every user's
            # history by the same offset and leaves the order intact.
            yield RawReview(
                user_id=as_str(require(obj, "user_id", path, line), path, line, "user_id"),
                item_id=business_id,
                timestamp=parse_timestamp(require(obj, "date", path, line), path, line, "date"),
                rating=parse_rating(obj.get("stars"), path, line, "stars"),
                text=text_field(obj, "text", path, line),
            )

    def items(self, reviews: list[RawReview]) -> dict[str, ItemRecord]:
        """Kept businesses that still have reviews after filtering."""
        kept = self.businesses()
        return {r.item_id: kept[r.item_id] for r in reviews}
