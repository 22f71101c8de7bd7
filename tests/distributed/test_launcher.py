"""launch: one process runs fn in place; a failing rank's error reaches the parent naming the rank; device
checks and PipelineWorkers' device rule are one-line errors."""

from __future__ import annotations

import pytest
import torch

from fastdit.distributed import ParallelConfig, launch
from fastdit.distributed.launcher import check_devices
from fastdit.distributed.pipeline import PipelineWorkers


def _rank_and_world(groups, tag: str):
    return (tag, groups.rank, groups.config.world_size, str(groups.device))


def _fail_on_rank_1(groups):
    if groups.rank == 1:
        raise ValueError("rank one refuses")
    return "rank 0 done"


def test_one_process_runs_in_place():
    assert launch(_rank_and_world, ParallelConfig(), "x", device_type="cpu") == ("x", 0, 1, "cpu")


def test_failing_rank_is_named_in_the_parent():
    with pytest.raises(RuntimeError, match=r"(?s)launch: rank 1 failed:.*ValueError: rank one refuses"):
        launch(_fail_on_rank_1, ParallelConfig(2, 2, 1), device_type="cpu", timeout_s=120)


@pytest.mark.skipif(torch.cuda.device_count() >= 8, reason="needs fewer than 8 visible GPUs")
def test_more_gpus_than_visible_is_one_line():
    have = torch.cuda.device_count()
    with pytest.raises(ValueError, match=rf"^launch: num_gpus=8 but {have} CUDA devices are visible; allowed: 1..{have}$"):
        check_devices(ParallelConfig(8, 8, 1), "cuda")
    with pytest.raises(ValueError, match=r"device_type='tpu'; allowed: 'cuda', 'cpu'"):
        check_devices(ParallelConfig(), "tpu")


def test_pipeline_workers_device_rules():
    with pytest.raises(ValueError, match=r"device='cuda:1' with num_gpus=2: rank r runs on cuda:r"):
        PipelineWorkers(ParallelConfig(2, 2, 1), "flux-tiny", device="cuda:1")
    with pytest.raises(ValueError, match=r"device='meta' is not allowed for PipelineWorkers; allowed: cpu, cuda, cuda:N"):
        PipelineWorkers(ParallelConfig(), "flux-tiny", device="meta")


def test_ranks_stop_when_their_parent_is_gone():
    import os
    import queue as queue_mod

    from fastdit.distributed.pipeline import _next_request

    requests = queue_mod.Queue()
    requests.put("a request")
    assert _next_request(requests, os.getppid()) == "a request"
    # the parent pid a rank remembered is no longer its parent (the server worker was killed): stop
    assert _next_request(requests, os.getppid() + 1) is None
