"""fastdit: a kernel-first inference engine for diffusion transformers.

    pipe = fastdit.Pipeline.from_pretrained("flux-tiny", load_format="dummy")
    images = pipe("a red fox in the snow", height=256, width=256)
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["Pipeline", "__version__"]


def __getattr__(name: str):
    # Imported lazily: `import fastdit` stays cheap for the server's HTTP process and the CLI's --help.
    if name == "Pipeline":
        from fastdit.pipelines.api import Pipeline

        return Pipeline
    raise AttributeError(f"module 'fastdit' has no attribute {name!r}")
