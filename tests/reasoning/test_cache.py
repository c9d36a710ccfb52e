"""The LLM response cache on a full disk: one error naming the cache, stored answers stay."""

from __future__ import annotations

import pytest

from p4r.errors import StorageFullError
from p4r.reasoning.cache import ResponseCache
from tests.conftest import SmallDisk


def test_a_full_response_cache_is_one_error_naming_its_file(small_disk: SmallDisk) -> None:
    path = small_disk.root / "llm.sqlite"
    cache = ResponseCache(path)
    try:
        cache.put("kept", {"ok": True}, "m", "v1")
        small_disk.fill()
        with pytest.raises(StorageFullError) as info:
            for n in range(200):
                cache.put(f"k{n}", {"text": "x" * 20_000}, "m", "v1")
        assert info.value.path == str(path)
        assert "this LLM answer was not cached" in str(info.value)
        small_disk.free()
        assert cache.get("kept") == {"ok": True}
        cache.put("after", [1], "m", "v1")
        assert cache.get("after") == [1]
    finally:
        cache.close()
