"""Encoding generated pixels into the bytes the API returns: PNG/JPEG/WEBP images and H.264 MP4 clips.

Runs in the worker process, next to the pipeline, so the HTTP process only moves finished bytes.
PNG uses zlib level 1: on a 1024x1024 image it is several times faster than PIL's default level 6 for a file
about 10-20% larger, and encoding sits on every request's critical path.
MP4: libx264 through PyAV with one encoder thread (multi-threaded x264 is not bit-reproducible), yuv420p,
even width and height (H.264 4:2:0 needs them; odd sizes are cropped by one pixel).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp", "mp4": "video/mp4"}
DEFAULT_QUALITY = 90


def encode_image(image: Any, output_format: str, compression: int | None = None) -> bytes:
    """PIL image -> bytes. compression: 0..100 quality for jpeg/webp (OpenAI's output_compression); ignored for png."""
    buffer = io.BytesIO()
    if output_format == "png":
        image.save(buffer, format="PNG", compress_level=1)
    elif output_format in ("jpeg", "webp"):
        quality = DEFAULT_QUALITY if compression is None else compression
        image.convert("RGB").save(buffer, format=output_format.upper(), quality=quality)
    else:
        raise ValueError(f"output_format={output_format!r} is not allowed: use one of png, jpeg, webp")
    return buffer.getvalue()


def _as_rgb_array(frame: Any):
    import numpy as np

    if hasattr(frame, "convert"):  # a PIL image
        return np.asarray(frame.convert("RGB"))
    array = np.asarray(frame)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"a video frame must be a PIL image or a uint8 [H, W, 3] array, got {array.dtype} {array.shape}")
    return array


def encode_mp4(frames: Sequence[Any], fps: int) -> bytes:
    """Frames (PIL images or uint8 [H, W, 3] arrays, all one size) -> H.264 MP4 bytes at `fps`."""
    import av

    if not frames:
        raise ValueError("a video needs at least one frame, got 0")
    arrays = [_as_rgb_array(frame) for frame in frames]
    height, width = (arrays[0].shape[0] // 2) * 2, (arrays[0].shape[1] // 2) * 2
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.thread_count = 1
        stream.options = {"crf": "18"}
        for array in arrays:
            frame = av.VideoFrame.from_ndarray(array[:height, :width], format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()
