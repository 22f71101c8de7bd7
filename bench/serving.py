"""Serving benchmark (like SGLang's bench_serving): image requests at concurrency C against fastdit.serve.

    # measure the offline pipeline, start a server, sweep concurrency 1 and 4, stop the server (one H100 call, ~3 min):
    python bench/serving.py --launch --model-path black-forest-labs/FLUX.1-dev --load-format dummy \
        --size 1024x1024 --steps 28 --num-prompts 4 --concurrency 1 4 --json serving.json
    # smoke run on a CPU (seconds):
    python bench/serving.py --launch --model-path flux-tiny --device cpu --dtype float32 --size 64x64 --steps 2
    # or against a server already running (no offline number):
    python bench/serving.py --base-url http://127.0.0.1:30000 --size 1024x1024 --concurrency 1 4

Per concurrency C: max(--num-prompts, 2*C) requests, C in flight at a time (closed loop), after C warm-up requests
of --warmup-steps steps (same size: the worker captures its CUDA graph and warms its allocator for that batch
shape, in a fraction of a full request's time). Reports throughput (requests/s), latency mean / p50 / p99 (s),
the mean worker batch size, and from /metrics: the server's mean per-batch pipeline time and output encoding
(PNG) time, and peak GPU memory (allocated, and reserved: CUDA graph pools included).
With --model-path, the offline `Pipeline.run` of the same request is timed first in this process (median of
--offline-runs after a warm-up), then freed; overhead = server latency at concurrency 1 / offline time - 1, split
into pipeline (server's pipe.run - offline), output encoding, and the rest (HTTP, IPC, batching window).
Issue 6's targets, checked at the end: overhead <= 2% at concurrency 1; throughput at 4 >= throughput at 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import socket
import statistics
import subprocess
import sys
import time

import httpx

SUBJECTS = ["a red fox in snow", "a lighthouse at dusk", "a bowl of ramen", "a city street in rain", "an owl on a branch",
            "a sailboat on a lake", "a mountain village", "a robot reading a book"]
_SAMPLE = re.compile(r'^(\w+)(?:\{([^}]*)\})? (\S+)$')
_START = time.perf_counter()


def log(message: str) -> None:
    print(f"[serving {time.perf_counter() - _START:6.1f}s] {message}", flush=True)


def offline_ms(args) -> float:
    """Median wall time of Pipeline.run for the benchmark's request after a short warm-up, in ms; frees the model."""
    import gc

    import torch

    import fastdit
    from fastdit.pipelines.request import GenerationRequest

    pipe = fastdit.Pipeline.from_pretrained(args.model_path, device=args.device, dtype=args.dtype, load_format=args.load_format)
    width, height = map(int, args.size.split("x"))
    log(f"offline: loaded {args.model_path}")

    def run(steps: int) -> float:
        request = GenerationRequest(prompt=SUBJECTS[0], height=height, width=width, num_inference_steps=steps)
        start = time.perf_counter()
        pipe.run(request, show_progress=False)  # returns PIL images: the GPU work is done (synchronized) here
        return (time.perf_counter() - start) * 1e3

    run(args.warmup_steps)
    times = [run(args.steps) for _ in range(args.offline_runs)]
    del pipe
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    log(f"offline: Pipeline.run {', '.join(f'{t:.1f}' for t in times)} ms")
    return statistics.median(times)


def parse_metrics(text: str) -> dict[tuple[str, str], float]:
    """Prometheus text -> {(name, labels): value}."""
    samples = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match:
            samples[(match.group(1), match.group(2) or "")] = float(match.group(3))
    return samples


def metric_delta(before: dict, after: dict, name: str, labels: str = "") -> float:
    return after.get((name, labels), 0.0) - before.get((name, labels), 0.0)


async def sweep_one(args, concurrency: int) -> dict:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    count = max(args.num_prompts, 2 * concurrency)
    gate = asyncio.Semaphore(concurrency)
    latencies, failures = [], []

    async def one(http: httpx.AsyncClient, i: int, steps: int) -> None:
        body = {"prompt": SUBJECTS[i % len(SUBJECTS)], "size": args.size, "num_inference_steps": steps}
        async with gate:
            start = time.perf_counter()
            response = await http.post(args.base_url + "/v1/images/generations", json=body)
            if response.status_code == 200:
                latencies.append(time.perf_counter() - start)
            else:
                failures.append(f"{response.status_code}: {response.text[:200]}")

    async with httpx.AsyncClient(headers=headers, timeout=3600) as http:
        await asyncio.gather(*(one(http, i, args.warmup_steps) for i in range(concurrency)))  # this batch shape
        latencies.clear()
        before = parse_metrics((await http.get(args.base_url + "/metrics")).text)
        start = time.perf_counter()
        await asyncio.gather(*(one(http, i, args.steps) for i in range(count)))
        duration = time.perf_counter() - start
        after = parse_metrics((await http.get(args.base_url + "/metrics")).text)
    if failures:
        log(f"concurrency {concurrency}: {len(failures)} failed, first: {failures[0]}")
    batches = metric_delta(before, after, "fastdit_batch_images_count")
    stage_s = {
        labels.split('"')[1]: metric_delta(before, after, "fastdit_stage_seconds_sum", labels) / max(batches, 1)
        for (name, labels) in after if name == "fastdit_stage_seconds_sum"
    }
    ordered = sorted(latencies) or [float("nan")]
    gib = {kind: after.get(("fastdit_gpu_memory_bytes", f'kind="{kind}"')) for kind in ("peak", "peak_reserved")}
    return {
        "concurrency": concurrency, "requests": len(latencies), "failed": len(failures), "size": args.size,
        "steps": args.steps, "duration_s": duration, "throughput_rps": len(latencies) / duration,
        "latency_mean_s": statistics.fmean(ordered), "latency_p50_s": statistics.median(ordered),
        "latency_p99_s": ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))],
        "mean_batch_images": metric_delta(before, after, "fastdit_batch_images_sum") / max(batches, 1),
        "server_pipeline_ms": 1e3 * sum(s for k, s in stage_s.items() if k != "encode_output"),
        "server_encode_output_ms": 1e3 * stage_s.get("encode_output", 0.0),
        "peak_allocated_gib": gib["peak"] / 2**30 if gib["peak"] is not None else None,
        "peak_reserved_gib": gib["peak_reserved"] / 2**30 if gib["peak_reserved"] is not None else None,
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(args) -> subprocess.Popen:
    port = free_port()
    args.base_url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "fastdit.serve", "--model-path", args.model_path, "--load-format", args.load_format,
               "--dtype", args.dtype, "--port", str(port), "--max-batch-size", str(args.max_batch_size),
               "--max-queue", str(max(64, args.num_prompts, 2 * max(args.concurrency))), "--log-level", "warning",
               "--shutdown-timeout-s", "5"]  # if this script is stopped mid-sweep, the GPU is free within seconds
    command += ["--device", args.device] if args.device else []
    process = subprocess.Popen(command)
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(args.base_url + "/health", timeout=5).status_code == 200:
                log(f"server up at {args.base_url} (pid {process.pid})")
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    process.kill()
    raise SystemExit(f"serving.py: error: the server did not become healthy (exit code {process.poll()})")


def report(rows: list[dict], offline: float | None) -> dict:
    print(f"{'conc':>4} {'reqs':>4} {'fail':>4} {'req/s':>7} {'mean s':>7} {'p50 s':>7} {'p99 s':>7} {'batch':>5} "
          f"{'pipe ms':>8} {'png ms':>7} {'alloc GiB':>9} {'resv GiB':>8}")
    for r in rows:
        alloc = f"{r['peak_allocated_gib']:.2f}" if r["peak_allocated_gib"] is not None else "-"
        reserved = f"{r['peak_reserved_gib']:.2f}" if r["peak_reserved_gib"] is not None else "-"
        print(f"{r['concurrency']:>4} {r['requests']:>4} {r['failed']:>4} {r['throughput_rps']:>7.3f} {r['latency_mean_s']:>7.3f} "
              f"{r['latency_p50_s']:>7.3f} {r['latency_p99_s']:>7.3f} {r['mean_batch_images']:>5.2f} "
              f"{r['server_pipeline_ms']:>8.1f} {r['server_encode_output_ms']:>7.1f} {alloc:>9} {reserved:>8}")
    result: dict = {"rows": rows, "offline_ms": offline}
    by_c = {r["concurrency"]: r for r in rows}
    if offline is not None and 1 in by_c:
        single = by_c[1]
        latency_ms = single["latency_mean_s"] * 1e3
        result["overhead_c1"] = latency_ms / offline - 1
        parts = {"pipeline": single["server_pipeline_ms"] - offline, "encode_output": single["server_encode_output_ms"]}
        parts["http_ipc_batching"] = latency_ms - offline - sum(parts.values())
        result["overhead_c1_ms"] = parts
        print(f"offline Pipeline.run {offline:.1f} ms; server at concurrency 1 {latency_ms:.1f} ms: overhead "
              f"{100 * result['overhead_c1']:+.2f}% (" + ", ".join(f"{k} {v:+.1f} ms" for k, v in parts.items()) + ")")
        print(f"target overhead <= 2% at concurrency 1: {'PASS' if result['overhead_c1'] <= 0.02 else 'FAIL'}")
    if 1 in by_c and 4 in by_c:
        ratio = by_c[4]["throughput_rps"] / by_c[1]["throughput_rps"]
        result["throughput_c4_over_c1"] = ratio
        print(f"throughput at concurrency 4 / at 1 = {ratio:.3f}; target >= 1: {'PASS' if ratio >= 1 else 'FAIL'}")
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base-url", default="http://127.0.0.1:30000", help="a running server (ignored with --launch)")
    p.add_argument("--api-key", default=None)
    p.add_argument("--launch", action="store_true", help="start (and stop) a server on a free port with the model flags")
    p.add_argument("--model-path", default=None, help="also time the offline pipeline (and what --launch serves)")
    p.add_argument("--load-format", default="dummy")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--max-batch-size", type=int, default=4)
    p.add_argument("--size", default="1024x1024")
    p.add_argument("--steps", type=int, default=28)
    p.add_argument("--warmup-steps", type=int, default=2, help="steps of the warm-up requests (same size and batch)")
    p.add_argument("--num-prompts", type=int, default=8, help="requests per concurrency (at least 2 x concurrency)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    p.add_argument("--offline-runs", type=int, default=2)
    p.add_argument("--json", "--output-json", dest="json", default=None, help="write the results here")
    args = p.parse_args()
    if args.launch and not args.model_path:
        p.error("--launch needs --model-path")
    if not re.fullmatch(r"\d+x\d+", args.size):
        p.error(f"--size {args.size!r} is not allowed: use WIDTHxHEIGHT, e.g. 1024x1024")

    # `timeout` (bench/gpu_session.sh) sends SIGTERM: exit through the finally below, which stops the server.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    offline = offline_ms(args) if args.model_path else None
    server = launch(args) if args.launch else None
    try:
        rows = []
        for concurrency in args.concurrency:
            rows.append(asyncio.run(sweep_one(args, concurrency)))
            log(f"concurrency {concurrency}: {rows[-1]['requests']} requests in {rows[-1]['duration_s']:.1f} s")
    finally:
        if server is not None:
            server.terminate()  # SIGTERM: the server's graceful stop
            server.wait(timeout=120)
    result = report(rows, offline)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
