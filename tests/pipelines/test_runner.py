"""The runner times every stage in order, records one entry per denoising step, and writes the perf dump."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import pytest
import torch

from fastdit.pipelines.request import GenerationRequest, RunState
from fastdit.pipelines.runner import make_result, perf_dump, run_stages, timed_steps, write_perf_dump
from fastdit.pipelines.save import SaveTarget, file_names, prompt_slug


@dataclass
class _State(RunState):
    order: list[str] = field(default_factory=list)


def _sleepy(name: str, seconds: float):
    def stage(request, state):
        state.order.append(name)
        time.sleep(seconds)

    return stage


def test_stages_run_in_order_and_are_timed():
    stages = [("a", _sleepy("a", 0.0)), ("b", _sleepy("b", 0.03)), ("c", _sleepy("c", 0.0))]
    state = run_stages(stages, GenerationRequest(prompt="x"), _State(), torch.device("cpu"))
    assert state.order == ["a", "b", "c"]
    assert list(state.stages_ms) == ["a", "b", "c"]
    assert state.stages_ms["b"] >= 30.0
    assert state.stages_ms["a"] < state.stages_ms["b"]


def test_duplicate_stage_names_are_rejected():
    with pytest.raises(ValueError, match="stage names must be unique"):
        run_stages([("a", _sleepy("a", 0)), ("a", _sleepy("a", 0))], GenerationRequest(prompt="x"), _State(), "cpu")


def test_timed_steps_records_each_step(tmp_path):
    state = _State(show_progress=False)
    seen = []
    for i, t in timed_steps(state, torch.tensor([1000.0, 750.0, 500.0]), torch.device("cpu")):
        seen.append((i, float(t)))
        time.sleep(0.01 * (i + 1))
    assert seen == [(0, 1000.0), (1, 750.0), (2, 500.0)]
    assert [s["step"] for s in state.denoise_steps_ms] == [0, 1, 2]
    durations = [s["duration_ms"] for s in state.denoise_steps_ms]
    assert durations[0] >= 10.0 and durations[2] >= 30.0 and durations[2] > durations[0]

    state.stages_ms = {"denoise": 61.0, "decode": 2.0}
    request = GenerationRequest(prompt="x", height=32, width=48, num_inference_steps=3)
    dump = perf_dump(make_result(state), request, {"model": "flux-tiny"})
    path = tmp_path / "sub" / "perf.json"
    write_perf_dump(str(path), dump)
    loaded = json.loads(path.read_text())
    assert loaded["model"] == "flux-tiny" and loaded["height"] == 32 and loaded["width"] == 48
    assert loaded["stages_ms"] == {"denoise": 61.0, "decode": 2.0}
    assert loaded["total_ms"] == 63.0
    assert [s["step"] for s in loaded["denoise_steps_ms"]] == [0, 1, 2]


def test_file_names():
    assert prompt_slug("A red fox, in the snow!") == "a-red-fox-in-the-snow"
    assert prompt_slug("!!!") == "image"
    assert file_names(SaveTarget("out"), "A fox", 7, 1) == ["a-fox_7.png"]
    assert file_names(SaveTarget("out", "fox"), "A fox", 7, 2) == ["fox_0.png", "fox_1.png"]
    assert file_names(SaveTarget("out", "fox.PNG"), "A fox", 7, 1) == ["fox.PNG"]
    assert file_names(SaveTarget("out", "fox.v2"), "A fox", 7, 1) == ["fox.v2.png"]
