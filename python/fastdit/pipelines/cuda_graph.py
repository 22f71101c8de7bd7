"""CUDA graphs and torch.compile for the denoising step, applied from outside the model (gpt-fast style).

    denoiser = GraphedDenoiser(transformer)           # called exactly like the transformer
    velocity = denoiser(latents, embeds, pooled, t, img_ids, txt_ids, guidance, rope=rope)
    compile_model(transformer)                        # torch.compile in place (fullgraph, static shapes)

GraphedDenoiser captures one CUDA graph per input signature -- the shapes, dtypes and devices of every tensor
argument plus the values of the others (None, ints) -- and replays it afterwards: a FLUX step is then one
graph launch instead of ~1500 kernel launches from Python. A new resolution or batch size captures a new
graph (cached, least recently used first out past `max_graphs`). Per call it copies the tensor arguments into
the graph's static input buffers, replays, and returns a copy of the static output (so two calls in a row,
as true CFG makes, never overwrite each other's result). Nothing here reads a GPU value on the host: the only
synchronisations happen when a new signature is captured, before the first step of that shape.

All graphs share one memory pool, captured on one stream of their own. That is safe because graphs replay one
at a time on one stream and no output outlives its replay (it is copied out), while the static inputs live
outside the pool. Between replays the pool's memory is free: `pool_memory()` lends it to other work (the VAE
decode after the loop) instead of the process holding the step's activations AND the decoder's.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils import _pytree as pytree

from fastdit.log import get_logger

# The warm-up calls before a capture run lazy initialisation outside the graph (cuBLAS workspaces, cuDNN
# plans, Triton autotuning, torch.compile's first compile); two, as torch's own make_graphed_callables does
# for inference-only callables (one more is only needed where an optimizer state is built).
WARMUP_CALLS = 2
# Past this many signatures the least recently used graph is dropped with its share of the pool: a server
# cycling through many resolutions keeps at most this many sets of activations captured.
MAX_GRAPHS = 4
# torch.compile mode of --enable-torch-compile. "default", not "max-autotune-no-cudagraphs": FLUX's time is in
# large bf16 GEMMs (M = 4608 tokens, K and N >= 3072) that cuBLAS already runs near the H100's peak, which
# Inductor's Triton GEMM templates match at best, and autotuning ~10 GEMM shapes adds minutes of compile time
# per shape; what Inductor adds on top of our fused ops is fusing the leftover elementwise work (residual
# addcmul, casts, the conditioning MLPs), which "default" already does. Our own CUDA graph replaces
# "reduce-overhead"'s.
COMPILE_MODE = "default"
# The caching allocator's hooks that route one thread's allocations to a private pool (torch's cudagraph trees
# use the same three): begin (takes a reference on the pool), end, release (drops it).
_POOL_HOOKS = ("_cuda_beginAllocateCurrentThreadToPool", "_cuda_endAllocateToPool", "_cuda_releasePool")


def compile_model(model: torch.nn.Module, mode: str = COMPILE_MODE, backend: str = "inductor") -> torch.nn.Module:
    """torch.compile `model` in place (nn.Module.compile: its type, names and state_dict stay as they are) with
    fullgraph=True -- our custom ops are traced, not graph breaks -- and static shapes (one compile per shape,
    which is what a captured graph needs anyway). Returns the model."""
    model.compile(fullgraph=True, dynamic=False, mode=mode, backend=backend)
    get_logger().info("torch.compile: %s (mode %s, backend %s, fullgraph, static shapes)",
                      type(model).__name__, mode, backend)
    return model


def _signature(leaves: list[Any]) -> tuple:
    """The cache key of one call: (shape, dtype, device) per tensor leaf, the value itself otherwise."""
    return tuple((tuple(x.shape), x.dtype, x.device) if isinstance(x, torch.Tensor) else ("value", x)
                 for x in leaves)


@dataclass
class _Captured:
    """One captured call: the graph, its static input tensors (by leaf position) and its static output."""

    graph: torch.cuda.CUDAGraph
    static_inputs: dict[int, torch.Tensor]
    static_output: Any


class GraphedDenoiser:
    """Calls `model(*args, **kwargs)` through a CUDA graph captured per input signature (module docstring).

    Calls whose tensors are not all on a CUDA device run the model eagerly. `captures` counts the graphs
    captured so far (tests use it to see a new shape re-capture and a known one replay). A capture that
    fails (an op that cannot be captured, e.g. one that synchronizes) logs a warning with the reason, sets
    `failure`, and every later call runs eagerly: the same numbers, without the graph's speed. Errors of the
    model itself (raised by the eager warm-up calls) and out-of-memory propagate as they would eagerly."""

    def __init__(self, model: torch.nn.Module, max_graphs: int = MAX_GRAPHS, warmup_calls: int = WARMUP_CALLS):
        if max_graphs < 1:
            raise ValueError(f"max_graphs={max_graphs} is not allowed: keep at least one graph (max_graphs >= 1)")
        self.model = model
        self.max_graphs = max_graphs
        self.warmup_calls = warmup_calls
        self.captures = 0
        self.failure: str | None = None
        self._graphs: OrderedDict[tuple, _Captured] = OrderedDict()
        self._pool = None
        self._stream: torch.cuda.Stream | None = None  # every capture's stream: the pool's blocks are on it

    def __call__(self, *args, **kwargs):
        leaves, spec = pytree.tree_flatten((args, kwargs))
        tensors = [x for x in leaves if isinstance(x, torch.Tensor)]
        if self.failure is not None or not tensors or any(t.device.type != "cuda" for t in tensors):
            return self.model(*args, **kwargs)
        key = (spec, _signature(leaves))
        captured = self._graphs.get(key)
        if captured is None:
            device = tensors[0].device
            static_leaves = self._warm_up(leaves, spec, device)  # the model's own errors propagate from here
            try:
                captured = self._record(static_leaves, spec, device)
            except torch.OutOfMemoryError:
                raise  # not a capture problem: the next call of this shape tries again
            except RuntimeError as err:
                self.failure = " ".join(str(err).split())[:300]
                self._graphs.clear()
                get_logger().warning("CUDA graph capture of %s failed, running its steps eagerly: %s",
                                     type(self.model).__name__, self.failure)
                return self.model(*args, **kwargs)
            self._graphs[key] = captured
            while len(self._graphs) > self.max_graphs:
                self._graphs.popitem(last=False)
        self._graphs.move_to_end(key)
        for i, static in captured.static_inputs.items():
            static.copy_(leaves[i])
        captured.graph.replay()
        return pytree.tree_map_only(torch.Tensor, torch.clone, captured.static_output)

    @contextmanager
    def pool_memory(self) -> Iterator[None]:
        """Within this block the current thread's CUDA allocations come from the graphs' pool, on the capture
        stream (made current here, ordered after the caller's stream and before it again on exit): e.g. the
        VAE decode after the denoising loop reuses the captured step's activation memory, so the process holds
        max(step, decode) instead of both -- what an eager run's caching allocator holds.

        The caller's contract (that of torch's own cudagraph trees, which allocate into their pools the same
        way): no graph of this denoiser replays inside the block, and no tensor allocated inside is used after
        it (copy results out first: a later replay overwrites that memory). Without a captured graph, or on a
        torch without the allocator hooks, the block runs as it is."""
        hooks = [getattr(torch._C, name, None) for name in _POOL_HOOKS]
        if self._pool is None or not self._graphs or None in hooks:
            yield
            return
        begin, end, release = hooks
        device, caller = self._stream.device, torch.cuda.current_stream(self._stream.device)
        self._stream.wait_stream(caller)
        with torch.cuda.stream(self._stream):
            begin(device.index, self._pool)  # holds a reference on the pool until `release`
            try:
                yield
            finally:
                end(device.index, self._pool)
                release(device.index, self._pool)
        caller.wait_stream(self._stream)

    def _call_static(self, static_leaves: list[Any], spec) -> Any:
        args, kwargs = pytree.tree_unflatten(static_leaves, spec)
        return self.model(*args, **kwargs)

    def _warm_up(self, leaves: list[Any], spec, device: torch.device) -> list[Any]:
        """Static copies of the tensor arguments, and `warmup_calls` eager calls on them on a side stream."""
        static_leaves = [x.clone() if isinstance(x, torch.Tensor) else x for x in leaves]
        # Blocks cached on the caller's stream (the text encoders') cannot serve the side stream's warm-up:
        # return them first, so that a capture's peak is an eager step's (torch.cuda.graph empties the cache
        # again before recording, which frees the warm-up's blocks)
        torch.cuda.empty_cache()
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup_calls):
                self._call_static(static_leaves, spec)
        torch.cuda.current_stream(device).wait_stream(side)
        return static_leaves

    def _record(self, static_leaves: list[Any], spec, device: torch.device) -> _Captured:
        """Capture one call on the static arguments into the shared pool."""
        with torch.cuda.device(device):
            if self._pool is None:
                self._pool, self._stream = torch.cuda.graph_pool_handle(), torch.cuda.Stream(device)
            graph = torch.cuda.CUDAGraph()
            # the same stream for every capture, as torch.cuda.graph asks for memory sharing through `pool`
            with torch.cuda.graph(graph, pool=self._pool, stream=self._stream):
                static_output = self._call_static(static_leaves, spec)
        self.captures += 1
        shapes = [tuple(x.shape) for x in static_leaves if isinstance(x, torch.Tensor)]
        get_logger().info("CUDA graph %d captured for %s with inputs %s", self.captures,
                          type(self.model).__name__, shapes[:2])
        static_inputs = {i: x for i, x in enumerate(static_leaves) if isinstance(x, torch.Tensor)}
        return _Captured(graph, static_inputs, static_output)
