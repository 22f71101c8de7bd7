"""The `fastdit` logger, and `log_once` for choices that are logged a single time per process."""

from __future__ import annotations

import logging

from fastdit import envs

_said: set[str] = set()


def get_logger(name: str = "fastdit") -> logging.Logger:
    logger = logging.getLogger(name)
    root = logging.getLogger("fastdit")
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[fastdit] %(message)s"))
        root.addHandler(handler)
        root.setLevel(envs.log_level().upper())
        root.propagate = False
    return logger


def log_once(message: str, level: int = logging.INFO) -> None:
    """Log `message` the first time it is seen in this process, never again."""
    if message in _said:
        return
    _said.add(message)
    get_logger().log(level, message)
