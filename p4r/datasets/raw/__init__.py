"""Adapters from raw public dumps (Yelp, Amazon 2023, Amazon 2018) to canonical records."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from p4r.datasets.raw.amazon import Amazon2018Source, Amazon2023Source
from p4r.datasets.raw.common import ItemRecord, RawReview, RawSource, first_object
from p4r.datasets.raw.yelp import (
    BUSINESS_FILE,
    DEFAULT_CATEGORIES,
    DEFAULT_CITY,
    DEFAULT_STATE,
    YelpSource,
    find_yelp_file,
    yelp_folder,
)
from p4r.errors import ConfigError, NotFoundError

KINDS = ("yelp", "amazon2023", "amazon2018")

__all__ = ["KINDS", "Amazon2018Source", "Amazon2023Source", "ItemRecord", "RawReview",
           "RawSource", "YelpSource", "detect_kind", "open_source"]


def detect_kind(source: Path) -> str:
    """Tell the source kind from its files: a Yelp folder, or the keys of the first review line."""
    if not source.exists():
        raise NotFoundError(f"{source}: no such file or folder")
    if find_yelp_file(yelp_folder(source), BUSINESS_FILE) is not None and (
            source.is_dir() or source.name.startswith("yelp_academic_dataset_")):
        return "yelp"
    if source.is_dir():
        raise ConfigError(f"{source}: not a Yelp dataset folder (no {BUSINESS_FILE}); for "
                          f"Amazon pass the review file itself")
    first = first_object(source)
    if "reviewerID" in first or "unixReviewTime" in first:
        return "amazon2018"
    if "user_id" in first and ("parent_asin" in first or "asin" in first):
        return "amazon2023"
    if "parent_asin" in first:
        raise ConfigError(f"{source}: this is an Amazon 2023 metadata file; pass the review "
                          f"file as --source (the meta_* file beside it is found, or use --meta)")
    raise ConfigError(f"{source}: cannot tell the dataset kind from its first line "
                      f"(keys: {', '.join(sorted(first)[:8])}); pass --kind")


def open_source(source: Path, *, kind: str | None = None, meta: Path | None = None,
                city: str | None = None, state: str | None = None,
                categories: Sequence[str] | None = None) -> RawSource:
    """Build the adapter for ``source``; ``None`` options take the kind's defaults.

    Options that do not apply to the kind are refused rather than silently ignored.
    """
    kind = kind or detect_kind(source)
    if kind not in KINDS:
        raise ConfigError(f"unknown dataset kind {kind!r} (choose from {', '.join(KINDS)})")
    if kind != "yelp" and (city is not None or state is not None):
        raise ConfigError(f"--city and --state apply to Yelp only, not {kind}")
    if kind != "amazon2023" and meta is not None:
        raise ConfigError(f"--meta applies to amazon2023 only, not {kind}")
    if kind == "yelp":
        return YelpSource(
            source,
            city=DEFAULT_CITY if city is None else city,
            state=DEFAULT_STATE if state is None else state,
            categories=DEFAULT_CATEGORIES if categories is None else categories,
        )
    if kind == "amazon2023":
        return Amazon2023Source(source, meta, categories=categories or ())
    if categories:
        raise ConfigError("--categories does not apply to amazon2018 (one category per file)")
    return Amazon2018Source(source)
