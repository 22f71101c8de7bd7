"""Results kept for GET .../content: bytes with a media type, each dropped `ttl_s` seconds after it was stored, or
earlier, oldest first, when the store would hold more than `max_bytes` (a busy server must not grow without bound
within one TTL: 1,000 url-format 1024x1024 PNGs are 1-3 GB).

    store = ResultStore(ttl_s=3600, max_bytes=4 << 30)
    key = store.put(png_bytes, "image/png")          # "img_..." id, served at /v1/images/{id}/content
    item = store.get(key)                            # None once expired, evicted or deleted

Expired entries are swept on every put and get (O(entries), amortized: the store holds one entry per URL-format
image or finished video, which the TTL bounds). A single item larger than max_bytes is kept alone.
`clock` is injectable so tests can move time without sleeping. Runs on the event loop only: no locking.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class StoredResult:
    data: bytes
    media_type: str
    created_at: float
    expires_at: float


class ResultStore:
    def __init__(self, ttl_s: float, max_bytes: int | None = None, clock: Callable[[], float] = time.time):
        if not ttl_s > 0:
            raise ValueError(f"ttl_s={ttl_s} is not allowed: it must be a number of seconds > 0")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError(f"max_bytes={max_bytes} is not allowed: it must be a number of bytes >= 1, or None")
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self._clock = clock
        self._items: dict[str, StoredResult] = {}  # insertion order = age order: eviction pops from the front
        self._bytes = 0

    def put(self, data: bytes, media_type: str, prefix: str = "img", key: str | None = None) -> str:
        self._sweep()
        key = key or f"{prefix}_{secrets.token_hex(12)}"
        self.delete(key)
        if self.max_bytes is not None:
            while self._items and self._bytes + len(data) > self.max_bytes:
                self.delete(next(iter(self._items)))
        now = self._clock()
        self._items[key] = StoredResult(data, media_type, now, now + self.ttl_s)
        self._bytes += len(data)
        return key

    def get(self, key: str) -> StoredResult | None:
        self._sweep()
        return self._items.get(key)

    def delete(self, key: str) -> bool:
        item = self._items.pop(key, None)
        if item is not None:
            self._bytes -= len(item.data)
        return item is not None

    def __len__(self) -> int:
        self._sweep()
        return len(self._items)

    @property
    def total_bytes(self) -> int:
        return self._bytes

    def _sweep(self) -> None:
        now = self._clock()
        expired = [key for key, item in self._items.items() if item.expires_at <= now]
        for key in expired:
            self.delete(key)
