"""Reading evaluation inputs: reference candidate files, ground truth, review counts."""

from __future__ import annotations

from pathlib import Path

from p4r.datasets.jsonl import as_str, read_jsonl, require
from p4r.errors import InputError
from p4r.query.candidates import read_candidates


def read_ranked(path: Path) -> dict[str, list[str]]:
    """user → ranked item ids from a reference candidates file (``[PAD]`` kept in place)."""
    out: dict[str, list[str]] = {}
    for line in read_candidates(path):
        if line.user_id in out:
            raise InputError(f"duplicate user {line.user_id!r}", file=path, line=line.line,
                             field="user_id")
        out[line.user_id] = line.item_ids
    return out


def read_ground_truth(path: Path) -> dict[str, set[str]]:
    """user → relevant item ids from jsonl lines ``{user_id, item_id}`` (or ``item_ids``)."""
    out: dict[str, set[str]] = {}
    for number, obj in read_jsonl(path):
        user = as_str(require(obj, "user_id", path, number), path, number, "user_id")
        if "item_ids" in obj and isinstance(obj["item_ids"], list):
            items = {as_str(i, path, number, "item_ids") for i in obj["item_ids"]}
        else:
            items = {as_str(require(obj, "item_id", path, number), path, number, "item_id")}
        out.setdefault(user, set()).update(items)
    return out


def read_interaction_pairs(path: Path) -> list[tuple[str, str]]:
    """(user, item) pairs from canonical reviews or a reference history file."""
    pairs: list[tuple[str, str]] = []
    for number, obj in read_jsonl(path):
        user = as_str(require(obj, "user_id", path, number), path, number, "user_id")
        if isinstance(obj.get("reviews"), list):
            for index, review in enumerate(obj["reviews"]):
                field = f"reviews[{index}].item_id"
                item = review.get("item_id") if isinstance(review, dict) else None
                if not item:
                    raise InputError("missing required field", file=path, line=number,
                                     field=field)
                pairs.append((user, as_str(item, path, number, field)))
        else:
            pairs.append((user, as_str(require(obj, "item_id", path, number), path, number,
                                        "item_id")))
    return pairs
