"""Wan VAE parity with diffusers' AutoencoderKLWan: decode and encode, with and without tiling, fp32."""

from __future__ import annotations

import pytest
import torch

from fastdit.loader.weights import load_state_dict, load_weights, read_config
from fastdit.models.vaes.autoencoder_kl_wan import AutoencoderKLWan, WanVAEConfig

diffusers = pytest.importorskip("diffusers")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A tiny random diffusers VAE saved to disk, and ours loaded from that folder."""
    folder = tmp_path_factory.mktemp("wan_vae")
    torch.manual_seed(0)
    ref = diffusers.AutoencoderKLWan(
        base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
        latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 0.5, 2.0, 1.0],
    ).eval()
    with torch.no_grad():  # move gammas and biases off their init values so that every weight matters
        for p in ref.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ref.save_pretrained(folder)
    ours = AutoencoderKLWan(WanVAEConfig.from_dict(read_config(folder)))
    load_weights(ours, load_state_dict(folder), "vae")
    return ref, ours.eval()


@pytest.fixture(autouse=True)
def _no_tiling(pair):
    ref, ours = pair
    ref.use_tiling = ours.use_tiling = False


def test_decode_matches_diffusers_in_any_chunking(pair):
    ref, ours = pair
    z = torch.randn(2, 4, 3, 4, 5, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = ref.decode(z).sample
        got = ours.decode(z)
        got_chunked = ours.decode(z, chunk_frames=2)  # the feature cache makes chunking invisible
    assert got.shape == expected.shape == (2, 3, 9, 32, 40)
    assert _rel(got, expected) <= 1e-4
    assert _rel(got_chunked, expected) <= 1e-4


def test_encode_matches_diffusers(pair):
    ref, ours = pair
    x = torch.rand(1, 3, 9, 40, 48, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        expected = ref.encode(x).latent_dist.mode()
        got = ours.encode(x)
    assert got.shape == expected.shape == (1, 4, 3, 5, 6)
    assert _rel(got, expected) <= 1e-4


def test_tiled_decode_and_encode_match_diffusers(pair):
    ref, ours = pair
    g = torch.Generator().manual_seed(3)
    z = torch.randn(1, 4, 2, 7, 9, generator=g)  # 56x72 pixels: 3x4 tiles of 32 with stride 16
    x = torch.rand(1, 3, 5, 56, 72, generator=g) * 2 - 1
    with torch.no_grad():
        untiled = ours.decode(z)
        ref.enable_tiling(32, 32, 16, 16)
        ours.enable_tiling(32, 16)
        expected_dec, got_dec = ref.decode(z).sample, ours.decode(z)
        expected_enc, got_enc = ref.encode(x).latent_dist.mode(), ours.encode(x)
    assert got_dec.shape == (1, 3, 5, 56, 72) and got_enc.shape == (1, 4, 2, 7, 9)
    assert _rel(got_dec, expected_dec) <= 1e-4
    assert _rel(got_enc, expected_enc) <= 1e-4
    assert _rel(got_dec, untiled) > 1e-3  # tiling really ran (seams blended, not a whole-frame pass)


@pytest.mark.parametrize("channels_last", [False, True], ids=["ncdhw", "ndhwc"])
def test_causal_conv_silu_into_the_padded_buffer(channels_last):
    """conv(silu(x)) with the activation written into the time-padded buffer == conv(cat(prev | zeros, silu(x)))
    chunk by chunk, in either layout; the cached tail is the last 2 activated frames; odd sizes."""
    import torch.nn.functional as F

    from fastdit.models.vaes.autoencoder_kl_wan import CausalConv3d

    torch.manual_seed(2)
    conv = CausalConv3d(5, 7, 3, padding=1)
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    if channels_last:
        conv.weight.data = conv.weight.data.contiguous(memory_format=fmt)
        conv.channels_last = True
    x = torch.randn(2, 5, 4, 9, 11).contiguous(memory_format=fmt)
    stream, outs = {}, []
    with torch.no_grad():
        for chunk in (x[:, :, :1], x[:, :, 1:4]):
            outs.append(conv(chunk.contiguous(memory_format=fmt), stream, silu=True))
        assert torch.equal(stream[conv], F.silu(x[:, :, 2:4]))
        ref = F.conv3d(F.pad(F.silu(x), (0, 0, 0, 0, 2, 0)), conv.weight, conv.bias, padding=(0, 1, 1))
        got = torch.cat(outs, dim=2)
    assert got.shape == ref.shape == (2, 7, 4, 9, 11)
    assert _rel(got, ref) <= 1e-6
    assert got.is_contiguous(memory_format=fmt)


def test_cudnn_benchmark_is_scoped_to_encode_and_decode(pair, monkeypatch):
    """cudnn_benchmark turns cuDNN's benchmark mode on inside decode/encode only; the flag is restored after,
    also when the pass raises."""
    _, ours = pair
    seen = []
    decoder_forward = ours.decoder.forward
    monkeypatch.setattr(ours.decoder, "forward", lambda x, s: seen.append(torch.backends.cudnn.benchmark) or decoder_forward(x, s))
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    z = torch.randn(1, 4, 2, 3, 5, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        ours.decode(z)
        ours.cudnn_benchmark = True
        try:
            ours.decode(z)
            assert not torch.backends.cudnn.benchmark
            with pytest.raises(ValueError, match="needs T = 4k\\+1"):
                ours.encode(torch.randn(1, 3, 2, 16, 16))
            with pytest.raises(RuntimeError):
                ours.decode(torch.randn(1, 5, 2, 3, 5))  # 5 channels: post_quant_conv raises inside the scope
            assert not torch.backends.cudnn.benchmark
        finally:
            ours.cudnn_benchmark = False
    assert seen == [False, False, True, True]  # decoder passes: 2 chunks per decode
    assert not torch.backends.cudnn.benchmark


def test_channels_last_decode_and_encode_match_diffusers(pair, monkeypatch):
    """NDHWC activations: convs on channels-last weights, channel norms (each followed by SiLU in the residual
    blocks and heads) through the fused ops.rms_norm_silu, conv1's bias folded into norm2's pre_bias and conv2's
    into the residual add (ops.add_bias_residual)."""
    from fastdit import ops

    ref, ours = pair
    calls = []
    rms_norm_silu, add_bias_residual = ops.rms_norm_silu, ops.add_bias_residual
    residual_adds = []

    def counted(x, w, eps, pre_bias=None, out=None, backend="auto"):
        calls.append((x.shape, pre_bias is not None))
        return rms_norm_silu(x, w, eps, pre_bias=pre_bias, out=out, backend=backend)

    def counted_add(y, h, b, out=None, backend="auto"):
        residual_adds.append(y.shape)
        return add_bias_residual(y, h, b, out=out, backend=backend)

    monkeypatch.setattr(ops, "rms_norm_silu", counted)
    monkeypatch.setattr(ops, "add_bias_residual", counted_add)
    g = torch.Generator().manual_seed(4)
    z = torch.randn(1, 4, 3, 5, 7, generator=g)
    x = torch.rand(1, 3, 5, 40, 48, generator=g) * 2 - 1
    ours.set_channels_last(True)
    try:
        assert ours.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last_3d)
        with torch.no_grad():
            got_dec, got_enc = ours.decode(z, chunk_frames=2), ours.encode(x)
            expected_dec, expected_enc = ref.decode(z).sample, ref.encode(x).latent_dist.mode()
    finally:
        ours.set_channels_last(False)
    assert not ours.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert got_dec.shape == expected_dec.shape == (1, 3, 9, 40, 56)
    assert _rel(got_dec, expected_dec) <= 1e-4
    assert _rel(got_enc, expected_enc) <= 1e-4
    norms = sum(isinstance(m, type(ours.decoder.norm_out)) and m.gamma.dim() == 4 for m in ours.modules())
    assert len(calls) >= norms  # every video norm of the decode and encode passes took the fused path
    assert all(shape[-1] in (8, 16) for shape, _ in calls)  # over channels (the last dim of the NDHWC view)
    resblocks = sum(type(m).__name__ == "ResidualBlock" for m in ours.modules())
    assert sum(folded for _, folded in calls) >= resblocks  # every residual block's norm2 took conv1's bias
    assert len(residual_adds) >= resblocks  # ... and its residual add conv2's (and the shortcut's)


def test_bad_inputs_are_one_line_errors(pair):
    _, ours = pair
    with pytest.raises(ValueError, match="needs T = 4k\\+1"):
        ours.encode(torch.zeros(1, 3, 4, 16, 16))
    with pytest.raises(ValueError, match="chunk_frames=0 must be >= 1"):
        ours.decode(torch.zeros(1, 4, 1, 2, 2), chunk_frames=0)
    with pytest.raises(ValueError, match="multiples of 8"):
        ours.enable_tiling(30, 16)
    with pytest.raises(ValueError, match="only the Wan2.1 VAE"):
        WanVAEConfig.from_dict({"is_residual": True})
    with pytest.raises(ValueError, match="unknown AutoencoderKLWan config keys \\['foo'\\]"):
        WanVAEConfig.from_dict({"foo": 1})


def test_full_size_config_param_count():
    with torch.device("meta"):
        n = sum(p.numel() for p in AutoencoderKLWan(WanVAEConfig()).parameters())
    assert 126e6 < n < 128e6  # Wan2.1 VAE: 127M parameters


@pytest.mark.gpu
def test_channels_last_bf16_on_gpu_matches_diffusers():
    """The GPU layout (NDHWC convs, fused CUDA rms_norm over channels) in bf16 against diffusers' bf16 VAE."""
    from fastdit.models.vaes.autoencoder_kl_wan import load_autoencoder_kl_wan

    config = WanVAEConfig(base_dim=32, num_res_blocks=1)
    ours = load_autoencoder_kl_wan(config, None, torch.bfloat16, "cuda", kernel_backend="auto")
    with torch.no_grad():  # norm scales and biases off their 1 / 0 init, so every parameter matters
        for p in ours.parameters():
            if p.dim() == 1 or p.shape[1:].numel() == 1:
                p.add_(0.1 * torch.randn_like(p))
    ref = diffusers.AutoencoderKLWan(base_dim=32, num_res_blocks=1)
    ref.load_state_dict(ours.state_dict())
    ref = ref.to("cuda", torch.bfloat16).eval()
    ours.set_channels_last(True)
    g = torch.Generator("cuda").manual_seed(5)
    z = torch.randn(1, 16, 4, 30, 52, generator=g, device="cuda").bfloat16()
    x = (torch.rand(1, 3, 9, 64, 96, generator=g, device="cuda") * 2 - 1).bfloat16()
    with torch.no_grad():
        got_dec, expected_dec = ours.decode(z), ref.decode(z).sample
        got_enc, expected_enc = ours.encode(x), ref.encode(x).latent_dist.mode()
    assert got_dec.shape == expected_dec.shape == (1, 3, 13, 240, 416)
    assert got_enc.shape == expected_enc.shape == (1, 16, 3, 8, 12)
    assert _rel(got_dec, expected_dec) <= 2e-2
    assert _rel(got_enc, expected_enc) <= 2e-2
