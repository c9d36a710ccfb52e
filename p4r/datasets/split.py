"""Leave-one-out split by time, written once so every consumer reads the same split."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from p4r.datasets.jsonl import write_jsonl_atomic
from p4r.datasets.models import Interaction

SPLIT_FILES = ("train.jsonl", "valid.jsonl", "test.jsonl")


@dataclass
class Split:
    """Per user: training interactions (time order), validation target, test target."""

    train: dict[str, list[Interaction]] = field(default_factory=dict)
    valid: dict[str, Interaction] = field(default_factory=dict)
    test: dict[str, Interaction] = field(default_factory=dict)


def leave_one_out(interactions: Iterable[Interaction]) -> Split:
    """Last interaction of each user → test, the one before → validation, the rest → train.

    Users with two interactions get a test target only; users with one are train-only. Ties in
    time break by item id so the split is deterministic.
    """
    by_user: dict[str, list[Interaction]] = defaultdict(list)
    for it in interactions:
        by_user[it.user_id].append(it)
    split = Split()
    for user, rows in sorted(by_user.items()):
        rows.sort(key=lambda r: (r.timestamp, r.item_id))
        if len(rows) >= 2:
            split.test[user] = rows.pop()
        if len(rows) >= 2:
            split.valid[user] = rows.pop()
        split.train[user] = rows
    return split


def _row(it: Interaction) -> dict[str, object]:
    return {"user_id": it.user_id, "item_id": it.item_id, "timestamp": it.timestamp,
            "rating": it.rating}


def write_split(split: Split, folder: Path) -> list[Path]:
    """Write ``train/valid/test.jsonl`` atomically into ``folder``."""
    train = [_row(it) for rows in split.train.values() for it in rows]
    outputs = [train, [_row(it) for it in split.valid.values()],
               [_row(it) for it in split.test.values()]]
    paths = []
    for name, rows in zip(SPLIT_FILES, outputs, strict=True):
        write_jsonl_atomic(folder / name, rows)
        paths.append(folder / name)
    return paths
