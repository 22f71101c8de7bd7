"""Serving benchmark (like SGLang's bench_serving): N image requests at concurrency C against fastdit.serve.

    # start a server, measure the offline pipeline for the same request, sweep concurrency, stop the server:
    python bench/serving.py --launch --model-path black-forest-labs/FLUX.1-dev --load-format dummy \
        --size 1024x1024 --steps 28 --num-prompts 8 --concurrency 1 4 --output-json serving.json
    # or against a server already running:
    python bench/serving.py --base-url http://127.0.0.1:30000 --size 1024x1024 --concurrency 1 4

Per concurrency: throughput (requests/s, images/s), latency mean / p50 / p99 (s), peak GPU memory from /metrics.
With --launch (or --model-path), the offline `Pipeline.run` time of the same request is measured first in this
process, so overhead = server latency at concurrency 1 / offline time - 1. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time

import httpx

SUBJECTS = ["a red fox in snow", "a lighthouse at dusk", "a bowl of ramen", "a city street in rain", "an owl on a branch",
            "a sailboat on a lake", "a mountain village", "a robot reading a book"]


def offline_ms(args) -> float:
    """Median wall time of Pipeline.run for the benchmark's request (after one warm-up run), in ms."""
    import torch

    import fastdit
    from fastdit.pipelines.request import GenerationRequest

    pipe = fastdit.Pipeline.from_pretrained(args.model_path, device=args.device, dtype=args.dtype, load_format=args.load_format)
    width, height = map(int, args.size.split("x"))
    request = GenerationRequest(prompt=SUBJECTS[0], height=height, width=width, num_inference_steps=args.steps)
    times = []
    for _ in range(1 + args.offline_runs):
        start = time.perf_counter()
        pipe.run(request, show_progress=False)
        times.append((time.perf_counter() - start) * 1e3)
    del pipe
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return statistics.median(times[1:])


async def sweep_one(args, concurrency: int) -> dict:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    width, height = map(int, args.size.split("x"))
    gate = asyncio.Semaphore(concurrency)
    latencies, failures = [], 0

    async def one(http: httpx.AsyncClient, i: int) -> None:
        nonlocal failures
        body = {"prompt": SUBJECTS[i % len(SUBJECTS)], "size": args.size, "num_inference_steps": args.steps}
        async with gate:
            start = time.perf_counter()
            response = await http.post(args.base_url + "/v1/images/generations", json=body)
            if response.status_code == 200:
                latencies.append(time.perf_counter() - start)
            else:
                failures += 1

    async with httpx.AsyncClient(headers=headers, timeout=3600) as http:
        # Warm-up at this concurrency (its batch shapes), not counted.
        await asyncio.gather(*(one(http, i) for i in range(concurrency)))
        latencies.clear()
        failures = 0
        start = time.perf_counter()
        await asyncio.gather(*(one(http, i) for i in range(args.num_prompts)))
        duration = time.perf_counter() - start
        metrics = (await http.get(args.base_url + "/metrics")).text
    peak = [float(line.split()[-1]) for line in metrics.splitlines() if line.startswith('fastdit_gpu_memory_bytes{kind="peak"}')]
    ordered = sorted(latencies) or [float("nan")]
    return {
        "concurrency": concurrency, "requests": len(latencies), "failed": failures, "size": f"{width}x{height}",
        "steps": args.steps, "duration_s": duration, "throughput_rps": len(latencies) / duration,
        "latency_mean_s": statistics.fmean(ordered), "latency_p50_s": ordered[len(ordered) // 2],
        "latency_p99_s": ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))],
        "peak_gpu_memory_gib": peak[0] / 2**30 if peak else None,
    }


def launch(args) -> subprocess.Popen:
    port = args.base_url.rsplit(":", 1)[1]
    command = [sys.executable, "-m", "fastdit.serve", "--model-path", args.model_path, "--load-format", args.load_format,
               "--dtype", args.dtype, "--port", port, "--max-batch-size", str(args.max_batch_size),
               "--max-queue", str(max(64, args.num_prompts))] + (["--device", args.device] if args.device else [])
    process = subprocess.Popen(command)
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(args.base_url + "/health", timeout=5).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(1)
    process.kill()
    raise SystemExit(f"the server did not become healthy (exit code {process.poll()})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base-url", default="http://127.0.0.1:30000")
    p.add_argument("--api-key", default=None)
    p.add_argument("--launch", action="store_true", help="start (and stop) a server with the model flags below")
    p.add_argument("--model-path", default=None, help="also measure the offline pipeline (and what --launch serves)")
    p.add_argument("--load-format", default="dummy")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--max-batch-size", type=int, default=4)
    p.add_argument("--size", default="1024x1024")
    p.add_argument("--steps", type=int, default=28)
    p.add_argument("--num-prompts", type=int, default=8)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    p.add_argument("--offline-runs", type=int, default=3)
    p.add_argument("--output-json", default="bench_serving.json")
    args = p.parse_args()
    if args.launch and not args.model_path:
        p.error("--launch needs --model-path")

    offline = offline_ms(args) if args.model_path else None
    server = launch(args) if args.launch else None
    try:
        rows = [asyncio.run(sweep_one(args, c)) for c in args.concurrency]
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=60)
    print(f"{'conc':>4} {'reqs':>4} {'fail':>4} {'req/s':>7} {'mean s':>7} {'p50 s':>7} {'p99 s':>7} {'peak GiB':>8}")
    for r in rows:
        peak = f"{r['peak_gpu_memory_gib']:.2f}" if r["peak_gpu_memory_gib"] is not None else "-"
        print(f"{r['concurrency']:>4} {r['requests']:>4} {r['failed']:>4} {r['throughput_rps']:>7.3f} {r['latency_mean_s']:>7.3f} "
              f"{r['latency_p50_s']:>7.3f} {r['latency_p99_s']:>7.3f} {peak:>8}")
    result = {"rows": rows, "offline_ms": offline}
    single = next((r for r in rows if r["concurrency"] == 1), None)
    if offline is not None and single is not None:
        result["overhead_c1"] = single["latency_mean_s"] * 1e3 / offline - 1
        print(f"offline Pipeline.run {offline:.1f} ms; server at concurrency 1 {single['latency_mean_s'] * 1e3:.1f} ms: "
              f"overhead {100 * result['overhead_c1']:+.2f}%")
    with open(args.output_json, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.output_json}")


if __name__ == "__main__":
    main()
