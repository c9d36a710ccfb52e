"""Readers never write, on a read-only mount too; a full disk is one line, never SIGBUS, and
`check` tells a full disk from damage. Real mounts (root only; skipped with the reason
elsewhere)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from p4r.errors import StorageFullError
from p4r.indexer import index_dataset
from p4r.query import Reranker
from p4r.settings import EncoderSettings, Settings
from p4r.store.edge import EdgeBackend
from p4r.store.lifecycle import check_dataset
from tests.conftest import upsert

pytestmark = pytest.mark.system  # real mounts and processes


def _mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount here: {done.stderr.strip()}")


@pytest.fixture
def mounts(tmp_path: Path) -> Iterator[list[Path]]:
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    made: list[Path] = []
    yield made
    for path in reversed(made):
        subprocess.run(["umount", "-l", str(path)], check=False)


def _snapshot(root: Path) -> dict[str, tuple[float, int, int]]:
    """Every file's mtime, inode and size: what any write would change."""
    return {str(p.relative_to(root)): (p.stat().st_mtime, p.stat().st_ino, p.stat().st_size)
            for p in root.rglob("*") if p.is_file()}


def test_readers_never_write_and_serve_from_a_read_only_mount(  # type: ignore[no-untyped-def]
        tmp_path: Path, mounts: list[Path], demo_dataset, tiny_encoder, tiny_models) -> None:
    data = tmp_path / "data"
    with EdgeBackend(data / "edge") as store:
        upsert(demo_dataset, store, tiny_encoder)
    before = _snapshot(data)
    readonly = tmp_path / "ro"
    readonly.mkdir()
    _mount("--bind", str(data), str(readonly))
    mounts.append(readonly)
    _mount("-o", "remount,bind,ro", str(readonly))
    with pytest.raises(OSError):
        (readonly / "probe").write_text("x")  # the mount really is read-only

    store = EdgeBackend(readonly / "edge")
    report = check_dataset(store, "demo")
    assert report["ok"], report["problems"]
    reranker = Reranker("demo", store, encoder=EncoderSettings(model=str(tiny_models["a"])))
    answer = reranker.rerank(user_id="u-chloe", candidates=["crumb-and-co", "tide-sushi"])
    assert [i.explanation for i in answer.items] == ["persona", "persona"]
    assert reranker.user_profile("u-chloe").interactions
    store.close()

    env = {**os.environ, "P4R_DATA_DIR": str(readonly),
           "P4R_ENCODER__MODEL": str(tiny_models["a"]),
           "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    for args in (["index", "status", "-d", "demo", "--json"],
                 ["query", "rerank", "-d", "demo", "-u", "u-ana", "-c", "cafe-lumen", "--json"]):
        done = subprocess.run([sys.executable, "-m", "p4r.cli", *args], env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        json.loads(done.stdout)
    assert _snapshot(data) == before, "no reader wrote a byte, an mtime or an inode"


class Disk:
    """A tmpfs of ``size`` to fill up."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def fill(self) -> None:
        with open(self.root / ".filler", "ab") as out:
            try:
                while True:
                    out.write(b"\0" * 65536)
                    out.flush()
            except OSError as exc:
                assert exc.errno == 28


def _disk(tmp_path: Path, mounts: list[Path], size: str) -> Disk:
    root = tmp_path / f"disk-{size}"
    root.mkdir()
    _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(root))
    mounts.append(root)
    return Disk(root)


def test_an_upsert_that_cannot_fit_is_refused_before_it_writes(  # type: ignore[no-untyped-def]
        tmp_path: Path, mounts: list[Path], demo_dataset, tiny_encoder) -> None:
    disk = _disk(tmp_path, mounts, "8m")
    with pytest.raises(StorageFullError, match=r"needs about .* MB and .* MB are free; "
                                               r"nothing was written"):
        index_dataset(Settings(data_dir=disk.root), demo_dataset,
                      backend=EdgeBackend(disk.root / "edge"), encoder=tiny_encoder, cache=None)
    assert not any((disk.root / "edge").glob("p4r_demo_*")), "no collection was started"


def test_check_on_a_full_disk_says_so_instead_of_damaged(  # type: ignore[no-untyped-def]
        tmp_path: Path, mounts: list[Path], demo_dataset, tiny_encoder) -> None:
    disk = _disk(tmp_path, mounts, "400m")
    with EdgeBackend(disk.root / "edge") as store:
        upsert(demo_dataset, store, tiny_encoder)
    disk.fill()
    store = EdgeBackend(disk.root / "edge")
    try:
        report = check_dataset(store, "demo")
    except StorageFullError as exc:
        outcome = f"full: {exc}"
    else:  # the engine opened its files without a new block: then the version is whole
        outcome = "ok" if report["ok"] else f"DAMAGED: {report['problems']}"
    finally:
        store.close()
    print(outcome)
    assert outcome == "ok" or "no space left on the device" in outcome, outcome
