"""Results kept for GET .../content: bytes with a media type, each dropped `ttl_s` seconds after it was stored.

    store = ResultStore(ttl_s=3600)
    key = store.put(png_bytes, "image/png")          # "img_..." id, served at /v1/images/{id}/content
    item = store.get(key)                            # None once expired or deleted

Expired entries are swept on every put and get (O(entries), amortized: the store holds one entry per URL-format
image or finished video, which the TTL bounds). `clock` is injectable so tests can move time without sleeping.
Runs on the event loop only: no locking.
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
    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.time):
        if not ttl_s > 0:
            raise ValueError(f"ttl_s={ttl_s} is not allowed: it must be a number of seconds > 0")
        self.ttl_s = ttl_s
        self._clock = clock
        self._items: dict[str, StoredResult] = {}

    def put(self, data: bytes, media_type: str, prefix: str = "img", key: str | None = None) -> str:
        self._sweep()
        key = key or f"{prefix}_{secrets.token_hex(12)}"
        now = self._clock()
        self._items[key] = StoredResult(data, media_type, now, now + self.ttl_s)
        return key

    def get(self, key: str) -> StoredResult | None:
        self._sweep()
        return self._items.get(key)

    def delete(self, key: str) -> bool:
        return self._items.pop(key, None) is not None

    def __len__(self) -> int:
        self._sweep()
        return len(self._items)

    @property
    def total_bytes(self) -> int:
        return sum(len(item.data) for item in self._items.values())

    def _sweep(self) -> None:
        now = self._clock()
        expired = [key for key, item in self._items.items() if item.expires_at <= now]
        for key in expired:
            del self._items[key]
