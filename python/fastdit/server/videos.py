"""Asynchronous video jobs (POST /v1/videos and friends), as OpenAI's Video object describes them.

    record = jobs.create(spec, engine_job)       # status "queued"
    ... the engine starts it ("in_progress"), then `finish` stores the MP4 ("completed") or the error ("failed").

A record and its MP4 expire --result-ttl-s after the job ended. Deleting a queued job takes it out of the queue;
deleting a running one drops its result when it arrives. Everything runs on the event loop.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from fastdit.server.errors import APIError
from fastdit.server.storage import ResultStore


@dataclass
class VideoRecord:
    id: str
    model: str
    prompt: str
    size: str
    seconds: str
    created_at: int = field(default_factory=lambda: int(time.time()))
    status: str = "queued"  # queued | in_progress | completed | failed
    completed_at: int | None = None
    expires_at: int | None = None
    error: dict[str, Any] | None = None
    job: Any = None  # the engine's Job while it is queued or running

    def to_json(self) -> dict[str, Any]:
        progress = 100 if self.status in ("completed", "failed") else 0
        return {
            "id": self.id, "object": "video", "model": self.model, "status": self.status, "progress": progress,
            "created_at": self.created_at, "completed_at": self.completed_at, "expires_at": self.expires_at,
            "prompt": self.prompt, "size": self.size, "seconds": self.seconds, "error": self.error,
            "remixed_from_video_id": None,
        }


class VideoJobs:
    def __init__(self, store: ResultStore, clock=time.time):
        self.store = store
        self._clock = clock
        self._records: dict[str, VideoRecord] = {}

    def create(self, model: str, prompt: str, size: str, seconds: str) -> VideoRecord:
        self._sweep()
        record = VideoRecord(id=f"video_{secrets.token_hex(12)}", model=model, prompt=prompt, size=size, seconds=seconds)
        self._records[record.id] = record
        return record

    def get(self, video_id: str) -> VideoRecord | None:
        self._sweep()
        return self._records.get(video_id)

    def list(self, after: str | None, limit: int, order: str) -> list[VideoRecord]:
        self._sweep()
        # Creation order is insertion order (created_at has 1 s resolution: ties are common, their order is not)
        records = list(self._records.values())[::-1 if order == "desc" else 1]
        if after is not None:
            ids = [r.id for r in records]
            records = records[ids.index(after) + 1:] if after in ids else []
        return records[:limit]

    def delete(self, video_id: str) -> VideoRecord | None:
        record = self._records.pop(video_id, None)
        if record is not None:
            self.store.delete(video_id)
        return record

    def finish(self, record: VideoRecord, outcome: dict[str, Any] | APIError) -> None:
        """Record the job's end: the MP4 into the store under the video's id, or the error."""
        now = self._clock()
        record.job = None
        record.completed_at = int(now)
        record.expires_at = int(now + self.store.ttl_s)
        if record.id not in self._records:  # deleted while it ran: nothing to keep
            return
        if isinstance(outcome, APIError):
            record.status = "failed"
            record.error = {"code": outcome.code or "generation_failed", "message": outcome.message}
            return
        self.store.put(outcome["items"][0], outcome["media_type"], key=record.id)
        record.size = outcome["size"]
        record.status = "completed"

    def _sweep(self) -> None:
        now = self._clock()
        for key in [k for k, r in self._records.items() if r.expires_at is not None and r.expires_at <= now]:
            del self._records[key]
