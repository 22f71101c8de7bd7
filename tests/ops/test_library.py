"""The kernel library: it compiles with nvcc (when on PATH), loads through ctypes without a GPU, reports
its archs, and its exports reject bad arguments with a message naming the op (the validation step runs
before any CUDA call, so this runs on the CPU). The loader logs a missing library once and falls back."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from fastdit.ops import _library as lib
from fastdit.ops.layer_norm_modulate import ModulatedNormParams, ModulationView
from fastdit.ops.qk_norm_rope import QkNormRopeParams

CSRC = Path(__file__).resolve().parents[2] / "csrc"


@pytest.fixture(scope="module")
def kernel_library(tmp_path_factory) -> ctypes.CDLL:
    """csrc/api/{norm,rope,elementwise,library}.cu (every fused op but attention and comm) built for sm_90a
    alone into a shared object (about 35 s on 2 cores)."""
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc is not on PATH")
    out = tmp_path_factory.mktemp("kernels") / "libfastdit_norm.so"
    cmd = [
        "nvcc", "-shared", "-Xcompiler=-fPIC", "-std=c++17", "-O3", "--expt-relaxed-constexpr",
        "-gencode=arch=compute_90a,code=sm_90a", '-DFASTDIT_ARCHS="sm_90a"', f"-I{CSRC}",
        *(str(CSRC / "api" / f"{name}.cu") for name in ("norm", "rope", "elementwise", "library")), "-o", str(out),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    library = ctypes.CDLL(str(out))
    library.fastdit_last_error.restype = ctypes.c_char_p
    library.fastdit_compiled_archs.restype = ctypes.c_char_p
    return library


def test_compiled_library_reports_archs_and_abi(kernel_library):
    assert kernel_library.fastdit_compiled_archs() == b"sm_90a"
    assert kernel_library.fastdit_abi_version() == lib.ABI_VERSION


def test_library_links_no_torch_or_python(kernel_library):
    out = subprocess.run(["ldd", kernel_library._name], capture_output=True, text=True).stdout
    assert "torch" not in out and "python" not in out and "libcudart" not in out, out


def test_rms_norm_export_rejects_bad_width(kernel_library):
    fn = kernel_library.fastdit_rms_norm
    fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                   ctypes.c_float, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
    status = fn(16, 8, None, 16, 4, 7, 1e-6, lib.DTYPE_CODES[torch.bfloat16], 0, None)
    assert status == 1
    assert kernel_library.fastdit_last_error() == b"rms_norm: dim must be a positive multiple of 8"
    # The pipelined kernel indexes rows with 32-bit ints: 2^31 rows are refused before any CUDA call.
    status = fn(16, 8, None, 16, 2**31, 8, 1e-6, lib.DTYPE_CODES[torch.bfloat16], 0, None)
    assert status == 1
    assert kernel_library.fastdit_last_error() == b"rms_norm: rows must be >= 0 and below 2^31"


def test_modulated_norm_struct_reaches_the_export(kernel_library):
    # A misaligned scale pointer: the message proves the struct's field order matches norm.cu's.
    params = ModulatedNormParams(16, None, ModulationView(None, 0, 0), ModulationView(32, 6 * 64, 0),
                                 ModulationView(40, 6 * 64, 0), None, 16, 2, 5, 64, 1e-6)
    fn = kernel_library.fastdit_layer_norm_modulate
    status = fn(ctypes.byref(params), lib.DTYPE_CODES[torch.float16], 0, None)
    assert status == 1
    assert b"shift and scale must be 16-byte aligned" in kernel_library.fastdit_last_error()


def test_qk_norm_rope_export_rejects_bad_head_dim(kernel_library):
    q = torch.empty(64, dtype=torch.bfloat16)  # pointers only: validation returns before any CUDA call
    params = QkNormRopeParams(q.data_ptr(), q.data_ptr(), None, None, q.data_ptr(), q.data_ptr(),
                              96 * 2, 96 * 2, 4, 4, 2, 96, 1e-6, 0, 0)
    status = kernel_library.fastdit_qk_norm_rope(ctypes.byref(params), lib.DTYPE_CODES[torch.bfloat16], 0, None)
    assert status == 1
    assert kernel_library.fastdit_last_error() == b"qk_norm_rope: head_dim 96 is not 64, 128 or 256"


def test_gelu_export_rejects_misaligned_pointer(kernel_library):
    fn = kernel_library.fastdit_gelu_tanh
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
    assert fn(18, 32, 8, lib.DTYPE_CODES[torch.float16], 0, None) == 1
    assert kernel_library.fastdit_last_error() == b"gelu_tanh: x and out must be non-null and 16-byte aligned"


def test_qk_params_mirror_has_the_c_layout():
    # fastdit_qk_norm_rope_params: 6 pointers, 4 int64, 2 int32, float, 2 int32 (+ 4 bytes of padding)
    assert ctypes.sizeof(QkNormRopeParams) == 6 * 8 + 4 * 8 + 2 * 4 + 4 + 2 * 4 + 4
    assert QkNormRopeParams.head_dim.offset == 6 * 8 + 4 * 8 + 4


def test_missing_library_falls_back_to_triton_then_torch(monkeypatch):
    monkeypatch.setenv("FASTDIT_KERNEL_LIBRARY", "/nonexistent/libfastdit_kernels.so")
    lib.library.cache_clear()
    try:
        assert lib.library() is None
        assert lib.compiled_archs() == ""
        assert lib.resolve_backend("rms_norm", "auto", "no library", "no triton") == "torch"
        assert lib.resolve_backend("rms_norm", "auto", "no library", None) == "triton"
    finally:
        lib.library.cache_clear()


def test_env_var_forces_a_backend(monkeypatch):
    monkeypatch.setenv("FASTDIT_KERNEL_BACKEND", "torch")
    assert lib.resolve_backend("rms_norm", "auto", None, None) == "torch"
    assert lib.resolve_backend("rms_norm", "triton", None, None) == "triton"  # the argument wins
    monkeypatch.setenv("FASTDIT_KERNEL_BACKEND", "cuda")
    with pytest.raises(ValueError, match=r"rms_norm: backend='cuda' cannot run this call: x is on cpu"):
        lib.resolve_backend("rms_norm", "auto", "x is on cpu", None)


def test_default_library_path_finds_the_editable_install_layout(tmp_path, monkeypatch):
    """pip install -e . puts the built library in site-packages/fastdit/_lib and the sources elsewhere; both
    folders are on fastdit.__path__ and the one holding the library wins."""
    import fastdit
    from fastdit.ops import _library

    sources, site = tmp_path / "python" / "fastdit", tmp_path / "site-packages" / "fastdit"
    (site / "_lib").mkdir(parents=True)
    sources.mkdir(parents=True)
    (site / "_lib" / "libfastdit_kernels.so").write_bytes(b"\x7fELF")
    monkeypatch.setattr(fastdit, "__path__", [str(sources), str(site)])
    assert _library.default_library_path() == site / "_lib" / "libfastdit_kernels.so"
    (site / "_lib" / "libfastdit_kernels.so").unlink()
    assert _library.default_library_path().name == "libfastdit_kernels.so"  # the package's own folder otherwise
