"""Shared helpers of the fused-op tests (tests/ops/test_<op>.py): error bounds against a float64 truth,
the Triton CPU interpreter in a subprocess, a poisoned CUDA allocator, torch.compile and CUDA graphs."""

from __future__ import annotations

import os
import subprocess
import sys

import torch


def rel_err(a: torch.Tensor, truth: torch.Tensor) -> float:
    """max |a - truth| / max |truth|, in float64."""
    truth = truth.double()
    return ((a.double() - truth).abs().max() / truth.abs().max().clamp_min(1e-30)).item()


def assert_within_torch_error(out: torch.Tensor, ref: torch.Tensor, truth: torch.Tensor, what: str) -> None:
    """FA3's test: the kernel's error against the float64 truth is at most twice the error of the torch
    reference in the same dtype, plus a quarter of that dtype's epsilon (one rounding of slack)."""
    assert not torch.isnan(out).any(), f"{what}: NaN in the output (an unwritten poisoned element?)"
    slack = torch.finfo(out.dtype).eps / 4 if out.dtype != torch.float32 else 1e-6
    bound = 2 * rel_err(ref, truth) + slack
    err = rel_err(out, truth)
    assert err <= bound, f"{what}: rel err {err:.3g} > bound {bound:.3g} (torch reference: {rel_err(ref, truth):.3g})"


def run_under_interpreter(test_file: str, function: str, timeout_s: int = 300) -> None:
    """Runs `function` of `test_file` in a fresh Python with TRITON_INTERPRET=1 (Triton decides at import
    whether a kernel is interpreted, so the variable must not reach this process's other tests)."""
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('interpreted_case', {test_file!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        f"sys.path.insert(0, {os.path.dirname(test_file)!r})\n"
        "spec.loader.exec_module(module)\n"
        f"module.{function}()\n"
    )
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout_s)
    assert result.returncode == 0, f"{function} under TRITON_INTERPRET=1 failed:\n{result.stdout}\n{result.stderr[-4000:]}"


def poison_cuda_allocator(nbytes: int) -> None:
    """Fills `nbytes` of the caching allocator's free memory with NaN bytes, so that an output the op
    allocates next and fails to write shows up as NaN instead of a lucky zero."""
    block = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    block.fill_(0xFF)  # 0xFFFF is NaN in bf16 and fp16, 0xFFFFFFFF in fp32
    del block


def check_compile_and_graph(fn, *args) -> None:
    """fn(*args) (CUDA tensors) gives the same numbers eagerly, under torch.compile(fullgraph=True) and
    replayed from a captured CUDA graph. fn returns a tensor or a tuple of tensors and must not mutate
    its inputs (wrap in-place ops so they work on clones)."""

    def flat(out):
        return [o.clone() for o in (out if isinstance(out, (tuple, list)) else (out,))]

    eager = flat(fn(*args))
    compiled = flat(torch.compile(fn, fullgraph=True)(*args))
    for e, c in zip(eager, compiled):
        torch.testing.assert_close(c, e, atol=0, rtol=0)

    static = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn(*static)  # warm up on a side stream (lazy loads, allocator) before capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        graph_out = fn(*static)
    for s, a in zip(static, args):
        if isinstance(s, torch.Tensor):
            s.copy_(a)
    graph.replay()
    torch.cuda.synchronize()
    for e, g in zip(eager, flat(graph_out)):
        torch.testing.assert_close(g, e, atol=0, rtol=0)
