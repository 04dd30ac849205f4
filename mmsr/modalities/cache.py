"""A bounded LRU cache of extractor results, keyed by (image content, extractor, settings, user map).

Editing a caption, a temperature or the guidance never re-runs an extractor: only the image, the
user's map, the extractor's own settings or ``upscaled`` change the key.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
from PIL import Image

from .base import ModalityResult


def content_digest(value: Any) -> str:
    """A short hash of an image, array or string by content (mode, shape and bytes)."""
    h = hashlib.blake2b(digest_size=16)
    if isinstance(value, Image.Image):
        h.update(f"{value.mode}{value.size}".encode())
        h.update(value.tobytes())
    elif isinstance(value, np.ndarray):
        h.update(f"{value.dtype}{value.shape}".encode())
        h.update(np.ascontiguousarray(value).tobytes())
    else:
        h.update(repr(value).encode())
    return h.hexdigest()


def cache_key(
    name: str,
    settings: dict,
    image: Image.Image,
    user_map: Any = None,
    upscaled: bool = False,
) -> str:
    """Key of one extraction: what was extracted, how, and from what."""
    parts = [
        name,
        json.dumps(settings, sort_keys=True, default=str),
        content_digest(image),
    ]
    parts += [content_digest(user_map) if user_map is not None else "-", str(upscaled)]
    return "|".join(parts)


def result_nbytes(result: ModalityResult) -> int:
    """Approximate memory held by a result (map pixels plus raw array or text)."""
    size = len(result.text or "")
    if result.map is not None:
        size += result.map.width * result.map.height * len(result.map.getbands())
    if isinstance(result.raw, np.ndarray):
        return size + result.raw.nbytes
    return size + len(str(result.raw or ""))


class ExtractorCache:
    """LRU of :class:`ModalityResult` bounded by ``max_entries`` and ``max_bytes``.

    ``hits`` and ``misses`` count lookups. Absent results are not stored, so a transient problem
    is retried next time. Safe to share between threads (app requests).
    """

    def __init__(self, max_entries: int = 64, max_bytes: int = 512 * 2**20):
        if max_entries < 1 or max_bytes < 1:
            raise ValueError("ExtractorCache needs max_entries >= 1 and max_bytes >= 1")
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self.hits = self.misses = self.nbytes = 0
        self._items: OrderedDict[str, tuple[ModalityResult, int]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.nbytes = 0

    def get(self, key: str) -> ModalityResult | None:
        """A copy of the cached result (marked ``extras["cached"]``), or ``None``."""
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self.hits += 1
            self._items.move_to_end(key)
        return replace(item[0], extras={**item[0].extras, "cached": True})

    def put(self, key: str, result: ModalityResult) -> None:
        """Store ``result``, evicting the least recently used entries beyond the bounds."""
        size = result_nbytes(result)
        with self._lock:
            if key in self._items:
                self.nbytes -= self._items.pop(key)[1]
            if size > self.max_bytes:
                return
            self._items[key] = (result, size)
            self.nbytes += size
            while len(self._items) > self.max_entries or self.nbytes > self.max_bytes:
                self.nbytes -= self._items.popitem(last=False)[1][1]

    def get_or_compute(self, key: str, compute: Callable[[], ModalityResult]) -> ModalityResult:
        """The cached result for ``key``, else ``compute()`` (stored when it is available).

        The computation runs outside the lock: two threads may both compute a new key once.
        """
        cached = self.get(key)
        if cached is not None:
            return cached
        result = compute()
        if result.available:
            self.put(key, result)
        return replace(result, extras=dict(result.extras))
