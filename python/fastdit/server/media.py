"""Encoding generated pixels into the bytes the API returns: PNG/JPEG/WEBP images and H.264 MP4 clips.

Runs in the worker process, next to the pipeline, so the HTTP process only moves finished bytes.
PNG: zlib level 1 with the Huffman-only strategy. On a 1024x1024 RGB image (this CPU, 2026-11-24) PIL's
default (level 6) took 537 ms, level 1 76 ms / 924 KB, level 1 + Huffman-only 73 ms / 640 KB (level 0: 43 ms
but 3.1 MB): encoding sits on every request's critical path, so it is part of the server's overhead.
MP4: the pipelines' writer (libx264 through PyAV, one encoder thread: multi-threaded x264 is not
bit-reproducible), into memory instead of a file.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Sequence
from typing import Any

MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp", "mp4": "video/mp4"}
DEFAULT_QUALITY = 90
Z_HUFFMAN_ONLY = zlib.Z_HUFFMAN_ONLY  # a zlib strategy: no LZ77 matching, entropy coding only


def encode_image(image: Any, output_format: str, compression: int | None = None) -> bytes:
    """PIL image -> bytes. compression: 0..100 quality for jpeg/webp (OpenAI's output_compression); ignored for png."""
    buffer = io.BytesIO()
    if output_format == "png":
        image.save(buffer, format="PNG", compress_level=1, compress_type=Z_HUFFMAN_ONLY)
    elif output_format in ("jpeg", "webp"):
        quality = DEFAULT_QUALITY if compression is None else compression
        image.convert("RGB").save(buffer, format=output_format.upper(), quality=quality)
    else:
        raise ValueError(f"output_format={output_format!r} is not allowed: use one of png, jpeg, webp")
    return buffer.getvalue()


def encode_mp4(frames: Sequence[Any], fps: int) -> bytes:
    """Frames (PIL images or uint8 [H, W, 3] arrays, all one even size) -> H.264 MP4 bytes at `fps`.

    The pipelines' own writer (pipelines/video.py: libx264, yuv420p, crf 18, one thread) writing into memory.
    """
    from fastdit.pipelines.video import write_mp4

    buffer = io.BytesIO()
    write_mp4(list(frames), buffer, fps)
    return buffer.getvalue()
