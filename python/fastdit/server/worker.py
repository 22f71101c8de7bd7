"""The worker process: it alone owns the device and the pipeline; the HTTP process talks to it over one Pipe.

    handle = WorkerHandle(options); info = handle.start()        # spawn, build the pipeline, wait for "ready"
    outcomes, stats = handle.run(batch_id, specs)                  # one batch at a time; WorkerDied if it dies

Protocol (pickled tuples over a duplex multiprocessing Pipe, spawn start method so CUDA is initialized only here):
    parent -> worker  ("run", batch_id, [GenerationSpec])  |  ("stop",)
    worker -> parent  ("ready", info)  |  ("load_failed", message)  |  ("result", batch_id, [outcome], stats)
An outcome is {"ok": True, "items": [bytes], "media_type", "size", "seed", "timings"} or
{"ok": False, "status": 400 | 500, "message", "code"}: one per spec, in order. A batch that fails as a whole
is retried one request at a time, so one request's failure (e.g. out of memory at batch size 4) answers 500
for that request only. The worker exits when the parent's end of the pipe closes.

Test faults (GenerationSpec.test_fault, honoured only with --enable-test-faults): "raise" and "oom" raise inside
the worker (-> 500 for that request), "sleep:S" holds the request S seconds before running it (so a test can
kill the worker, whose pid /health shows, while it holds a request).
"""

from __future__ import annotations

import dataclasses
import io
import multiprocessing
import os
import signal
import sys
import threading
import time
from multiprocessing.connection import Connection, wait
from typing import Any

from fastdit.server.config import WorkerOptions
from fastdit.server.media import MEDIA_TYPES, encode_image, encode_mp4
from fastdit.server.schemas import GenerationSpec


class WorkerDied(RuntimeError):
    """The worker process ended while the parent waited on it."""

    def __init__(self, exitcode: int | None):
        super().__init__(f"the worker process died (exit code {exitcode})")
        self.exitcode = exitcode


# ----------------------------------------------------------------------------------------------------- worker side
def _load_pipeline(options: WorkerOptions):
    """The pipeline on options.parallel.num_gpus ranks (one GPU: in this process, a plain Pipeline inside)."""
    from fastdit.distributed import PipelineWorkers

    return PipelineWorkers(
        options.parallel, options.model_path, device=options.device, dtype=options.dtype,
        load_format=options.load_format, attention_backend=options.attention_backend,
        kernel_backend=options.kernel_backend, cuda_graph=options.cuda_graph, torch_compile=options.torch_compile,
    )


def _video_defaults(pipe: Any) -> dict[str, int] | None:
    """A video recipe's frame count and frame rate defaults ({"num_frames", "fps"}); None for image models."""
    defaults = pipe.info.video_defaults
    return dataclasses.asdict(defaults) if dataclasses.is_dataclass(defaults) else None


def _pipeline_info(pipe: Any) -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "model_id": str(pipe.model_id),
        "task": pipe.task,
        "pipeline": pipe.info.pipeline_class,
        "num_gpus": pipe.config.num_gpus,
        "dtype": str(pipe.dtype).removeprefix("torch."),
        "device": str(pipe.device),
        "defaults": dataclasses.asdict(pipe.defaults) if dataclasses.is_dataclass(pipe.defaults) else None,
        "video_defaults": _video_defaults(pipe),
    }


def _inject_fault(fault: str | None) -> None:
    import torch

    if fault is None:
        return
    if fault == "raise":
        raise RuntimeError("injected test fault\n(fastdit_test_fault=raise)")  # two lines: the answer must be one
    if fault == "oom":
        raise torch.OutOfMemoryError("injected test fault: CUDA out of memory (fastdit_test_fault=oom)")
    time.sleep(float(fault.removeprefix("sleep:")))


def _build_request(specs: list[GenerationSpec]):
    from PIL import Image

    from fastdit.pipelines.request import GenerationRequest

    head = specs[0]
    if len(specs) == 1:  # exactly the offline call: one prompt, n images, the request's own seed
        prompt, per_prompt = head.prompt, head.n
    else:
        prompt, per_prompt = tuple(s.prompt for s in specs for _ in range(s.n)), 1
    image = Image.open(io.BytesIO(head.image)).convert("RGB") if head.image is not None else None
    return GenerationRequest(
        prompt=prompt, negative_prompt=head.negative_prompt, height=head.height, width=head.width,
        num_inference_steps=head.num_inference_steps, guidance_scale=head.guidance_scale,
        true_cfg_scale=head.true_cfg_scale, seed=head.seed, num_images_per_prompt=per_prompt,
        num_frames=head.num_frames, fps=head.fps, image=image,
    )


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (CUDA and compiler errors span several): whitespace runs become one space."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _failure(exc: BaseException) -> dict[str, Any]:
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return {"ok": False, "status": 500, "code": "out_of_memory", "message": f"the device ran out of memory: {one_line(exc)}"}
    return {"ok": False, "status": 500, "code": "generation_failed",
            "message": f"generation failed: {type(exc).__name__}: {one_line(exc)}"}


def _encode_outcomes(specs: list[GenerationSpec], result: Any, default_fps: int | None) -> list[dict[str, Any]]:
    """Split the batch's outputs back per request (in order: spec i owns the next spec.n outputs) and encode them.

    Outputs are PIL images: result.images for image models, result.frames (one frame list per clip) for video.
    """
    outcomes, offset = [], 0
    for spec in specs:
        if spec.kind == "video":
            clips = result.frames[offset:offset + spec.n]
            items = [encode_mp4(clip, spec.fps or default_fps) for clip in clips]
            first = clips[0][0]
        else:
            images = result.images[offset:offset + spec.n]
            items = [encode_image(image, spec.output_format, spec.output_compression) for image in images]
            first = images[0]
        width, height = first.size
        outcomes.append({
            "ok": True, "items": items, "media_type": MEDIA_TYPES[spec.output_format], "size": f"{width}x{height}",
            "seed": result.seed, "timings": result.timings,
        })
        offset += spec.n
    return outcomes


def run_batch(pipe: Any, specs: list[GenerationSpec], faults_enabled: bool) -> list[dict[str, Any]]:
    """Run one batch through `pipe.run`; never raises for a request's own failure (it becomes its outcome)."""
    import torch

    try:
        request = _build_request(specs)
    except ValueError as exc:  # the pipeline's own validation: the client's fault
        return [{"ok": False, "status": 400, "code": "invalid_value", "message": one_line(exc)} for _ in specs]
    try:
        if faults_enabled:
            _inject_fault(specs[0].test_fault)
        result = pipe.run(request, show_progress=False)
        start = time.perf_counter()
        outcomes = _encode_outcomes(specs, result, (_video_defaults(pipe) or {}).get("fps"))
        encode_ms = (time.perf_counter() - start) * 1e3  # a stage of the server's own, next to the pipeline's
        for outcome in outcomes:
            stages = {**outcome["timings"]["stages_ms"], "encode_output": encode_ms}
            outcome["timings"] = {**outcome["timings"], "stages_ms": stages}
        return outcomes
    except Exception as exc:  # noqa: BLE001 - any failure of a run is answered, never allowed to end the worker
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if len(specs) > 1:
            return [run_batch(pipe, [spec], faults_enabled)[0] for spec in specs]
        if isinstance(exc, ValueError):
            return [{"ok": False, "status": 400, "code": "invalid_value", "message": one_line(exc)}]
        return [_failure(exc)]


def _memory_stats(pipe: Any) -> dict[str, int] | None:
    import torch

    if getattr(pipe.device, "type", None) != "cuda":
        return None
    return {
        "allocated": torch.cuda.memory_allocated(pipe.device),
        "reserved": torch.cuda.memory_reserved(pipe.device),
        "peak": torch.cuda.max_memory_allocated(pipe.device),
        "peak_reserved": torch.cuda.max_memory_reserved(pipe.device),  # CUDA graph pools count here, not above
    }


def _exit_now(code: int) -> None:
    """End the worker without the interpreter's teardown: freeing torch's modules takes seconds (4-5 s on the CI
    CPU machine, measured with flux-tiny) and holds nothing the worker still needs; the OS reclaims the device."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _send(conn: Connection, message: tuple) -> None:
    try:
        conn.send(message)
    except (OSError, BrokenPipeError):  # the server went away: nobody is left to answer
        _exit_now(0)


def worker_main(conn: Connection, options: WorkerOptions) -> None:
    """Entry point of the worker process.

    SIGINT and SIGTERM are ignored: Ctrl-C in a terminal (and a service manager's stop) reach the whole process
    group, and the server decides when the worker ends, after the requests it holds are answered; the server
    kills a worker that does not stop when asked.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # tqdm (the runner's progress bar, disabled here) would create a multiprocessing semaphore, which _exit_now
    # leaves behind for the resource tracker to clean up with a warning; a thread lock is all one process needs.
    from tqdm import tqdm

    tqdm.set_lock(threading.RLock())
    try:
        pipe = _load_pipeline(options)
    except Exception as exc:  # noqa: BLE001 - reported to the parent as one line, which exits with it
        _send(conn, ("load_failed", f"{type(exc).__name__}: {one_line(exc)}"))
        _exit_now(1)
    _send(conn, ("ready", _pipeline_info(pipe)))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the server went away: nothing left to answer
            _exit_now(0)
        if message[0] == "stop":
            _exit_now(0)
        _, batch_id, specs = message
        start = time.perf_counter()
        outcomes = run_batch(pipe, specs, options.enable_test_faults)
        stats = {"memory": _memory_stats(pipe), "batch_ms": (time.perf_counter() - start) * 1e3}
        _send(conn, ("result", batch_id, outcomes, stats))


# ----------------------------------------------------------------------------------------------------- parent side
class WorkerHandle:
    """The parent's view of one worker process. Blocking methods: the engine calls them from a thread."""

    def __init__(self, options: WorkerOptions):
        self.options = options
        self.process: multiprocessing.process.BaseProcess | None = None
        self.conn: Connection | None = None
        self.info: dict[str, Any] = {}

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def is_alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    def start(self, timeout_s: float = 1800.0) -> dict[str, Any]:
        """Spawn the worker and wait until its pipeline is built. Raises RuntimeError with its one-line reason."""
        context = multiprocessing.get_context("spawn")
        parent_conn, child_conn = context.Pipe(duplex=True)
        # Not a daemon: daemonic processes may not start children (torch.compile's workers, data loaders).
        self.process = context.Process(target=worker_main, args=(child_conn, self.options), name="fastdit-worker")
        self.process.start()
        child_conn.close()
        self.conn = parent_conn
        ready = wait([parent_conn, self.process.sentinel], timeout=timeout_s)
        if not ready:
            self.stop()
            raise RuntimeError(f"the worker did not load {self.options.model_path!r} within {timeout_s:g} s")
        try:
            message = parent_conn.recv()  # a message sent just before the process ended is still readable
        except EOFError:
            self.process.join(timeout=5)
            code = self.process.exitcode
            self.stop()
            raise RuntimeError(f"the worker process died while loading {self.options.model_path!r} (exit code {code})") from None
        if message[0] != "ready":
            self.stop()
            raise RuntimeError(f"loading {self.options.model_path!r} failed: {message[1]}")
        self.info = message[1]
        return self.info

    def run(self, batch_id: int, specs: list[GenerationSpec]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Send one batch and wait for its outcomes. Raises WorkerDied when the process ends first."""
        assert self.conn is not None and self.process is not None
        try:
            self.conn.send(("run", batch_id, specs))
            while True:
                ready = wait([self.conn, self.process.sentinel])
                if self.conn in ready:
                    message = self.conn.recv()
                    break
                if self.process.sentinel in ready:
                    raise EOFError
        except (EOFError, OSError, BrokenPipeError):
            self.process.join(timeout=5)
            raise WorkerDied(self.process.exitcode) from None
        _, answered_id, outcomes, stats = message
        if answered_id != batch_id:
            raise RuntimeError(f"the worker answered batch {answered_id} while batch {batch_id} was expected")
        return outcomes, stats

    def stop(self, timeout_s: float = 10.0) -> None:
        """Ask the worker to exit; kill it if it does not within timeout_s."""
        if self.process is None:
            return
        if self.process.is_alive() and self.conn is not None:
            try:
                self.conn.send(("stop",))
            except (OSError, BrokenPipeError):
                pass
            self.process.join(timeout=timeout_s)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=5)  # SIGKILL is not refused: this only waits for the OS to reap it
        if self.conn is not None:
            self.conn.close()
        self.conn = None
