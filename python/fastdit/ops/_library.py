"""The ctypes loader of libfastdit_kernels.so, and the backend choice every fused op shares.

Where the library comes from: FASTDIT_KERNEL_LIBRARY (envs.kernel_library_path()) when set, else
fastdit/_lib/libfastdit_kernels.so next to this package (the wheel puts it there). It is a plain C ABI
(csrc/api/*.cu): no torch or Python symbols, so the same file serves every torch >= 2.6 and Python.
The load happens once, on first use, and is logged once: found or not, and for which archs. Each
fastdit/ops/<op>.py declares the signature of its own export (`export(name, argtypes)`) and is the only
Python that calls it. Status codes and dtype codes mirror csrc/api/library.h.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
from pathlib import Path

import torch

from fastdit import envs
from fastdit.log import log_once

# csrc/api/library.h: FastditStatus, FastditDtype, FASTDIT_ABI_VERSION
OK = 0
ABI_VERSION = 1
DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
HALF_DTYPES = (torch.bfloat16, torch.float16)

BACKENDS = ("auto", "cuda", "triton", "torch")

_TRITON_IMPORTABLE = importlib.util.find_spec("triton") is not None


def default_library_path() -> Path:
    """fastdit/_lib/libfastdit_kernels.so in the first of the package's folders that has it: a wheel has one
    folder; an editable install (pip install -e .) puts the built library in site-packages/fastdit and
    the sources in python/fastdit, both on fastdit.__path__."""
    import fastdit

    candidates = [Path(folder) / "_lib" / "libfastdit_kernels.so" for folder in fastdit.__path__]
    candidates.append(Path(__file__).resolve().parent.parent / "_lib" / "libfastdit_kernels.so")
    return next((path for path in candidates if path.is_file()), candidates[-1])


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded library, or None (logged once) when it is missing or does not load."""
    path = Path(envs.kernel_library_path() or default_library_path())
    if not path.is_file():
        log_once(f"kernel library not found at {path}; fused ops use Triton where it runs, else torch")
        return None
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as err:
        log_once(f"kernel library at {path} does not load ({err}); fused ops use Triton where it runs, else torch")
        return None
    lib.fastdit_last_error.restype = ctypes.c_char_p
    lib.fastdit_compiled_archs.restype = ctypes.c_char_p
    lib.fastdit_abi_version.restype = ctypes.c_int
    lib.fastdit_device_supported.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
    if lib.fastdit_abi_version() != ABI_VERSION:
        log_once(
            f"kernel library at {path} has ABI {lib.fastdit_abi_version()}, this fastdit needs {ABI_VERSION}; "
            "fused ops use Triton where it runs, else torch"
        )
        return None
    log_once(f"kernel library loaded from {path} (built for {compiled_archs(lib)})")
    return lib


def compiled_archs(lib: ctypes.CDLL | None = None) -> str:
    """The archs the library was built for, e.g. "sm_80,sm_90a,sm_100a" ("" without a library)."""
    lib = lib or library()
    return lib.fastdit_compiled_archs().decode() if lib is not None else ""


def library_status() -> str:
    """One line for logs and benchmarks: where the library is, its archs, and whether this GPU runs it."""
    lib = library()
    if lib is None:
        return f"not loaded (looked at {envs.kernel_library_path() or default_library_path()})"
    line = f"{lib._name} built for {compiled_archs(lib)}"
    if torch.cuda.is_available():
        index = torch.cuda.current_device()
        line += f"; {torch.cuda.get_device_name(index)}: {'runs it' if _device_ready(index) else 'no image for it'}"
    return line


@functools.cache
def _device_ready(device_index: int) -> bool:
    lib = library()
    if lib is None or not torch.cuda.is_available():
        return False
    binary_arch = ctypes.c_int(0)
    if lib.fastdit_device_supported(device_index, ctypes.byref(binary_arch)) != OK:
        name = torch.cuda.get_device_name(device_index)
        log_once(
            f"kernel library has no build for {name} ({lib.fastdit_last_error().decode()}); "
            "fused ops use Triton where it runs, else torch"
        )
        return False
    log_once(f"kernel library runs on {torch.cuda.get_device_name(device_index)} (image sm_{binary_arch.value})")
    return True


@torch.compiler.assume_constant_result
def cuda_ready(device_index: int) -> bool:
    """Whether the library is loaded and has an image for CUDA device `device_index` (cached)."""
    return _device_ready(device_index)


def triton_ready(device: torch.device) -> bool:
    """Triton runs on CUDA tensors when importable; on the CPU only under TRITON_INTERPRET=1 (tests)."""
    if not _TRITON_IMPORTABLE:
        return False
    return device.type == "cuda" or (device.type == "cpu" and envs.triton_interpret())


@functools.cache
def export(name: str, argtypes: tuple) -> ctypes._CFuncPtr:
    """The library function `name` with its C signature declared (int status return); cached."""
    lib = library()
    if lib is None:
        raise RuntimeError(f"{name}: the kernel library is not loaded")
    fn = getattr(lib, name)
    fn.argtypes = list(argtypes)
    fn.restype = ctypes.c_int
    return fn


def rows_for_kernel(x2d: torch.Tensor) -> torch.Tensor:
    """x2d [rows, D] as the row kernels take it: 16-byte aligned rows, row stride a multiple of 8 and
    >= D. A view that breaks this (a misaligned slice, a broadcast) is copied once into a fresh buffer."""
    rows, dim = x2d.shape
    stride_ok = rows <= 1 or (x2d.stride(0) % 8 == 0 and x2d.stride(0) >= dim)
    if stride_ok and aligned16(x2d):
        return x2d
    return x2d.clone(memory_format=torch.contiguous_format)


def row_stride(x2d: torch.Tensor) -> int:
    return x2d.stride(0) if x2d.shape[0] > 1 else x2d.shape[1]


def fresh_if_misaligned(t: torch.Tensor | None) -> torch.Tensor | None:
    """t itself when 16-byte aligned (or None), else a contiguous copy in a fresh (aligned) buffer."""
    if t is None or aligned16(t):
        return t
    return t.clone(memory_format=torch.contiguous_format)


def check(op: str, status: int) -> None:
    """Raises RuntimeError with the library's message when an export returned an error status."""
    if status != OK:
        raise RuntimeError(f"{op}: kernel library error {status}: {library().fastdit_last_error().decode()}")


def stream_of(t: torch.Tensor) -> ctypes.c_void_p:
    """The current CUDA stream of t's device (the capture stream under CUDA graph capture)."""
    return ctypes.c_void_p(torch.cuda.current_stream(t.device).cuda_stream)


def ptr(t: torch.Tensor | None) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr() if t is not None else None)


def aligned16(*tensors: torch.Tensor | None) -> bool:
    """Whether every given tensor's data starts on a 16-byte boundary (the kernels' vector loads)."""
    return all(t is None or t.data_ptr() % 16 == 0 for t in tensors)


def offset_aligned16(t: torch.Tensor | None) -> bool:
    """Whether t's view starts 16 bytes into its storage (eagerly). Under torch.compile the offset is not
    traceable: True there, and the custom op copies a misaligned operand once at run time."""
    if t is None or torch.compiler.is_compiling():
        return True
    return (t.storage_offset() * t.element_size()) % 16 == 0


def eager_or_op(custom_op, impl):
    """What a public op calls: the registered custom op under torch.compile (which needs its schema and
    fake), the plain implementation otherwise. The custom-op dispatcher costs about 50 us of CPU per
    call (measured on the H100 host, 2026-11-24: ctypes export alone 9.7 us, through the custom op 58.5
    us), more than a FLUX-sized kernel runs; eager calls and CUDA graph capture do not need it."""
    return custom_op if torch.compiler.is_compiling() else impl


@torch.compiler.assume_constant_result
def _env_backend() -> str:
    # FASTDIT_KERNEL_BACKEND, a constant to torch.compile (read once per compiled graph, no guard).
    return envs.kernel_backend()


def resolve_backend(op: str, backend: str, cuda_reason: str | None, triton_reason: str | None) -> str:
    """The backend to run: a forced one (argument, else FASTDIT_KERNEL_BACKEND), else cuda > triton > torch.

    cuda_reason / triton_reason: None when that backend can run this call, else why not. A forced
    backend that cannot run raises ValueError saying why.
    """
    if backend not in BACKENDS:
        raise ValueError(f"{op}: backend={backend!r} is not one of {', '.join(BACKENDS)}")
    if backend == "auto":
        backend = _env_backend()
        if backend not in BACKENDS:
            raise ValueError(f"{op}: FASTDIT_KERNEL_BACKEND={backend!r} is not one of {', '.join(BACKENDS)}")
    if backend == "cuda" and cuda_reason is not None:
        raise ValueError(f"{op}: backend='cuda' cannot run this call: {cuda_reason}")
    if backend == "triton" and triton_reason is not None:
        raise ValueError(f"{op}: backend='triton' cannot run this call: {triton_reason}")
    if backend != "auto":
        return backend
    if cuda_reason is None:
        return "cuda"
    if triton_reason is None:
        return "triton"
    return "torch"


def cuda_common_reason(x: torch.Tensor, max_width: int | None = None) -> str | None:
    """Why the CUDA kernels cannot take x (device, library, dtype, last dim), or None."""
    if x.device.type != "cuda":
        return f"x is on {x.device}, not a CUDA device"
    if x.dtype not in HALF_DTYPES:
        return f"x dtype {x.dtype} is not bfloat16 or float16"
    if x.dim() == 0 or x.shape[-1] % 8 != 0:
        return f"last dim {tuple(x.shape)[-1:]} is not a multiple of 8 (16-byte vectors)"
    if max_width is not None and x.shape[-1] > max_width:
        return f"last dim {x.shape[-1]} exceeds {max_width}"
    if x.stride(-1) != 1 or not offset_aligned16(x):
        return "x's last dim is not contiguous and 16-byte aligned"
    if not cuda_ready(x.device.index if x.device.index is not None else torch.cuda.current_device()):
        return "the kernel library is not loaded or has no build for this GPU"
    return None


def triton_common_reason(x: torch.Tensor) -> str | None:
    """Why the Triton kernels cannot take x, or None."""
    if not triton_ready(x.device):
        return f"triton is not importable or x is on {x.device} (CPU needs TRITON_INTERPRET=1)"
    if x.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        return f"x dtype {x.dtype} is not bfloat16, float16 or float32"
    return None

