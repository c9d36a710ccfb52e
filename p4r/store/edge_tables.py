"""What the files Edge derives from a sealed collection share (payload tables, vector
tables): opening one (its header read, its body checked against its checksum once, then
mapped), checking it is the one its collection recorded, and finding rows by point id in the
ascending id array each of them holds."""

from __future__ import annotations

import mmap
import os
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import numpy as np

from p4r.errors import DamagedStoreError, first_line

H = TypeVar("H")

CHUNK = 1 << 20


def check_crc(handle: Any, start: int, expected: int) -> None:
    """Compare the CRC-32 of everything from ``start`` to the end with ``expected``, reading
    the file once (sequentially, which also leaves its pages in the page cache for the mmap
    reads that follow); ValueError on a mismatch."""
    handle.seek(start)
    crc = 0
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    while read := handle.readinto(buffer):
        crc = zlib.crc32(view[:read], crc)
    if crc != expected:
        raise ValueError("checksum mismatch")


def open_checked(path: Path, label: str, fix: str,
                 read_header: Callable[[BinaryIO, int], tuple[H, int, int]],
                 damage: tuple[type[Exception], ...]) -> tuple[mmap.mmap, H]:
    """Open a table: ``read_header(handle, size)`` gives its header, where its body starts
    and its recorded CRC-32; the body is checked against it (reading it once, which also
    leaves its pages in the page cache), then the file is mapped read-only. Any of
    ``damage`` (or a checksum mismatch) is one line naming the file and the fix.

    Not MAP_POPULATE: mapping all of it up front added the whole file to each process's RSS
    (44 MB of payloads at 125K personas) and did not make reads faster (a first read of a
    cached page is a minor fault, measured within noise).
    """
    try:
        with open(path, "rb") as handle:
            header, start, crc = read_header(handle, os.fstat(handle.fileno()).st_size)
            check_crc(handle, start, crc)
            return mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ), header
    except (OSError, ValueError, *damage) as exc:
        raise DamagedStoreError(f"{path} ({label}) is damaged: {first_line(exc)}; "
                                f"{fix}") from None


def check_recorded(path: Path, label: str, fix: str, expect: dict[str, Any] | None,
                   **found: Any) -> None:
    """Refuse a table whose ``found`` facts (count, checksum, ...) differ from what its
    collection recorded at sealing (``expect``; None: nothing to compare)."""
    if expect is not None and any(expect.get(key) != value for key, value in found.items()):
        raise DamagedStoreError(f"{path} ({label}) is not the one its collection recorded at "
                                f"sealing; {fix}")


def find_rows(ids: np.ndarray, wanted: Sequence[Any]) -> tuple[np.ndarray, list[bool]] | None:
    """Rows of ``wanted`` in the ascending int64 array ``ids``, and whether each is held
    there; None when none can be (empty input or table, ids that are not p4r's integers)."""
    if not wanted or not len(ids):
        return None
    try:
        asked = np.array(wanted, dtype=np.int64)
    except (TypeError, OverflowError, ValueError):  # not p4r's integer ids: none held
        return None
    if asked.ndim != 1:
        return None
    rows = ids.searchsorted(asked)
    np.minimum(rows, len(ids) - 1, out=rows)
    return rows, (ids[rows] == asked).tolist()
