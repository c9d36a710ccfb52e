"""The Persona4Rec reference candidate format: jsonl of user_id and ranked results."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p4r.datasets.jsonl import as_str, read_jsonl, require
from p4r.errors import InputError


@dataclass
class CandidateLine:
    """One user's candidate list as read (the original object is kept for writing back)."""

    line: int
    user_id: str
    item_ids: list[str]
    raw: dict[str, Any]


def read_candidates(path: Path) -> list[CandidateLine]:
    """Validate every line before any work starts."""
    lines: list[CandidateLine] = []
    for number, obj in read_jsonl(path):
        user_id = as_str(require(obj, "user_id", path, number), path, number, "user_id")
        results = obj.get("results")
        if not isinstance(results, list):
            raise InputError("missing required field (a list)", file=path, line=number,
                             field="results")
        items = []
        for index, entry in enumerate(results):
            field = f"results[{index}].item_id"
            if not isinstance(entry, dict):
                raise InputError("expected an object", file=path, line=number,
                                 field=f"results[{index}]")
            items.append(as_str(require(entry, "item_id", path, number,
                                        prefix=f"results[{index}]."), path, number, field))
        lines.append(CandidateLine(number, user_id, items, obj))
    return lines
