"""A least-recently-used cache of loaded networks, bounded by their memory rather than their count.

The app keeps networks loaded between reruns and across sessions (the Grad-CAM page's PyTorch
models, the upload page's ONNX Runtime sessions). A count-based bound lets six resnet50-sized
models (~100 MB each, twice over when a model is both explained and classified) sit beside
torch's ~500 MB import, past what a 1-2.7 GB Streamlit Community Cloud box gives; six LeNets
would take 2 MB. This cache holds as many as fit in ``budget_bytes``.

Thread-safe: one cache serves every session. Two sessions asking for the same missing model load
it once (the second waits for the first); different models load in parallel. A model evicted
while a session still uses it stays alive until that session lets go of it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any


class ModelCache:
    """``get(key, load)``: the value cached under ``key``, else ``load()``'s ``(value, nbytes)``.

    After a load, the least recently used entries are dropped until the cached ``nbytes`` add up
    to at most ``budget_bytes``; the entry just loaded always stays, even alone over budget (a
    page that asked for it is about to use it). ``on_evict`` runs after entries were dropped,
    outside the lock (the app hands the freed memory back to the OS there).
    """

    def __init__(self, budget_bytes: int, *, on_evict: Callable[[], None] | None = None):
        if budget_bytes <= 0:
            raise ValueError(f"budget_bytes must be positive, not {budget_bytes}")
        self.budget_bytes = budget_bytes
        self._on_evict = on_evict
        self._entries: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[Hashable, threading.Lock] = {}

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._entries

    @property
    def nbytes(self) -> int:
        """What the cached entries take, by their loaders' count."""
        with self._lock:
            return sum(size for _, size in self._entries.values())

    def keys(self) -> list[Hashable]:
        """Cached keys, least recently used first."""
        with self._lock:
            return list(self._entries)

    def get(
        self, key: Hashable, load: Callable[[], tuple[Any, int]], *, expected_bytes: int = 0
    ) -> Any:
        """``expected_bytes``: what the load will take, known beforehand (a weights file's
        header): the least recently used entries go *before* it runs, so the new model is never
        built beside the ones it is about to replace: the cache's peak stays near its budget
        instead of budget + the new model + what building it takes."""
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key][0]
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:  # one load per key; other keys load meanwhile
            with self._lock:
                if key in self._entries:  # loaded by the session we waited for
                    self._entries.move_to_end(key)
                    return self._entries[key][0]
            if expected_bytes > 0:
                with self._lock:
                    made_room = self._shrink(keep=None, room=expected_bytes)
                self._release(made_room)
            try:
                value, nbytes = load()
            except BaseException:
                with self._lock:
                    self._loading.pop(key, None)
                raise
            with self._lock:  # cached before its key lock goes, so nobody loads it twice
                self._entries[key] = (value, int(nbytes))
                self._loading.pop(key, None)
                dropped = self._shrink(keep=key)
        self._release(dropped)
        return value

    def _release(self, dropped: list) -> None:
        """Let go of evicted values (the last references, unless a session still holds one),
        then run ``on_evict``; outside the lock."""
        if dropped:
            dropped.clear()
            if self._on_evict is not None:
                self._on_evict()

    def _shrink(self, keep: Hashable | None, room: int = 0) -> list:
        """Drop least recently used entries (never ``keep``) until ``room`` more bytes fit."""
        dropped = []
        total = sum(size for _, size in self._entries.values())
        for key in list(self._entries):
            if total + room <= self.budget_bytes:
                break
            if key == keep:
                continue
            value, size = self._entries.pop(key)
            dropped.append(value)
            total -= size
        return dropped
