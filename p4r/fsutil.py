"""File-system helpers shared by every module that reads user files or persists state.

* :func:`atomic_write_text`: crash-safe replace of a state file (readers see old or new).
* :func:`write_output`: what a user-chosen output (``--out``) goes through: ``-`` is stdout,
  and a symlink, device, FIFO or folder at the target is refused, never renamed over.
* :func:`open_regular`: open a file for reading only if it is a regular file, without
  blocking on a FIFO or touching a device.
* :func:`describe`: a path's kind in words, for messages ("a symlink loop", "a FIFO").

A full disk is one :class:`~p4r.errors.StorageFullError` naming the path, never a traceback.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import tempfile
from pathlib import Path
from typing import BinaryIO

from p4r.errors import InputError, NotFoundError, StorageFullError, is_storage_full

STDOUT = "-"


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once at import: os.umask is process-wide, not thread-safe

_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISLNK, "a symlink"),
    (stat.S_ISREG, "a regular file"),
)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def describe(path: Path) -> str:
    """What is at ``path``, in words: ``"a regular file"``, ``"a folder"``, ``"a FIFO (named
    pipe)"``, ``"a symlink loop"``, ``"a broken symlink"``, ``"missing"``, …"""
    try:
        return _kind(os.stat(path).st_mode)
    except FileNotFoundError:
        return "a broken symlink" if os.path.islink(path) else "missing"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symlink loop"
        return f"unreadable ({exc.strerror or exc})"


def open_regular(path: Path) -> BinaryIO:
    """Open ``path`` for binary reading, refusing anything but a regular file.

    The file is opened with ``O_NONBLOCK`` and checked with ``fstat`` on the open descriptor,
    so a FIFO in place of a data file is refused at once instead of hanging, a device is never
    read, and there is no window between the check and the open.

    Raises:
        NotFoundError: nothing at ``path`` (or a symlink to nothing).
        InputError: a symlink loop, a folder, a FIFO, a device, a socket, or no permission;
            the message names the path.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        what = "a broken symlink (its target does not exist)" if os.path.islink(path) else (
            "file not found")
        raise NotFoundError(f"{path}: {what}") from None
    except OSError as exc:
        reason = ("a symlink loop (too many levels of symbolic links)"
                  if exc.errno == errno.ELOOP else f"cannot read ({exc.strerror or exc})")
        raise InputError(reason, file=path) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise InputError(f"{_kind(mode)}, not a regular file; p4r reads data only from "
                             "regular files", file=path)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temp file beside ``path``, fsync, then rename: readers see old or new, never
    half a file.

    Raises:
        StorageFullError: the disk (or quota) filled up; the temp file is removed and
            ``path`` still holds its old content.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        if is_storage_full(exc):
            raise StorageFullError(path, "nothing was written") from None
        raise
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; keep the usual permissions
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if is_storage_full(exc):
            raise StorageFullError(path, "the previous content is unchanged") from None
        raise


def is_stdout(target: str | Path) -> bool:
    """Whether an output argument means standard output (``-``)."""
    return str(target) == STDOUT


def check_output_target(path: Path) -> None:
    """Refuse an output path where something other than a regular file already sits.

    An atomic write renames a temp file over its target, which would replace a symlink
    (``/dev/stdout`` is one) or shadow a device; a folder cannot be replaced at all.

    Raises:
        InputError: a symlink, device, FIFO, socket or folder is at ``path``.
    """
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):  # a new name; creating its folder says
        return                                        # which file blocks the way, if one does
    if stat.S_ISREG(mode):
        return
    hint = " (use '-' to write to standard output)" if not stat.S_ISDIR(mode) else ""
    raise InputError(f"{_kind(mode)} is there; p4r writes outputs only to regular files and "
                     f"never replaces anything else{hint}", file=path)


def write_output(target: str | Path, text: str) -> None:
    """Write a user-chosen output: ``-`` to stdout, else an atomic replace of a regular file.

    This is what a CLI's ``--out`` calls. Nothing but a regular file (or a new name) is ever
    replaced: a symlink, device, FIFO or folder at the target is refused naming the path.

    Args:
        target: ``"-"`` (or ``Path("-")``) for standard output, else a file path.
        text: the whole content.

    Raises:
        InputError: the target exists and is not a regular file.
        StorageFullError: the disk filled up (the old file is kept).
    """
    if is_stdout(target):
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    path = Path(target)
    check_output_target(path)
    atomic_write_text(path, text)
