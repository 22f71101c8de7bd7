"""Encoded outputs decode back to the same size and (for lossless PNG) the same pixels; MP4 has every frame."""

from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from fastdit.server import media
from fastdit.server.media import adler32_combine, encode_image, encode_mp4, encode_png

av = pytest.importorskip("av")  # absent on the GPU machine (which collects every test file); CI has them


def random_image(width=48, height=32, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.mark.parametrize("fmt, pil_format", [("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")])
def test_images_round_trip(fmt, pil_format):
    image = random_image()
    decoded = Image.open(io.BytesIO(encode_image(image, fmt, compression=95)))
    assert decoded.format == pil_format and decoded.size == (48, 32)
    if fmt == "png":
        assert np.array_equal(np.asarray(decoded), np.asarray(image))


@pytest.mark.parametrize("mode, shape", [("RGB", (33, 47, 3)), ("RGBA", (1, 5, 4)), ("L", (17, 3)), ("RGB", (2, 1, 3))])
def test_png_is_lossless_for_every_mode_and_odd_sizes(mode, shape):
    pixels = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    image = Image.fromarray(pixels, mode)
    decoded = Image.open(io.BytesIO(encode_png(image)))
    decoded.load()  # reads every chunk: a bad CRC or a truncated IDAT raises here
    assert (decoded.format, decoded.mode, decoded.size) == ("PNG", mode, (shape[1], shape[0]))
    assert np.array_equal(np.asarray(decoded), pixels)


def test_adler32_combine_equals_adler32_of_the_concatenation():
    rng = np.random.default_rng(3)
    for length1, length2 in [(0, 0), (0, 9), (9, 0), (1, 1), (65521, 3), (70000, 65522), *rng.integers(0, 200000, (6, 2))]:
        first, second = os.urandom(int(length1)), os.urandom(int(length2))
        assert adler32_combine(zlib.adler32(first), zlib.adler32(second), len(second)) == zlib.adler32(first + second)


def idat_of(png: bytes) -> bytes:
    """The IDAT chunk's data (this writer emits one) after checking its CRC."""
    at = png.index(b"IDAT") - 4
    (length,) = struct.unpack(">I", png[at:at + 4])
    data = png[at + 8:at + 8 + length]
    assert struct.unpack(">I", png[at + 8 + length:at + 12 + length])[0] == zlib.crc32(b"IDAT" + data)
    return data


@pytest.mark.parametrize("mode, shape, threads", [("RGB", (37, 29, 3), 4), ("RGBA", (3, 11, 4), 8), ("L", (101, 7), 3),
                                                  ("RGB", (1, 13, 3), 8)])
def test_png_deflated_in_pieces_on_threads_is_one_valid_zlib_stream(monkeypatch, mode, shape, threads):
    monkeypatch.setattr(media, "PNG_THREADS", threads)
    monkeypatch.setattr(media, "PNG_PIECE_BYTES", 16)  # tiny pieces: min(threads, rows) of them
    pixels = np.random.default_rng(sum(shape) + threads).integers(0, 256, shape, dtype=np.uint8)
    png = encode_png(Image.fromarray(pixels, mode))
    rows = pixels.reshape(shape[0], -1)
    up = np.concatenate([rows[:1], rows[1:] - rows[:-1]])  # uint8: mod 256
    expected = np.concatenate([np.full((shape[0], 1), 2, np.uint8), up], axis=1).tobytes()
    assert zlib.decompress(idat_of(png)) == expected  # zlib checks the combined adler32 here
    pieces = min(threads, shape[0])
    assert idat_of(png).count(b"\x00\x00\xff\xff") >= pieces - 1  # each piece but the last ends with a sync flush
    decoded = Image.open(io.BytesIO(png))
    decoded.load()
    assert np.array_equal(np.asarray(decoded), pixels)


def test_png_of_other_modes_is_rgb():
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (9, 7, 3), dtype=np.uint8)).convert("P")
    decoded = Image.open(io.BytesIO(encode_png(image)))
    assert decoded.mode == "RGB" and np.array_equal(np.asarray(decoded), np.asarray(image.convert("RGB")))


def test_png_compresses_a_smooth_image():
    # The Up filter turns a vertical gradient into rows of 0s and 1s; Huffman coding spends ~1 bit on each byte.
    gradient = np.repeat(np.linspace(0, 255, 256).astype(np.uint8)[:, None, None], 256, 1).repeat(3, 2)
    assert len(encode_png(Image.fromarray(gradient))) < gradient.nbytes / 7


def test_unknown_image_format():
    with pytest.raises(ValueError, match="output_format='gif' is not allowed"):
        encode_image(random_image(), "gif")


def test_mp4_has_every_frame_at_the_size_and_rate():
    frames = [random_image(seed=i) for i in range(5)] + [np.zeros((32, 48, 3), np.uint8)]
    data = encode_mp4(frames, fps=8)
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        decoded = list(container.decode(stream))
        assert (stream.codec_context.width, stream.codec_context.height) == (48, 32)
        assert stream.average_rate == 8
    assert len(decoded) == 6
    assert encode_mp4(frames, fps=8) == data  # one x264 thread: reproducible bytes


def test_mp4_rejects_bad_frames():
    with pytest.raises(ValueError, match="no frames"):
        encode_mp4([], fps=8)
    with pytest.raises(ValueError, match="need uint8"):
        encode_mp4([np.zeros((4, 4, 3), np.float32)], fps=8)
