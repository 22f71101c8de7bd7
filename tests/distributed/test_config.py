"""ParallelConfig: degrees that multiply out, flag defaults, and one-line errors naming the numbers."""

from __future__ import annotations

import argparse

import pytest

from fastdit.distributed.config import ParallelConfig, add_parallel_flags, config_from_flags


def _parse(*argv: str) -> ParallelConfig:
    parser = argparse.ArgumentParser()
    add_parallel_flags(parser)
    return config_from_flags(parser.parse_args(list(argv)))


def test_flag_defaults_fill_the_gpus():
    assert _parse() == ParallelConfig(1, 1, 1, False, 1)
    assert _parse("--num-gpus", "4") == ParallelConfig(4, 4, 1)
    assert _parse("--num-gpus", "4", "--ring-degree", "2") == ParallelConfig(4, 2, 2)
    assert _parse("--num-gpus", "4", "--ulysses-degree", "1") == ParallelConfig(4, 1, 4)
    assert _parse("--num-gpus", "8", "--enable-cfg-parallel", "--ring-degree", "2") == ParallelConfig(8, 2, 2, True)


def test_rank_layout_is_cfg_ring_ulysses():
    config = ParallelConfig(8, 2, 2, True)
    coords = [config.rank_coords(r) for r in range(8)]
    assert coords[:4] == [(0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1)] and coords[4] == (1, 0, 0)
    assert all(config.rank_of(*c) == r for r, c in enumerate(coords))


@pytest.mark.parametrize(
    "argv, match",
    [
        (("--num-gpus", "4", "--ulysses-degree", "3"),
         r"3 \* 1 \* 1 = 3 must equal num_gpus=4; .* allowed \(ulysses, ring\) pairs are \[\(1, 4\), \(2, 2\), \(4, 1\)\]"),
        (("--num-gpus", "3", "--enable-cfg-parallel"), r"none \(num_gpus must be even\)"),
        (("--num-gpus", "2", "--ulysses-degree", "2", "--ring-degree", "2"), r"2 \* 2 \* 1 = 4 must equal num_gpus=2"),
        (("--num-gpus", "0",), r"num_gpus=0 must be an integer >= 1"),
        (("--num-gpus", "4", "--tp-size", "3"), r"tp_size=3 must divide num_gpus=4 .*; allowed tp sizes: \[1, 2, 4\]"),
    ],
)
def test_bad_degrees_are_one_line_errors(argv, match):
    with pytest.raises(ValueError, match=match) as err:
        _parse(*argv)
    assert "\n" not in str(err.value)


def test_model_checks():
    with pytest.raises(ValueError, match=r"ulysses_degree=5 must divide the model's 24 attention heads; allowed ulysses degrees: \[1, 2, 3, 4\]"):
        ParallelConfig(5, 5, 1).check_model(num_heads=24)
    with pytest.raises(ValueError, match="cfg_parallel needs a model with true classifier-free guidance"):
        ParallelConfig(2, 1, 1, True).check_model(num_heads=24, has_true_cfg=False)
