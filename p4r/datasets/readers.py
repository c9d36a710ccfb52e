"""Readers for the canonical files and for the Persona4Rec reference layout.

Both produce the same validated :class:`Dataset`; nothing downstream knows the layout.
"""

from __future__ import annotations

import ast
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from p4r.datasets.jsonl import (
    as_item_id,
    as_str,
    current_limits,
    non_finite_field,
    objects_in,
    parse_rating,
    parse_timestamp,
    read_jsonl,
    require,
    text_field,
)
from p4r.datasets.models import Dataset, Interaction, Item, Persona
from p4r.errors import ConfigError, InputError, NotFoundError
from p4r.settings import FileLimits

REFERENCE_PERSONA_FILES = ("3.5_persona_with_summary.jsonl", "3_personas.jsonl")
REFERENCE_HISTORY_FILES = ("3.5_history.jsonl", "3.5_history_loo.jsonl")


def present(path: Path) -> bool:
    """Whether a file is given at ``path``: anything there counts, a symlink loop or a broken
    symlink included, so reading it says what is wrong instead of the file being skipped
    (``Path.exists`` is False for both)."""
    return os.path.lexists(path)


def detect_layout(root: Path) -> str:
    """Return ``"canonical"`` or ``"reference"`` from the files present in ``root``."""
    if present(root / "personas.jsonl"):
        return "canonical"
    if any(present(root / f) for f in REFERENCE_PERSONA_FILES):
        return "reference"
    raise NotFoundError(
        f"{root}: no personas found (expected personas.jsonl, or the Persona4Rec reference "
        f"files {' / '.join(REFERENCE_PERSONA_FILES)})"
    )


def load_dataset(name: str, root: Path, *, history_file: str | None = None,
                 limits: FileLimits | None = None) -> Dataset:
    """Read and validate every file of a dataset; raises InputError on the first bad line.

    Args:
        name: the dataset's name.
        root: the folder holding its files.
        history_file: which reference history file to read (reference layout only).
        limits: line and text bounds (``settings.files``); ``None`` reads ``P4R_FILES__*``.
    """
    limits = current_limits(limits)
    layout = detect_layout(root)
    if layout == "canonical":
        if history_file:
            raise ConfigError(f"{root} holds the canonical layout (reviews.jsonl); "
                              "--history-file applies only to the Persona4Rec reference files")
        return _load_canonical(name, root, limits)
    return _load_reference(name, root, limits, history_file=history_file)


def _parse_personas(
    item_id: str, raw: Any, path: Path, line: int, keys: tuple[str, str, str, str]
) -> list[Persona]:
    id_key, name_key, desc_key, why_key = keys
    if raw == []:
        raise InputError("empty persona list", file=path, line=line, field="personas")
    personas: list[Persona] = []
    seen: set[str] = set()
    for prefix, entry in objects_in(raw, "personas", path, line):
        persona_id = as_str(require(entry, id_key, path, line, prefix=prefix), path, line,
                            prefix + id_key)
        if persona_id in seen:
            raise InputError(f"duplicate persona id {persona_id!r} in item {item_id!r}",
                             file=path, line=line, field=prefix + id_key)
        seen.add(persona_id)
        personas.append(
            Persona(
                item_id=item_id,
                persona_id=persona_id,
                name=text_field(entry, name_key, path, line, prefix=prefix, required=True),
                description=text_field(entry, desc_key, path, line, prefix=prefix,
                                       required=True),
                rationale=text_field(entry, why_key, path, line, prefix=prefix, required=True),
            )
        )
    return personas


def _read_persona_lines(
    path: Path, keys: tuple[str, str, str, str], limits: FileLimits
) -> Iterator[tuple[int, dict[str, Any], str, list[Persona]]]:
    """Yield ``(line, object, item_id, personas)`` per line; an item given twice is an error."""
    seen: set[str] = set()
    for line, obj in read_jsonl(path, limits):
        item_id = as_item_id(require(obj, "item_id", path, line), path, line, "item_id")
        if "personas" not in obj:
            raise InputError("missing required field", file=path, line=line, field="personas")
        if item_id in seen:
            raise InputError(f"duplicate item {item_id!r} (personas already given earlier)",
                             file=path, line=line, field="item_id")
        seen.add(item_id)
        yield line, obj, item_id, _parse_personas(item_id, obj["personas"], path, line, keys)


def _aspects(value: Any, path: Path, line: int, field: str) -> dict[str, Any] | None:
    """Aspects are a dict; the reference pipeline sometimes stores them as a (Python) string."""
    if value is None or value == "":
        return None
    if isinstance(value, dict):
        return value
    if isinstance(value, str):
        for parse in (json.loads, ast.literal_eval):
            try:
                parsed = parse(value)
            except (ValueError, SyntaxError, RecursionError, MemoryError):
                continue
            if isinstance(parsed, dict):
                inner = non_finite_field(parsed)
                if inner is not None:
                    raise InputError("not a finite number", file=path, line=line,
                                     field=f"{field}.{inner}")
                return parsed
    raise InputError("expected an object of aspects", file=path, line=line, field=field)


def _sorted_interactions(interactions: list[Interaction]) -> list[Interaction]:
    return sorted(interactions, key=lambda i: (i.user_id, i.timestamp, i.item_id))


def _read_items(path: Path, limits: FileLimits) -> dict[str, Item]:
    """``items.jsonl``: one line per item, title and summary as text, metadata an object."""
    items: dict[str, Item] = {}
    for line, obj in read_jsonl(path, limits):
        item_id = as_item_id(require(obj, "item_id", path, line), path, line, "item_id")
        if item_id in items:
            raise InputError(f"duplicate item {item_id!r}", file=path, line=line,
                             field="item_id")
        metadata = obj.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise InputError("expected an object", file=path, line=line, field="metadata")
        items[item_id] = Item(item_id=item_id, title=text_field(obj, "title", path, line),
                              summary=text_field(obj, "summary", path, line), metadata=metadata)
    return items


def _read_reviews(path: Path, items: dict[str, Item], limits: FileLimits) -> list[Interaction]:
    """``reviews.jsonl``: one interaction per line, with the reviewed item's summary."""
    interactions: list[Interaction] = []
    for line, obj in read_jsonl(path, limits):
        user_id = as_str(require(obj, "user_id", path, line), path, line, "user_id")
        item_id = as_item_id(require(obj, "item_id", path, line), path, line, "item_id")
        item = items.get(item_id)
        interactions.append(
            Interaction(
                user_id=user_id,
                item_id=item_id,
                timestamp=parse_timestamp(require(obj, "timestamp", path, line), path, line,
                                          "timestamp"),
                rating=parse_rating(obj.get("rating"), path, line, "rating"),
                text=text_field(obj, "text", path, line),
                aspects=_aspects(obj.get("aspects"), path, line, "aspects"),
                item_summary=item.summary if item else "",
            )
        )
    return interactions


def _load_canonical(name: str, root: Path, limits: FileLimits) -> Dataset:
    files: dict[str, Path] = {}
    items: dict[str, Item] = {}
    items_path = root / "items.jsonl"
    if present(items_path):
        files["items"] = items_path
        items = _read_items(items_path, limits)

    personas_path = root / "personas.jsonl"
    files["personas"] = personas_path
    personas: dict[str, list[Persona]] = {}
    keys = ("persona_id", "name", "description", "rationale")
    for _line, _obj, item_id, parsed in _read_persona_lines(personas_path, keys, limits):
        personas[item_id] = parsed

    interactions: list[Interaction] = []
    reviews_path = root / "reviews.jsonl"
    if present(reviews_path):
        files["reviews"] = reviews_path
        interactions = _read_reviews(reviews_path, items, limits)
    return Dataset(name=name, root=root, layout="canonical", items=items, personas=personas,
                   interactions=_sorted_interactions(interactions), files=files)


def _merge_summary(items: dict[str, Item], item_id: str, title: str, summary: str) -> None:
    item = items.setdefault(item_id, Item(item_id=item_id))
    if title and not item.title:
        item.title = title
    if summary and not item.summary:
        item.summary = summary


def _history_reviews(path: Path, limits: FileLimits,
                     ) -> Iterator[tuple[int, str, str, dict[str, Any], str]]:
    """Yield ``(line, user_id, "reviews[i].", review, item_id)`` for every review of a history
    file."""
    for line, obj in read_jsonl(path, limits):
        user_id = as_str(require(obj, "user_id", path, line), path, line, "user_id")
        for prefix, review in objects_in(obj.get("reviews"), "reviews", path, line):
            item_id = as_item_id(require(review, "item_id", path, line, prefix=prefix), path,
                                 line, prefix + "item_id")
            yield line, user_id, prefix, review, item_id


def _review_text(review: dict[str, Any], path: Path, line: int, prefix: str) -> str:
    """The reference pipeline writes ``review_text``; canonical-style histories ``text``."""
    return (text_field(review, "review_text", path, line, prefix=prefix)
            or text_field(review, "text", path, line, prefix=prefix))


def _read_history(path: Path, items: dict[str, Item], limits: FileLimits) -> list[Interaction]:
    """A ``3.5_history*.jsonl`` file: one user per line with the list of their reviews."""
    interactions: list[Interaction] = []
    for line, user_id, prefix, review, item_id in _history_reviews(path, limits):
        summary = text_field(review, "summary", path, line, prefix=prefix)
        _merge_summary(items, item_id, "", summary)
        interactions.append(
            Interaction(
                user_id=user_id,
                item_id=item_id,
                timestamp=parse_timestamp(require(review, "timestamp", path, line, prefix=prefix),
                                          path, line, prefix + "timestamp"),
                rating=parse_rating(review.get("rating"), path, line, prefix + "rating"),
                text=_review_text(review, path, line, prefix),
                aspects=_aspects(review.get("extracted"), path, line, prefix + "extracted"),
                item_summary=summary or items[item_id].summary,
            )
        )
    return interactions


def _read_reference_items(root: Path, files: dict[str, Path],
                          limits: FileLimits) -> dict[str, Item]:
    """Titles and summaries from ``2_summary.jsonl``, when present."""
    items: dict[str, Item] = {}
    path = root / "2_summary.jsonl"
    if present(path):
        files["summaries"] = path
        for line, obj in read_jsonl(path, limits):
            item_id = as_item_id(require(obj, "item_id", path, line), path, line, "item_id")
            _merge_summary(items, item_id, text_field(obj, "item_title", path, line),
                           text_field(obj, "item_summary", path, line))
    return items


def _read_reference_personas(path: Path, items: dict[str, Item],
                             limits: FileLimits) -> dict[str, list[Persona]]:
    """Personas of the reference layout; their lines also carry the item's summary."""
    personas: dict[str, list[Persona]] = {}
    keys = ("ID", "Name", "Description", "Preference_Rationale")
    for line, obj, item_id, parsed in _read_persona_lines(path, keys, limits):
        personas[item_id] = parsed
        summary = (text_field(obj, "item_summary", path, line)
                   or text_field(obj["personas"][0], "Item_Summary", path, line,
                                 prefix="personas[0]."))
        _merge_summary(items, item_id, text_field(obj, "item_title", path, line), summary)
    return personas


def _load_reference(name: str, root: Path, limits: FileLimits, *,
                    history_file: str | None) -> Dataset:
    files: dict[str, Path] = {}
    items = _read_reference_items(root, files, limits)
    personas_path = next(root / f for f in REFERENCE_PERSONA_FILES if present(root / f))
    files["personas"] = personas_path
    personas = _read_reference_personas(personas_path, items, limits)

    # Item summaries are facts about items: take them from every history file present, so a
    # held-out item (absent from the leave-one-out history) still has its summary.
    for extra in REFERENCE_HISTORY_FILES:
        if present(root / extra):
            for line, _user, prefix, review, item_id in _history_reviews(root / extra, limits):
                _merge_summary(items, item_id, "", text_field(
                    review, "summary", root / extra, line, prefix=prefix))

    interactions: list[Interaction] = []
    candidates = (history_file,) if history_file else REFERENCE_HISTORY_FILES
    history_path = next((root / f for f in candidates if present(root / f)), None)
    if history_file and history_path is None:
        raise NotFoundError(f"{root / history_file}: history file not found")
    if history_path is not None:
        files["history"] = history_path
        interactions = _read_history(history_path, items, limits)
    return Dataset(name=name, root=root, layout="reference", items=items, personas=personas,
                   interactions=_sorted_interactions(interactions), files=files)
