"""ResultStore: stored bytes come back until their TTL passes, then they are gone (clock injected, no sleeping);
over its byte budget the oldest go first."""

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


def test_over_the_byte_budget_the_oldest_go_first():
    store = ResultStore(ttl_s=60.0, max_bytes=10, clock=Clock())
    a, b = store.put(b"aaaa", "image/png"), store.put(b"bbbb", "image/png")
    c = store.put(b"cccc", "image/png")  # 12 bytes would not fit: a goes
    assert store.get(a) is None and store.get(b).data == b"bbbb" and store.total_bytes == 8
    store.put(b"dd", "image/png")  # exactly 10: nothing goes
    assert store.get(b) is not None and store.total_bytes == 10
    big = store.put(b"x" * 25, "image/png")  # larger than the budget: kept alone
    assert len(store) == 1 and store.get(big) is not None and store.get(c) is None and store.total_bytes == 25
    store.put(b"v1", "video/mp4", key="video_k")
    store.put(b"v22", "video/mp4", key="video_k")  # the same key again replaces, and counts once
    assert store.get("video_k").data == b"v22" and store.total_bytes == 3


def test_max_bytes_must_be_positive():
    with pytest.raises(ValueError, match="max_bytes=0 is not allowed"):
        ResultStore(ttl_s=1.0, max_bytes=0)
