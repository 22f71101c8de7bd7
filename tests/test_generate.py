"""`python -m fastdit.generate` end to end: PNGs of the asked size, the perf dump, --config, and every bad input
ending in exit status 2 with one line on stderr (no traceback); the Python API raises the same message."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from fastdit import Pipeline
from fastdit.generate import build_parser, main
from fastdit.pipelines.request import GenerationRequest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "pipelines"))  # the tiny checkpoint builder
from tiny_flux import save_tiny_flux  # noqa: E402

README_COMMAND = [sys.executable, "-m", "fastdit.generate", "--model-path", "flux-tiny", "--load-format", "dummy",
                  "--prompt", "a red fox in the snow"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-flux")
    save_tiny_flux(folder, seed=0)
    return str(folder)


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


def test_cli_writes_png_of_asked_size_and_perf_dump(checkpoint, tmp_path, capsys):
    perf = tmp_path / "perf.json"
    code = main(["--model-path", checkpoint, "--prompt", "a red fox", "--height", "32", "--width", "48",
                 "--num-inference-steps", "2", "--seed", "3", "--dtype", "float32", "--device", "cpu",
                 "--output-path", str(tmp_path / "out"), "--output-file-name", "fox", "--perf-dump-path", str(perf)])
    assert code == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [str(tmp_path / "out" / "fox.png")]
    assert Image.open(out[0]).size == (48, 32)
    dump = json.loads(perf.read_text())
    assert dump["seed"] == 3 and dump["height"] == 32 and dump["width"] == 48 and dump["device"] == "cpu"
    assert list(dump["stages_ms"]) == ["validate", "encode", "timesteps", "latents", "denoise", "decode", "save"]
    assert [s["step"] for s in dump["denoise_steps_ms"]] == [0, 1]


def test_config_file_flags_win(checkpoint, tmp_path, capsys):
    config = tmp_path / "gen.yaml"
    config.write_text(f"model-path: {checkpoint}\nprompt: [a fox, a cat]\nheight: 64\nwidth: 32\n"
                      f"num_inference_steps: 1\ndtype: float32\ndevice: cpu\noutput-path: {tmp_path}\n")
    assert main(["--config", str(config), "--height", "16", "--seed", "0"]) == 0
    paths = capsys.readouterr().out.strip().splitlines()
    assert [os.path.basename(p) for p in paths] == ["a-fox_0_0.png", "a-fox_0_1.png"]
    assert all(Image.open(p).size == (32, 16) for p in paths)  # --height 16 won over the file's 64


def test_readme_first_command(tmp_path):
    proc = subprocess.run(README_COMMAND + ["--output-path", str(tmp_path), "--seed", "0"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    path = proc.stdout.strip().splitlines()[-1]
    assert path == str(tmp_path / "a-red-fox-in-the-snow_0.png")
    assert Image.open(path).size == (256, 256)  # flux-tiny's default size


def test_bad_input_in_a_fresh_process_has_no_traceback():
    proc = subprocess.run(README_COMMAND + ["--height", "100"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "fastdit.generate: error: height=100 is not allowed: height must be an integer multiple of 16 in [16, 4096]"
    ]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--height", "100"], "height=100 is not allowed: height must be an integer multiple of 16 in [16, 4096]"),
        (["--width", "8192"], "width=8192 is not allowed: width must be an integer multiple of 16 in [16, 4096]"),
        (["--num-inference-steps", "0"], "num_inference_steps=0 is not allowed: num_inference_steps must be an integer in [1, 1000]"),
        (["--num-inference-steps", "-2"], "num_inference_steps=-2 is not allowed"),
        (["--height", "abc"], "argument --height: invalid int value: 'abc'"),
        (["--load-format", "pt"], "load_format='pt' is not allowed: load_format must be one of auto, dummy"),
        (["--dtype", "int8"], "dtype='int8' is not allowed: dtype must be one of auto, bfloat16, float16, float32"),
        (["--model-path", "no-such-model"], "unknown model or folder 'no-such-model': not a built-in id"),
        (["--model-path", "/no/such/folder"], "unknown model or folder '/no/such/folder'"),
        (["--kernel-backend", "foo"], "kernel_backend='foo' is not allowed: kernel_backend must be one of auto, cuda"),
        (["--kernel-backend", "cuda", "--device", "cpu"], "kernel_backend='cuda' is not allowed on a CPU"),
        (["--attention-backend", "flash9"], "attention backend 'flash9' is not one of"),
        (["--prompt", ""], None),  # an empty prompt is a string: allowed (see test below for non-strings)
        (["--disable-cuda-graph"], None),  # eager steps (what a CPU runs anyway)
    ],
)
def test_bad_flags_exit_2_with_one_line(flags, message, capsys, tmp_path):
    argv = ["--model-path", "flux-tiny", "--load-format", "dummy", "--prompt", "a fox", "--height", "16",
            "--width", "16", "--num-inference-steps", "1", "--output-path", str(tmp_path), *flags]
    code = main(argv)
    if message is None:
        assert code == 0
        return
    assert code == 2
    assert _one_error_line(capsys).startswith("fastdit.generate: error: " + message)


@pytest.mark.parametrize(
    "text, message",
    [
        ("prompt: 5\n", "prompt=5 is not allowed: prompt must be a string or a non-empty list of strings"),
        ("prompt: [a fox, 3]\n", "prompt=('a fox', 3) is not allowed"),
        ("prompt: a fox\nsteps: 4\n", "unknown key 'steps' in config file"),
        ("prompt: a fox\nheight: [1\n", "cannot read config file"),
        ("- a list\n", "must hold a mapping of option names to values, not list"),
        ("prompt: a fox\ndisable-cuda-graph: 3\n", "disable-cuda-graph=3 is not allowed: disable-cuda-graph must be true"),
    ],
)
def test_bad_config_files(text, message, tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    assert main(["--config", str(config), "--model-path", "flux-tiny", "--load-format", "dummy"]) == 2
    line = _one_error_line(capsys)
    assert line.startswith("fastdit.generate: error: ") and message in line


def test_unreadable_config_file(tmp_path, capsys):
    assert main(["--config", str(tmp_path / "missing.json"), "--prompt", "x", "--model-path", "flux-tiny"]) == 2
    assert "cannot read config file" in _one_error_line(capsys)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"prompt": "x",}')
    assert main(["--config", str(bad_json)]) == 2
    assert "cannot read config file" in _one_error_line(capsys)


def test_missing_required_flags(capsys):
    assert main(["--model-path", "flux-tiny"]) == 2
    assert _one_error_line(capsys) == "fastdit.generate: error: --prompt is required (on the command line or in --config)"


def test_offline_hub_id_is_one_line(monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["--model-path", "someone/not-cached-model", "--prompt", "x"]) == 2
    assert "the Hugging Face hub is unreachable (offline?)" in _one_error_line(capsys)


def test_api_raises_the_same_messages(capsys, tmp_path):
    config = tmp_path / "prompt.json"
    config.write_text('{"prompt": 5, "model_path": "flux-tiny"}')
    for argv, call in [
        (["--config", str(config)], lambda: GenerationRequest(prompt=5)),
        (["--model-path", "flux-tiny", "--prompt", "x", "--height", "24"], lambda: GenerationRequest("x", height=24)),
        (["--model-path", "no-such-model", "--prompt", "x"], lambda: Pipeline.from_pretrained("no-such-model")),
        (["--model-path", "flux-tiny", "--prompt", "x", "--load-format", "pt"],
         lambda: Pipeline.from_pretrained("flux-tiny", load_format="pt")),
    ]:
        assert main(argv) == 2
        line = _one_error_line(capsys).removeprefix("fastdit.generate: error: ")
        with pytest.raises(ValueError) as info:
            call()
        assert str(info.value) == line


def test_help_lists_every_flag():
    text = build_parser().format_help()
    for flag in ["--model-path", "--prompt", "--negative-prompt", "--height", "--width", "--num-inference-steps",
                 "--guidance-scale", "--seed", "--output-path", "--output-file-name", "--config", "--load-format",
                 "--device", "--dtype", "--attention-backend", "--kernel-backend", "--perf-dump-path",
                 "--disable-cuda-graph", "--enable-torch-compile"]:
        assert flag in text
