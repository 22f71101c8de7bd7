"""Which queued requests run together in one pipeline call.

Requests batch when everything that shapes the denoising loop is equal: kind, size, steps, guidance, true-CFG
scale, negative prompt, frame count and fps. Prompts and n may differ (a batch of prompts [p1]*n1 + [p2]*n2).
Requests that must run alone get a key of their own (the job id):
  - a request with an explicit seed: its images then equal the offline pipeline's for the same seed and n
    (a batch shares one noise generator, so batched outputs depend on their batch mates);
  - videos (a clip is already the whole GPU's work), and requests carrying a test fault.
`take_batch` is FIFO-fair: the oldest request always runs next; younger requests with its key join it while the
batch holds at most `max_images` images (sum of n). Right after a batch of k images the engine may hold the next
one for up to --batch-wait-ms until it has k again, so that closed-loop clients keep meeting (engine.py).
"""

from __future__ import annotations

from collections.abc import Hashable, MutableSequence, Sequence
from typing import Protocol

from fastdit.server.schemas import GenerationSpec


class Batchable(Protocol):
    id: str
    spec: GenerationSpec


def batch_key(job_id: str, spec: GenerationSpec) -> Hashable:
    if spec.kind != "image" or spec.seed is not None or spec.test_fault is not None:
        return ("alone", job_id)
    return (
        spec.kind, spec.width, spec.height, spec.num_inference_steps, spec.guidance_scale, spec.true_cfg_scale,
        spec.negative_prompt, spec.num_frames, spec.fps,
    )


def plan_batch(queue: Sequence[Batchable], max_images: int) -> list[Batchable]:
    """The batch `take_batch` would take now, leaving `queue` as it is ([] when empty).

    The head is always in it, even when its n alone exceeds max_images (validation bounds n by the same limit).
    """
    if not queue:
        return []
    head = queue[0]
    key = batch_key(head.id, head.spec)
    batch, images = [head], head.spec.n
    for job in list(queue)[1:]:
        if images + job.spec.n > max_images:
            continue
        if batch_key(job.id, job.spec) == key:
            batch.append(job)
            images += job.spec.n
    return batch


def batch_is_full(batch: Sequence[Batchable], max_images: int) -> bool:
    """No further request could join: the image budget is spent, or the head runs alone."""
    return not batch or sum(job.spec.n for job in batch) >= max_images or batch_key(batch[0].id, batch[0].spec)[0] == "alone"


def take_batch(queue: MutableSequence[Batchable], max_images: int) -> list[Batchable]:
    """Remove and return the next batch from `queue` (oldest first); [] when the queue is empty."""
    batch = plan_batch(queue, max_images)
    for job in batch:
        queue.remove(job)
    return batch
