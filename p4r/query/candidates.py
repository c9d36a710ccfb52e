"""The Persona4Rec reference candidate format: jsonl of user_id and ranked results."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p4r.datasets.jsonl import as_str, objects_in, read_jsonl, require


@dataclass
class CandidateLine:
    """One user's candidate list as read (the original object is kept for writing back)."""

    line: int
    user_id: str
    item_ids: list[str]
    raw: dict[str, Any]


def read_candidates(path: Path) -> list[CandidateLine]:
    """Validate every line before any work starts. ``[PAD]`` is a legal item id here (the
    reference pipeline pads short lists with it); it keeps its place in the output."""
    lines: list[CandidateLine] = []
    for number, obj in read_jsonl(path):
        user_id = as_str(require(obj, "user_id", path, number), path, number, "user_id")
        items = [as_str(require(entry, "item_id", path, number, prefix=prefix), path, number,
                        prefix + "item_id")
                 for prefix, entry in objects_in(obj.get("results"), "results", path, number)]
        lines.append(CandidateLine(number, user_id, items, obj))
    return lines
