"""The JSON files of an Edge store: the alias record (``aliases.json``) and the swap history
and migration record (``records.json``), each replaced atomically so readers see the old or
the new file, never half of one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from p4r.errors import DamagedStoreError
from p4r.fsutil import atomic_write_text


def write_json_atomic(path: Path, data: Any) -> None:
    """Replace a JSON record atomically (alias record, collection metadata)."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True))


def read_json(path: Path, what: str, fix: str) -> Any:
    """Read a JSON file p4r wrote; damage is one line naming the file and the fix."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise DamagedStoreError(f"{path} ({what}) is damaged: {exc}; {fix}") from None


def read_aliases(path: Path) -> dict[str, str]:
    """The alias record ({} before the first publication)."""
    if not path.exists():
        return {}
    data = read_json(path, "alias record",
                     "restore it from a backup, or delete it and run p4r index upsert for "
                     "each dataset (its versions are kept and re-published)")
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise DamagedStoreError(f"{path} (alias record) is damaged: not an object of names")
    return dict(data)


def read_records(path: Path) -> dict[str, dict[str, Any]]:
    """Entries of the swap history and migration record."""
    data = read_json(path, "swap history and migration record",
                     "restore it from a backup, or delete it (history is lost; "
                     "p4r index migrate starts a new one)")
    if not isinstance(data, dict) or not isinstance(data.get("entries"), dict):
        raise DamagedStoreError(f"{path} (swap history) is damaged: no 'entries' object")
    return data["entries"]
