"""A small bounded cache for the engine's memoised answers and tensors; imports no tensor library."""

from __future__ import annotations

import threading
from collections import OrderedDict


class LRU:
    """A small thread-safe LRU cache with a fixed number of entries and, optionally, a bound on the bytes of the
    tensors it holds (``max_bytes``; other values count as nothing, unless ``sizeof`` says what they hold).  The
    entry just put is never evicted."""

    def __init__(self, maxsize: int = 64, max_bytes: int | None = None, sizeof=None):
        self.maxsize, self.max_bytes, self._d, self._lock = maxsize, max_bytes, OrderedDict(), threading.Lock()
        self.nbytes = 0
        if sizeof is not None:  # the bytes a value holds, for values that are not tensors (e.g. a task vector)
            self._size = sizeof

    @staticmethod
    def _size(value) -> int:
        # a tensor counts its bytes (duck-typed, so this module imports no tensor library); anything else nothing
        numel, element_size = getattr(value, "numel", None), getattr(value, "element_size", None)
        return numel() * element_size() if callable(numel) and callable(element_size) else 0

    def get(self, key):
        with self._lock:
            if key in self._d:
                self._d.move_to_end(key)
                return self._d[key]
        return None

    def put(self, key, value):
        with self._lock:
            if key in self._d:
                self.nbytes -= self._size(self._d[key])
            self._d[key] = value
            self._d.move_to_end(key)
            self.nbytes += self._size(value)
            while len(self._d) > self.maxsize or (self.max_bytes is not None and self.nbytes > self.max_bytes
                                                  and len(self._d) > 1):
                self.nbytes -= self._size(self._d.popitem(last=False)[1])
        return value

    def __len__(self) -> int:
        return len(self._d)
