"""Outputs never replace a symlink, device, FIFO or folder; ``-`` is stdout; a full disk is one
error naming the path, with no temp file left behind."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from p4r.datasets.jsonl import write_jsonl_atomic
from p4r.errors import InputError, StorageFullError
from p4r.fsutil import atomic_write_text, describe, write_output
from tests.conftest import SmallDisk


# -- class: --out over something that is not a regular file -------------------------------------
def test_dash_writes_to_stdout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_output("-", "one\n")
    write_jsonl_atomic(Path("-"), [{"a": 1}])
    assert capsys.readouterr().out == 'one\n{"a": 1}\n'
    assert not (Path.cwd() / "-").exists(), "no file named '-' is created"


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _char_device(path: Path) -> Path:
    if os.geteuid() != 0:
        pytest.skip("making a device node needs root")
    os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # a private /dev/null
    return path


@pytest.mark.parametrize(("make", "kind"), [
    (lambda p: (p.symlink_to(p.parent / "real.txt"), p)[1], "a symlink"),
    (lambda p: (p.symlink_to("/dev/null"), p)[1], "a symlink"),
    (_fifo, "a FIFO"),
    (_char_device, "a character device"),
    (lambda p: (p.mkdir(), p)[1], "a folder"),
], ids=["symlink-to-file", "symlink-to-device", "fifo", "device", "folder"])
def test_an_output_never_replaces_what_is_not_a_regular_file(tmp_path: Path, make,  # type: ignore[no-untyped-def]
                                                             kind: str) -> None:
    (tmp_path / "real.txt").write_text("kept\n")
    target = make(tmp_path / "out.jsonl")
    before = os.lstat(target)
    for write in (lambda: write_output(target, "new\n"),
                  lambda: write_jsonl_atomic(target, [{"a": 1}])):
        with pytest.raises(InputError) as info:
            write()
        assert info.value.file == str(target) and kind in str(info.value)
    after = os.lstat(target)
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode), "left in place"
    assert (tmp_path / "real.txt").read_text() == "kept\n"
    assert not list(tmp_path.glob(".out.jsonl.*")), "no temp file left"


def test_a_regular_file_is_replaced_atomically(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    target.write_text("old\n")
    write_jsonl_atomic(target, [{"a": 1}])
    assert target.read_text() == '{"a": 1}\n'
    write_output(tmp_path / "new" / "file.txt", "x")
    assert (tmp_path / "new" / "file.txt").read_text() == "x"


def test_describe_names_what_is_at_a_path(tmp_path: Path) -> None:
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    broken = tmp_path / "broken"
    broken.symlink_to(tmp_path / "nowhere")
    assert describe(loop) == "a symlink loop"
    assert describe(broken) == "a broken symlink"
    assert describe(tmp_path / "nothing") == "missing"
    assert describe(tmp_path) == "a folder"
    assert describe(_fifo(tmp_path / "fifo")) == "a FIFO (named pipe)"


# -- class: a full disk on an atomic write ------------------------------------------------------
def test_a_full_disk_is_one_error_naming_the_path(small_disk: SmallDisk) -> None:
    target = small_disk.root / "state.json"
    atomic_write_text(target, "old")
    small_disk.fill()
    with pytest.raises(StorageFullError) as info:
        atomic_write_text(target, "x" * 200_000)
    assert info.value.path == str(target)
    assert str(info.value).startswith(f"{target}: no space left on the device")
    assert target.read_text() == "old", "the previous content is unchanged"
    assert sorted(p.name for p in small_disk.root.iterdir()) == [".filler", "state.json"], (
        "the temp file is removed")
    small_disk.free()
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
