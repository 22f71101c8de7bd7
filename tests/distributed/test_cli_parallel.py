"""python -m fastdit.generate with --num-gpus 2 on the CPU (2 gloo processes): the same PNG as one process (flux-tiny,
ring 2) and the same MP4 frames (wan-tiny, CFG-parallel); bad degrees end with exit status 2 and one line."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fastdit.generate import main

av = pytest.importorskip("av")  # the video extra (the GPU machine has none; these tests are CPU tests)

FLUX = ["--model-path", "flux-tiny", "--load-format", "dummy", "--prompt", "a red fox", "--height", "64", "--width", "64",
        "--num-inference-steps", "2", "--seed", "1", "--device", "cpu"]
WAN = ["--model-path", "wan-tiny", "--load-format", "dummy", "--prompt", "a red fox", "--height", "64", "--width", "64",
       "--num-frames", "5", "--num-inference-steps", "2", "--seed", "1", "--device", "cpu"]


def _frames(path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)]).astype(np.int16)


def test_two_processes_write_what_one_writes(tmp_path, capsys):
    assert main([*FLUX, "--output-path", str(tmp_path / "one")]) == 0
    assert main([*FLUX, "--output-path", str(tmp_path / "two"), "--num-gpus", "2", "--ring-degree", "2"]) == 0
    one, two = (np.asarray(Image.open(next((tmp_path / d).glob("*.png")))).astype(np.int16) for d in ("one", "two"))
    assert one.shape == two.shape == (64, 64, 3) and np.abs(one - two).max() <= 1
    assert main([*WAN, "--output-path", str(tmp_path / "w1")]) == 0
    assert main([*WAN, "--output-path", str(tmp_path / "w2"), "--num-gpus", "2", "--enable-cfg-parallel"]) == 0
    one, two = (_frames(next((tmp_path / d).glob("*.mp4"))) for d in ("w1", "w2"))
    assert one.shape == two.shape == (5, 64, 64, 3) and np.abs(one - two).max() <= 1


@pytest.mark.parametrize("flags, message", [
    (["--num-gpus", "2", "--ulysses-degree", "4"],
     "ulysses_degree * ring_degree * cfg = 4 * 1 * 1 = 4 must equal num_gpus=2; with num_gpus=2 the allowed "
     "(ulysses, ring) pairs are [(1, 2), (2, 1)]"),
    (["--num-gpus", "3", "--enable-cfg-parallel"], "allowed (ulysses, ring) pairs are none (num_gpus must be even)"),
    (["--num-gpus", "4", "--tp-size", "3"], "tp_size=3 must divide num_gpus=4 (text-encoder groups of tp_size "
     "consecutive ranks); allowed tp sizes: [1, 2, 4]"),
    (["--num-gpus", "0"], "num_gpus=0 must be an integer >= 1"),
])
def test_bad_degrees_are_one_line(flags, message, capsys):
    assert main([*FLUX, *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
