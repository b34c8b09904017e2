"""A mapping that keeps its most recently used entries only: caches whose size must not grow
with the number of fields of a plate (opened groups and parsed metadata)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Generic, TypeVar

__all__ = ["HELD", "Recent"]

K = TypeVar("K")
V = TypeVar("V")

#: Images whose groups and parsed metadata a store opened for a run keeps (~10-20 KiB each):
#: plates up to this size are read once; larger ones read an image's metadata again when
#: planning and running reach it (still O(1) requests per field), in flat memory.
HELD = 1024


class Recent(OrderedDict[K, V], Generic[K, V]):
    """An ordered dict of at most ``size`` entries (default :data:`HELD`); setting or reading
    an entry makes it the newest, and the oldest is dropped beyond ``size``. Safe to use from
    several threads."""

    def __init__(self, size: int | None = None) -> None:
        super().__init__()
        self.size = HELD if size is None else size
        self._lock = threading.Lock()

    def __getitem__(self, key: K) -> V:
        with self._lock:
            value = super().__getitem__(key)
            self.move_to_end(key)
            return value

    def get(self, key: K, default: V | None = None) -> V | None:  # type: ignore[override]
        try:
            return self[key]
        except KeyError:
            return default

    def __setitem__(self, key: K, value: V) -> None:
        with self._lock:
            super().__setitem__(key, value)
            self.move_to_end(key)
            while len(self) > self.size:
                self.popitem(last=False)
