"""What the files Edge derives from a sealed collection share (payload tables, vector
tables): reading the body once against its checksum, and finding rows by point id in the
ascending id array each of them holds."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

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
