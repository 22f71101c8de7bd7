"""take_batch: FIFO head first, same-key followers up to the image budget, seeded/video/fault requests alone."""

from __future__ import annotations

from dataclasses import dataclass, replace

from fastdit.server.batching import batch_key, take_batch
from fastdit.server.schemas import GenerationSpec

BASE = GenerationSpec(kind="image", prompt="p", width=64, height=64, num_inference_steps=2)


@dataclass
class Item:
    id: str
    spec: GenerationSpec


def items(*specs):
    return [Item(str(i), spec) for i, spec in enumerate(specs)]


def ids(batch):
    return [item.id for item in batch]


def test_compatible_requests_batch_up_to_the_image_budget_in_fifo_order():
    queue = items(BASE, replace(BASE, n=2), replace(BASE, prompt="q"), replace(BASE, prompt="r"), BASE)
    assert ids(take_batch(queue, max_images=4)) == ["0", "1", "2"]  # 1 + 2 + 1 images
    assert ids(queue) == ["3", "4"]
    assert ids(take_batch(queue, max_images=4)) == ["3", "4"]
    assert queue == [] and take_batch(queue, max_images=4) == []


def test_requests_that_change_the_loop_do_not_batch():
    others = [replace(BASE, width=128), replace(BASE, num_inference_steps=3), replace(BASE, guidance_scale=1.0),
              replace(BASE, negative_prompt="blur"), replace(BASE, true_cfg_scale=2.0)]
    queue = items(BASE, *others, BASE)
    assert ids(take_batch(queue, max_images=8)) == ["0", "6"]
    assert len({batch_key("x", spec) for spec in others}) == len(others)


def test_an_item_too_big_for_the_rest_of_the_budget_is_skipped_not_blocking():
    queue = items(replace(BASE, n=3), replace(BASE, n=2), BASE)
    assert ids(take_batch(queue, max_images=4)) == ["0", "2"]
    assert ids(queue) == ["1"]


def test_seeded_video_and_fault_requests_run_alone():
    alone = [replace(BASE, seed=1), replace(BASE, kind="video", output_format="mp4"), replace(BASE, test_fault="raise")]
    for spec in alone:
        queue = items(spec, replace(spec, prompt="same otherwise"), BASE)
        assert ids(take_batch(queue, max_images=8)) == ["0"]
    # ...and a seeded request behind an unseeded head does not join it either.
    queue = items(BASE, replace(BASE, seed=1), BASE)
    assert ids(take_batch(queue, max_images=8)) == ["0", "2"]
