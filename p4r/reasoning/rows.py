"""Read and write the canonical files as validated rows (see :mod:`p4r.datasets.models`)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TypeVar

from pydantic import ValidationError

from p4r.datasets.jsonl import read_jsonl, write_jsonl_atomic
from p4r.datasets.models import Row
from p4r.errors import InputError, NotFoundError

R = TypeVar("R", bound=Row)


def read_rows(path: Path, model: type[R]) -> list[R]:
    """Every line of ``path`` as ``model``; the first bad line raises naming line and field."""
    if not path.exists():
        raise NotFoundError(f"{path} not found (run p4r data prepare, or the stage before)")
    rows = []
    for line, obj in read_jsonl(path):
        try:
            rows.append(model.model_validate(obj))
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or None
            raise InputError(first["msg"], file=path, line=line, field=field) from None
    return rows


def write_rows(path: Path, rows: Iterable[Row]) -> None:
    """All rows in one atomic replace."""
    write_jsonl_atomic(path, [row.to_json() for row in rows])
