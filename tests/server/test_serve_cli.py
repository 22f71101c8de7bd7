"""python -m fastdit.serve: a bad flag or a model that cannot load ends with one line and a non-zero status."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fastdit.serve import build_parser, config_from_args


def serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fastdit.serve", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, match", [
    (["--port", "30000"], "the following arguments are required: --model-path"),
    (["--model-path", "flux-tiny", "--max-queue", "0"], "max_queue=0 is not allowed"),
    (["--model-path", "flux-tiny", "--max-batch-size", "x"], "invalid int value: 'x'"),
    (["--model-path", "flux-tiny", "--port", "70000"], "port=70000 is not allowed"),
    (["--model-path", "flux-tiny", "--result-ttl-s", "0"], "result_ttl_s=0.0 is not allowed"),
    (["--model-path", "flux-tiny", "--api-key", ""], "api_key='' is not allowed"),
    (["--model-path", "flux-tiny", "--load-format", "pt"], "invalid choice: 'pt'"),
    (["--model-path", "flux-tiny", "--dtype", "int8"], "invalid choice: 'int8'"),
])
def test_bad_flags_are_one_line(args, match):
    result = serve(*args)
    assert result.returncode == 2
    assert result.stdout == "" and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("fastdit.serve: error: ") and match in result.stderr


def test_a_model_that_cannot_load_is_one_line_and_exit_1():
    result = serve("--model-path", "no-such-model-xyz", "--load-format", "dummy", "--device", "cpu", "--port", "1")
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("fastdit.serve: error: loading 'no-such-model-xyz' failed: ValueError:") and "Traceback" not in result.stderr


def test_flags_become_the_config():
    args = build_parser().parse_args(["--model-path", "flux-tiny", "--max-queue", "8", "--max-pixels", "4096",
                                      "--api-key", "k", "--load-format", "dummy", "--dtype", "float32"])
    config = config_from_args(args)
    assert (config.host, config.port, config.max_queue, config.max_pixels, config.api_key) == ("127.0.0.1", 30000, 8, 4096, "k")
    assert (config.worker.model_path, config.worker.load_format, config.worker.dtype) == ("flux-tiny", "dummy", "float32")
