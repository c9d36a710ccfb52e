"""The embedding cache on a full disk: one error naming the cache, what was stored stays."""

from __future__ import annotations

import numpy as np
import pytest

from p4r.encoder.cache import EmbeddingCache, encode_cached
from p4r.encoder.fingerprint import Fingerprint
from p4r.errors import StorageFullError
from tests.conftest import SmallDisk

FP = Fingerprint(model="fake", weights_sha256="0" * 64, dim=384, max_seq_length=16)


def _encode(texts: list[str]) -> np.ndarray:
    return np.ones((len(texts), FP.dim), dtype=np.float32)


def test_a_full_cache_is_one_error_naming_its_file(small_disk: SmallDisk) -> None:
    path = small_disk.root / "cache" / "embeddings.sqlite"
    cache = EmbeddingCache(path)
    try:
        encode_cached(["kept"], FP, _encode, cache)
        small_disk.fill()
        # Before: a 28-line sqlite3.OperationalError traceback out of the indexer.
        with pytest.raises(StorageFullError) as info:
            encode_cached([f"text {n}" for n in range(2000)], FP, _encode, cache)
        assert info.value.path == str(path)
        assert str(info.value).startswith(f"{path}: no space left on the device")
        small_disk.free()
        assert list(cache.get_many(FP, [_hash("kept")])) == [_hash("kept")], "kept"
        encode_cached(["after"], FP, _encode, cache)
    finally:
        cache.close()


def _hash(text: str) -> str:
    from p4r.encoder.cache import text_hash

    return text_hash(text)
