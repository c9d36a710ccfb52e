"""A bounded, thread-safe least-recently-used map (profiles and explanations per version)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any


class LRU:
    """A bounded, thread-safe least-recently-used map; size 0 keeps nothing."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._data: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        """The value of ``key``, or None."""
        return self.get_many((key,)).get(key)

    def put(self, key: Any, value: Any) -> None:
        """Store one entry (most recent)."""
        self.put_many({key: value})

    def put_many(self, values: Mapping[Any, Any]) -> None:
        """Store several entries under one lock acquisition (most recent last)."""
        if not self.size:
            return
        data = self._data
        with self._lock:
            for key, value in values.items():
                data[key] = value
                data.move_to_end(key)
            while len(data) > self.size:
                data.popitem(last=False)

    def get_many(self, keys: Sequence[Any]) -> dict[Any, Any]:
        """The cached values of ``keys`` (absent ones left out), under one lock acquisition:
        the serving path looks up every returned item's explanation at once."""
        data = self._data
        found: dict[Any, Any] = {}
        with self._lock:
            for key in keys:
                value = data.get(key)
                if value is not None:
                    data.move_to_end(key)
                    found[key] = value
        return found

    def pop(self, key: Any) -> None:
        """Forget ``key`` (no error if absent)."""
        with self._lock:
            self._data.pop(key, None)

    def clear(self) -> None:
        """Forget every entry."""
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)
