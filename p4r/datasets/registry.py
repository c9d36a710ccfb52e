"""Dataset names to folders: ``$P4R_DATA_DIR/datasets/NAME`` or the packaged ``demo``."""

from __future__ import annotations

import re
from pathlib import Path

from p4r.errors import NotFoundError
from p4r.fsutil import describe

PACKAGED = {"demo": Path(__file__).resolve().parent / "demo"}
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


def validate_name(name: str) -> str:
    """Dataset names become collection names, so keep them to lowercase slug characters."""
    if not _NAME.match(name):
        raise NotFoundError(
            f"invalid dataset name {name!r}: use lowercase letters, digits, '-' or '_'"
        )
    return name


def dataset_dir(name: str, data_dir: Path, override: Path | None = None) -> Path:
    """Resolve where a dataset's files live; raise NotFoundError naming the paths tried."""
    validate_name(name)
    if override is not None:
        if not override.is_dir():
            kind = describe(override)  # a symlink loop says so, not "does not exist"
            raise NotFoundError(f"dataset folder {override} does not exist" if kind == "missing"
                                else f"dataset folder {override} is {kind}, not a folder")
        return override
    candidate = data_dir / "datasets" / name
    if candidate.is_dir():
        return candidate
    if name in PACKAGED:
        return PACKAGED[name]
    known = sorted({*PACKAGED, *(p.name for p in (data_dir / "datasets").glob("*") if p.is_dir())})
    raise NotFoundError(
        f"unknown dataset {name!r}: {candidate} does not exist "
        f"(known: {', '.join(known)}; or pass --data-dir DIR)"
    )
