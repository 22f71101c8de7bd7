"""Portable Triton kernels for fastdit's ops (shipped inside the wheel as `fastdit.triton_kernels`).

Used on GPUs where the CUDA library has no build for the arch, on ROCm, and on the CPU under
TRITON_INTERPRET=1 in the tests. Importing this package does not import Triton; each module does.
"""
