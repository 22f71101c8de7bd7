"""Tensor-parallel text encoders (--tp-size) on 2 and 4 gloo processes: tiny random T5 and UMT5 encoders
sharded over T ranks give the unsharded output (fp32, rel err <= 1e-5) on every rank, with every sharded
weight held by exactly one rank of its group; flux-tiny and wan-tiny with --tp-size equal one process;
tp sizes that do not divide the GPUs or the heads are one-line errors."""

from __future__ import annotations

import argparse
import dataclasses

import pytest
import torch
import torch.distributed as dist
from test_pipeline import REQUEST, WAN_REQUEST, _max_over_ranks, _pipe, _rel
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

from fastdit.distributed import ParallelConfig, ParallelGroups, add_parallel_flags, config_from_flags, make_groups
from fastdit.distributed.tp import parallelize_text_encoders, shard_encoder
from fastdit.models.encoders.hf_loading import HFEncoder, dummy_encoder

# d_ff=37: the FFN splits unevenly (18 + 19 on 2 ranks); the gated-GELU FFN is T5-XXL's, ReLU is T5 v1.0's
TINY = dict(vocab_size=100, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
            relative_attention_max_distance=16, is_encoder_decoder=False, use_cache=False, dropout_rate=0.0)
ENCODERS = {
    "t5-gated": (T5EncoderModel, T5Config(**TINY, feed_forward_proj="gated-gelu")),
    "t5-relu": (T5EncoderModel, T5Config(**TINY, feed_forward_proj="relu")),
    "umt5-gated": (UMT5EncoderModel, UMT5Config(**TINY, feed_forward_proj="gated-gelu")),
}
SHARDED = ("q", "k", "v", "o", "wi", "wi_0", "wi_1", "wo", "relative_attention_bias")


def _replicated_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for name, p in model.named_parameters() if name.split(".")[-2] not in SHARDED)


def _encoders_on_rank(groups, world: int, tp_sizes: tuple[int, ...]) -> list[tuple]:
    """[(tp, encoder, max rel err over ranks, params summed over ranks == expected)]."""
    found = []
    for tp in tp_sizes:
        g = make_groups(ParallelConfig(world, world, 1, tp_size=tp), groups.rank, "cpu")
        for name, (model_cls, config) in ENCODERS.items():
            model = dummy_encoder(model_cls, config, torch.float32, "cpu", seed=3)
            gen = torch.Generator().manual_seed(5)
            ids = torch.randint(2, config.vocab_size, (2, 13), generator=gen)  # [B, L]
            mask = torch.ones_like(ids)
            mask[1, 9:] = 0  # the second prompt is padded: the bias must be sliced the way the mask is applied
            with torch.no_grad():
                want = model(ids, mask).last_hidden_state
                total, replicated = sum(p.numel() for p in model.parameters()), _replicated_params(model)
                shard_encoder(model, g.tp_rank, tp, g.tp_group)
                got = model(ids, mask).last_hidden_state
            local = torch.tensor([sum(p.numel() for p in model.parameters())])
            dist.all_reduce(local)  # summed over all world / tp groups
            exact_split = local.item() == world // tp * (total + (tp - 1) * replicated)
            found.append((tp, name, _max_over_ranks(_rel(got, want)), exact_split))
    return found


@pytest.mark.parametrize("world, tp_sizes", [(2, (2,)), (4, (2, 4))])
def test_sharded_encoders_equal_unsharded(gloo, world, tp_sizes):
    results = gloo.run(world, _encoders_on_rank, world, tp_sizes)
    assert {r[:2] for r in results} == {(tp, name) for tp in tp_sizes for name in ENCODERS}
    bad = [r for r in results if not (r[2] <= 1e-5 and r[3])]
    assert not bad, f"rel err > 1e-5 or weights not split exactly once: {bad}"


def _parse(*argv: str) -> ParallelConfig:
    parser = argparse.ArgumentParser()
    add_parallel_flags(parser)
    return config_from_flags(parser.parse_args(list(argv)))


def _pipelines_on_rank(groups, model: str, request, argv: tuple[str, ...]) -> tuple[float, int, int]:
    """(max rel err of the final latents over ranks, local T5/UMT5 heads of layer 0, the preset's heads)."""
    want = _pipe(model).run(request, show_progress=False).latents
    config = _parse(*argv)
    pipe = _pipe(model)
    from fastdit.distributed.pipeline import parallelize_pipeline

    parallelize_pipeline(pipe, make_groups(config, groups.rank, "cpu"))
    encoder = pipe.recipe.components.text_encoder_2 if model.startswith("flux") else pipe.recipe.components.text_encoder
    heads = encoder.model.encoder.block[0].layer[0].SelfAttention.n_heads
    rel = _rel(pipe.run(request, show_progress=False).latents, want)
    return _max_over_ranks(rel), heads, encoder.model.config.num_heads


@pytest.mark.parametrize("world, model, argv", [
    (2, "flux-tiny", ("--num-gpus", "2", "--tp-size", "2")),
    (2, "wan-tiny", ("--num-gpus", "2", "--tp-size", "2", "--enable-cfg-parallel")),
    (4, "flux-tiny", ("--num-gpus", "4", "--ring-degree", "2", "--tp-size", "4")),
])
def test_pipeline_with_tp_equals_one_process(gloo, world, model, argv):
    request = REQUEST if model.startswith("flux") else WAN_REQUEST
    rel, local_heads, heads = gloo.run(world, _pipelines_on_rank, model, request, argv)
    tp = int(argv[argv.index("--tp-size") + 1])
    assert local_heads == heads // tp and rel <= 1e-5


@pytest.mark.parametrize("argv, match", [
    (("--num-gpus", "4", "--tp-size", "3"), r"tp_size=3 must divide num_gpus=4 .*; allowed tp sizes: \[1, 2, 4\]"),
    (("--num-gpus", "2", "--tp-size", "4"), r"tp_size=4 must divide num_gpus=2 .*; allowed tp sizes: \[1, 2\]"),
    (("--num-gpus", "2", "--tp-size", "0"), r"tp_size=0 must be an integer >= 1"),
])
def test_bad_tp_sizes_are_one_line_errors(argv, match):
    with pytest.raises(ValueError, match=match) as err:
        _parse(*argv)
    assert "\n" not in str(err.value)


@dataclasses.dataclass
class _Components:
    text_encoder_2: HFEncoder


def test_tp_size_must_divide_the_encoder_heads():
    config = ParallelConfig(4, 4, 1, tp_size=4)
    six_heads = T5Config(**{**TINY, "num_heads": 6})
    components = _Components(HFEncoder(dummy_encoder(T5EncoderModel, six_heads, torch.float32, "cpu")))
    groups = ParallelGroups(config, 0, torch.device("cpu"), 0, 0, 0, None, None, None, None, (0,), tp_group=object())
    with pytest.raises(ValueError, match=r"tp_size=4 must divide the 6 attention heads of text_encoder_2 "
                                         r"\(T5EncoderModel\); allowed tp sizes with num_gpus=4: \[1, 2\]"):
        parallelize_text_encoders(components, groups)
    attn = components.text_encoder_2.model.encoder.block[0].layer[0].SelfAttention
    assert attn.n_heads == 6 and attn.q.weight.shape == (48, 32)  # refused before anything was sharded


def test_encoders_without_a_plan_are_refused():
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2))
    with pytest.raises(ValueError, match="CLIPTextModel has no TP plan; allowed: T5EncoderModel, UMT5EncoderModel"):
        shard_encoder(clip, 0, 2, None)
