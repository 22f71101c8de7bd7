"""ResultStore: stored bytes come back until their TTL passes, then they are gone (clock injected, no sleeping)."""

from __future__ import annotations

import pytest

from fastdit.server.storage import ResultStore


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_items_expire_after_the_ttl_and_not_before():
    clock = Clock()
    store = ResultStore(ttl_s=10.0, clock=clock)
    first = store.put(b"one", "image/png")
    clock.now += 6
    second = store.put(b"two", "image/webp")
    assert first.startswith("img_") and first != second
    item = store.get(first)
    assert (item.data, item.media_type, item.expires_at) == (b"one", "image/png", 1010.0)
    clock.now += 3.999  # 9.999 s after the first put
    assert store.get(first) is not None and len(store) == 2
    clock.now += 0.001  # exactly the TTL: expired
    assert store.get(first) is None
    assert store.get(second).data == b"two" and len(store) == 1 and store.total_bytes == 3
    clock.now += 6
    assert store.get(second) is None and len(store) == 0


def test_delete_and_explicit_keys():
    store = ResultStore(ttl_s=5.0, clock=Clock())
    key = store.put(b"mp4", "video/mp4", key="video_abc")
    assert key == "video_abc" and store.get("video_abc").media_type == "video/mp4"
    assert store.delete("video_abc") is True and store.delete("video_abc") is False
    assert store.get("video_abc") is None


def test_ttl_must_be_positive():
    with pytest.raises(ValueError, match="ttl_s=0 is not allowed"):
        ResultStore(ttl_s=0)
