"""Every environment variable fastdit reads, in one place.

Each variable is paired with a command-line flag or an API argument; the flag wins. Read a variable
only through this module, so that `python -m fastdit.generate --help` and this file stay the whole list.

| variable                   | flag / argument          | meaning                                                   |
|----------------------------|--------------------------|-----------------------------------------------------------|
| FASTDIT_KERNEL_LIBRARY     | (none: a path)           | load the CUDA kernel library from this file               |
| FASTDIT_KERNEL_BACKEND     | --kernel-backend         | force the fused ops' backend: auto, cuda, triton, torch   |
| FASTDIT_ATTENTION_BACKEND  | --attention-backend      | force the attention backend (see layers/attention)        |
| FASTDIT_LOG_LEVEL          | (none)                   | logging level of the `fastdit` logger (default INFO)      |
| TRITON_INTERPRET           | (none; Triton's own)     | "1": Triton kernels run on the CPU interpreter (tests)    |
"""

from __future__ import annotations

import os


def _get(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def kernel_library_path() -> str | None:
    return _get("FASTDIT_KERNEL_LIBRARY")


def kernel_backend() -> str:
    return _get("FASTDIT_KERNEL_BACKEND", "auto")


def attention_backend() -> str:
    return _get("FASTDIT_ATTENTION_BACKEND", "auto")


def log_level() -> str:
    return _get("FASTDIT_LOG_LEVEL", "INFO")


def triton_interpret() -> bool:
    return _get("TRITON_INTERPRET", "0") == "1"
