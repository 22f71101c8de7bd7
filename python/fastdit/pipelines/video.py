"""Writing generated videos as MP4 (H.264 through PyAV's libx264), and reading them back for checks.

    paths = save_videos(videos, SaveTarget("outputs"), prompt, seed, fps=16)    # outputs/<slug>_<seed>.mp4
    frames, fps = read_mp4(paths[0])                                          # uint8 [F, H, W, 3], frame rate

Frames are PIL images or uint8 arrays [H, W, 3] of even height and width (yuv420p halves the chroma planes).
The encoder runs with ONE thread: libx264's frame-threaded encode is not bit-reproducible, and a video made
twice from the same seed should be the same file. Names: `output_file_name` if given (".mp4" appended when
missing), else `<prompt slug>_<seed>`; `_<index>` is added before the extension when there are several.
"""

from __future__ import annotations

import os
from fractions import Fraction

import numpy as np
from PIL import Image

from fastdit.pipelines.save import SaveTarget, prompt_slug

CODEC = "libx264"
PIXEL_FORMAT = "yuv420p"  # what every player decodes
CRF = "18"  # visually lossless for generated content; libx264's default 23 smears fine texture


def _as_array(frame) -> np.ndarray:
    array = np.asarray(frame.convert("RGB") if isinstance(frame, Image.Image) else frame)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"video frame of dtype {array.dtype} and shape {array.shape}: need uint8 [H, W, 3]")
    return array


def _pyav():
    """PyAV (the "video" extra), imported on first use so that image-only installs load the video recipes."""
    try:
        import av
    except ImportError:
        raise RuntimeError("writing or reading MP4 needs PyAV: pip install 'fastdit[video]' (or pip install av)") from None
    return av


def write_mp4(frames: list, path: str, fps: int) -> None:
    """Encode `frames` (PIL images or uint8 [H, W, 3]) as H.264 MP4 at `fps` frames per second."""
    if not frames:
        raise ValueError(f"write_mp4({path!r}): no frames to write")
    if not isinstance(fps, int) or isinstance(fps, bool) or fps <= 0:
        raise ValueError(f"fps={fps!r} is not allowed: fps must be a positive integer")
    arrays = [_as_array(f) for f in frames]
    height, width = arrays[0].shape[:2]
    if height % 2 or width % 2:
        raise ValueError(f"video size {width}x{height} is not allowed: H.264 yuv420p needs even sides")
    av = _pyav()
    with av.open(path, mode="w", format="mp4") as container:
        stream = container.add_stream(CODEC, rate=Fraction(fps, 1), options={"crf": CRF})
        stream.width, stream.height, stream.pix_fmt = width, height, PIXEL_FORMAT
        stream.codec_context.thread_count = 1
        stream.codec_context.thread_type = "NONE"
        for array in arrays:
            if array.shape[:2] != (height, width):
                raise ValueError(f"video frame of size {array.shape[1]}x{array.shape[0]} in a {width}x{height} video")
            container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        container.mux(stream.encode(None))  # flush the encoder's delayed frames


def read_mp4(path: str) -> tuple[np.ndarray, float]:
    """Decode every frame of a video file: (uint8 [F, H, W, 3] RGB, frames per second)."""
    av = _pyav()
    with av.open(path) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        fps = float(stream.average_rate) if stream.average_rate else 0.0
    return np.stack(frames), fps


def video_file_names(target: SaveTarget, prompt: str, seed: int, count: int) -> list[str]:
    """The `count` .mp4 file names (no folder) for one run."""
    if target.output_file_name is not None:
        stem, ext = os.path.splitext(os.path.basename(target.output_file_name))
        if ext.lower() != ".mp4":
            stem = os.path.basename(target.output_file_name)
    else:
        stem = f"{prompt_slug(prompt)}_{seed}"
    return [stem + ".mp4"] if count == 1 else [f"{stem}_{i}.mp4" for i in range(count)]


def save_videos(videos: list[list], target: SaveTarget, prompt: str, seed: int, fps: int) -> list[str]:
    """Write each video (a list of frames) as MP4 under target.output_path (created if missing); return the paths."""
    os.makedirs(target.output_path, exist_ok=True)
    names = video_file_names(target, prompt, seed, len(videos))
    paths = [os.path.join(target.output_path, name) for name in names]
    for frames, path in zip(videos, paths):
        write_mp4(frames, path, fps)
    return paths
