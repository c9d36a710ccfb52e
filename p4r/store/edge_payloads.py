"""Payload tables: a sealed collection's payloads in one file read by mmap, so an explanation
is an array lookup and a decode instead of an engine read.

Edge reads a stored payload for ~3.5 µs per id (measured), and after a start or a reload those
reads are disk reads: a shard's pages leave the page cache when any process closes it. The
table is written at sealing, beside the groups file, and read through the page cache that
its own integrity check fills when a serving process opens the collection.

Layout (little endian)::

    b"P4RPAYL1" | uint32 header length | header JSON | zero padding to 8 bytes
    ids          int64[n]        point ids, ascending
    row_offsets  int64[n + 1]    byte offset of each row in the text blob
    blob         UTF-8           each row's fields joined by U+001F (unit separator)

A key whose value is a string without U+001F in every row is stored as that string; any other
key stores each row's value as JSON (empty: the row lacks the key), which escapes control
characters, so splitting a row at U+001F always yields its fields and a row decodes to exactly
the payload the engine holds (one slice, one decode, one split: ~1 µs per row, measured). The
header records the CRC-32 of everything after it: a table whose bytes changed is refused,
never served.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from p4r.errors import DamagedStoreError
from p4r.store.edge_tables import check_recorded, find_rows, open_checked

MAGIC = b"P4RPAYL1"
_FORMAT = 1
_HEAD = struct.Struct("<8sI")
_CHUNK = 1 << 20
_SEP = "\x1f"


def payloads_file(folder: Path) -> Path:
    """Where a collection's payload table lives."""
    return folder / "payloads.bin"


def write_payload_table(path: Path, rows: Iterable[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
    """Write ``(point id, payload)`` rows as a table, replaced atomically; returns what the
    collection's metadata records of it (file, count and checksum).

    Raises:
        ValueError: a point id is not an integer (stores of id scheme 1 keep no table).
    """
    by_id = sorted(rows, key=lambda row: row[0])
    if any(type(pid) is not int for pid, _ in by_id):
        raise ValueError("payload tables hold integer point ids only")
    keys = sorted({key for _, payload in by_id for key in payload})
    as_json = [not all(isinstance(p.get(key), str) and _SEP not in p[key] for _, p in by_id)
               for key in keys]
    blob = bytearray()
    offsets = np.zeros(len(by_id) + 1, dtype="<i8")
    for row, (_, payload) in enumerate(by_id):
        blob += _SEP.join([_field(payload, key, is_json)
                           for key, is_json in zip(keys, as_json, strict=True)]).encode("utf-8")
        offsets[row + 1] = len(blob)
    ids = np.fromiter((pid for pid, _ in by_id), dtype="<i8", count=len(by_id))
    body = [ids.tobytes(), offsets.tobytes(), bytes(blob)]
    crc = 0
    for part in body:
        crc = zlib.crc32(part, crc)
    header = {"format": _FORMAT, "count": len(by_id), "keys": keys, "json": as_json,
              "blob": len(blob), "crc32": crc}
    head = json.dumps(header, sort_keys=True).encode("utf-8")
    pad = b"\0" * (-(_HEAD.size + len(head)) % 8)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as out:
        out.write(_HEAD.pack(MAGIC, len(head)) + head + pad)
        for part in body:
            out.write(part)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    return {"file": path.name, "count": len(by_id), "crc32": crc}


def _field(payload: dict[str, Any], key: str, is_json: bool) -> str:
    if not is_json:
        return payload[key]  # type: ignore[no-any-return]
    if key not in payload:
        return ""
    return json.dumps(payload[key], ensure_ascii=False, separators=(",", ":"))


class PayloadTable:
    """A payload table opened for reading: checked once (every byte against the recorded
    checksum, which also brings the file into the page cache), then read by mmap."""

    def __init__(self, path: Path, fix: str, expect: dict[str, Any] | None = None) -> None:
        self.path = path
        self._map, (header, start) = open_checked(path, "payload table", fix, _read_header,
                                                  (KeyError, TypeError))
        count = header["count"]
        check_recorded(path, "payload table", fix, expect, count=count,
                       crc32=header["crc32"])
        self.count = count
        self.keys: tuple[str, ...] = tuple(header["keys"])
        self._json = tuple(bool(flag) for flag in header["json"])
        self._plain = bool(self.keys) and not any(self._json)
        self._ids = np.frombuffer(self._map, dtype="<i8", count=count, offset=start)
        start += 8 * count
        offsets = np.frombuffer(self._map, dtype="<i8", count=count + 1, offset=start)
        # Where each row starts in the file (rows are read at these positions).
        self._starts = offsets + (start + 8 * (count + 1))
        if count and (offsets[0] != 0 or np.any(np.diff(offsets) < 0)):
            raise DamagedStoreError(f"{path} (payload table) is damaged: row offsets out of "
                                    f"order; {fix}")

    def get_many(self, ids: Sequence[Any]) -> dict[Any, dict[str, Any]]:
        """Payload by id for the ids the table holds (others are absent), as the engine
        would return them."""
        found = find_rows(self._ids, ids)
        if found is None:
            return {}
        rows, held = found
        starts = self._starts[rows].tolist()
        stops = self._starts[rows + 1].tolist()
        data, keys = self._map, self.keys
        if self._plain:  # every value a string: one slice, decode and split per row
            return {pid: dict(zip(keys, data[first:last].decode().split(_SEP), strict=True))
                    for pid, ok, first, last in zip(ids, held, starts, stops, strict=True) if ok}
        return {pid: self._decode(data[first:last].decode().split(_SEP))
                for pid, ok, first, last in zip(ids, held, starts, stops, strict=True) if ok}

    def _decode(self, values: list[str]) -> dict[str, Any]:
        if not self.keys:
            return {}
        return {key: json.loads(value) if is_json else value
                for key, value, is_json in zip(self.keys, values, self._json, strict=True)
                if not is_json or value}

    def close(self) -> None:
        """Release the mapping (numpy views may keep it until they are collected)."""
        with contextlib.suppress(BufferError):  # views still exported: they hold the mapping
            self._map.close()


def _read_header(handle: BinaryIO,
                 size: int) -> tuple[tuple[dict[str, Any], int], int, int]:
    """(the header, where the body starts), that start again and the body's CRC-32 (as
    :func:`~p4r.store.edge_tables.open_checked` takes them); every size checked against the
    file's."""
    raw = handle.read(_HEAD.size)
    if len(raw) != _HEAD.size:
        raise ValueError("shorter than its header")
    magic, length = _HEAD.unpack(raw)
    if magic != MAGIC:
        raise ValueError("not a p4r payload table")
    if length > size:
        raise ValueError("header longer than the file")
    header = json.loads(handle.read(length).decode("utf-8"))
    if header.get("format") != _FORMAT:
        raise ValueError(f"format {header.get('format')!r}, expected {_FORMAT}")
    count, keys, flags = int(header["count"]), header["keys"], header["json"]
    if count < 0 or not isinstance(keys, list) or len(flags) != len(keys):
        raise ValueError("inconsistent header")
    start = _HEAD.size + length
    start += -start % 8
    body = 8 * count + 8 * (count + 1) + int(header["blob"])
    if start + body != size:
        raise ValueError(f"{size} bytes, the header describes {start + body}")
    header["count"] = count
    return (header, start), start, header["crc32"]
