"""Writing generated images as PNG files, and the names they get.

Names: `output_file_name` if given (".png" appended when missing), else `<prompt slug>_<seed>`; with more
than one image, `_<index>` is added before the extension: fox.png, or fox_0.png, fox_1.png, ...
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from PIL import Image

_SLUG_CHARS = re.compile(r"[^a-z0-9]+")
SLUG_MAX_CHARS = 48


@dataclass(frozen=True)
class SaveTarget:
    """Where the save stage writes: a folder, and an optional file name (without index)."""

    output_path: str
    output_file_name: str | None = None


def prompt_slug(prompt: str) -> str:
    """'A red fox, in the snow!' -> 'a-red-fox-in-the-snow' (at most SLUG_MAX_CHARS characters, never empty)."""
    slug = _SLUG_CHARS.sub("-", prompt.lower()).strip("-")[:SLUG_MAX_CHARS].rstrip("-")
    return slug or "image"


def file_names(target: SaveTarget, prompt: str, seed: int, count: int) -> list[str]:
    """The `count` file names (no folder) for one run."""
    if target.output_file_name is not None:
        stem, ext = os.path.splitext(os.path.basename(target.output_file_name))
        if ext.lower() != ".png":
            stem, ext = os.path.basename(target.output_file_name), ".png"
    else:
        stem, ext = f"{prompt_slug(prompt)}_{seed}", ".png"
    if count == 1:
        return [stem + ext]
    return [f"{stem}_{i}{ext}" for i in range(count)]


def save_images(images: list[Image.Image], target: SaveTarget, prompt: str, seed: int) -> list[str]:
    """Write `images` as PNG files under target.output_path (created if missing); return their paths."""
    os.makedirs(target.output_path, exist_ok=True)
    paths = [os.path.join(target.output_path, name) for name in file_names(target, prompt, seed, len(images))]
    for image, path in zip(images, paths):
        image.save(path, format="PNG")
    return paths
