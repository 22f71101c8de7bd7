"""python -m fastdit.serve: the OpenAI-compatible HTTP server.

    python -m fastdit.serve --model-path flux-tiny --load-format dummy --device cpu        # CPU, seconds
    python -m fastdit.serve --model-path black-forest-labs/FLUX.1-dev --api-key "$KEY" --max-batch-size 4

Binds --host:--port first (a port in use fails in milliseconds, not after loading), starts the worker process (it
loads the pipeline), then serves HTTP. A bad flag, an address it cannot listen on, or a model that cannot load
ends the command with one line on stderr and exit status 2 (flags) or 1 (listen, load); Ctrl-C or SIGTERM while
loading ends it with status 130. SIGINT/SIGTERM while serving is a graceful stop: no new connections, requests
in flight are answered (up to --shutdown-timeout-s), the worker exits, status 0.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys

from fastdit.distributed.config import add_parallel_flags, config_from_flags
from fastdit.server.config import DTYPES, LOAD_FORMATS, ServerConfig, WorkerOptions


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse prints usage + message; one line is enough
        self.exit(2, f"fastdit.serve: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _OneLineParser(prog="python -m fastdit.serve", description="OpenAI-compatible image/video generation server")
    p.add_argument("--model-path", required=True, help="built-in id (flux-tiny, black-forest-labs/FLUX.1-dev), folder or hub id")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=30000)
    p.add_argument("--api-key", default=None, help="require \"Authorization: Bearer KEY\" on /v1/* and /models")
    p.add_argument("--max-queue", type=int, default=64, help="requests that may wait for the worker; more get 429")
    p.add_argument("--max-batch-size", type=int, default=4, help="images per worker batch (and the largest n)")
    p.add_argument("--batch-wait-ms", type=float, default=50.0,
                   help="after a batch of k images, how long the next waits to reach k again (0: never); server/engine.py")
    p.add_argument("--max-pixels", type=int, default=2048 * 2048, help="largest width*height a request may ask")
    p.add_argument("--max-body-bytes", type=int, default=64 * 1024 * 1024, help="larger request bodies get 413")
    p.add_argument("--result-ttl-s", type=float, default=3600.0, help="seconds stored images/videos stay downloadable")
    p.add_argument("--max-stored-mb", type=int, default=4096,
                   help="memory for url-format images and finished videos; beyond it the oldest go before their TTL")
    p.add_argument("--load-format", choices=LOAD_FORMATS, default="auto")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when visible)")
    p.add_argument("--shutdown-timeout-s", type=float, default=60.0,
                   help="on SIGINT/SIGTERM, seconds requests in flight may take to finish before they are cut off")
    p.add_argument("--dtype", choices=DTYPES, default="auto", help="auto: bfloat16 on a GPU, float32 on a CPU")
    p.add_argument("--attention-backend", default="auto")
    p.add_argument("--kernel-backend", default="auto", choices=("auto", "cuda", "triton", "torch"))
    p.add_argument("--disable-cuda-graph", action="store_true",
                   help="run the denoising steps eagerly (default: one CUDA graph per batch shape on a GPU)")
    p.add_argument("--enable-torch-compile", action="store_true",
                   help="torch.compile the DiT (the first batch of each new shape compiles, ~1-2 min)")
    p.add_argument("--enable-test-faults", action="store_true",
                   help="honour the request field fastdit_test_fault (tests only: lets a client crash the worker)")
    add_parallel_flags(p)  # --num-gpus, --ulysses-degree, --ring-degree, --enable-cfg-parallel, --tp-size
    p.add_argument("--log-level", default="warning", choices=("critical", "error", "warning", "info", "debug"),
                   help="uvicorn's access/error log level")
    return p


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    worker = WorkerOptions(
        model_path=args.model_path, load_format=args.load_format, device=args.device, dtype=args.dtype,
        attention_backend=args.attention_backend, kernel_backend=args.kernel_backend,
        cuda_graph=False if args.disable_cuda_graph else None, torch_compile=args.enable_torch_compile,
        enable_test_faults=args.enable_test_faults, parallel=config_from_flags(args),
    )
    return ServerConfig(
        worker=worker, host=args.host, port=args.port, api_key=args.api_key, max_queue=args.max_queue,
        max_batch_size=args.max_batch_size, batch_wait_ms=args.batch_wait_ms, max_pixels=args.max_pixels, max_body_bytes=args.max_body_bytes,
        result_ttl_s=args.result_ttl_s, max_stored_mb=args.max_stored_mb, shutdown_timeout_s=args.shutdown_timeout_s,
    )


def listen(host: str, port: int) -> socket.socket:
    """A bound TCP socket for host:port (uvicorn listens on it). Raises RuntimeError with one line."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise RuntimeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart at once after a stop (TIME_WAIT)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise RuntimeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def _interrupt(signum: int, _frame) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _already_handled(_signum: int, _frame) -> None:
    """uvicorn re-raises the signal that stopped it once its graceful shutdown is over; that stop is done."""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))

    import uvicorn

    from fastdit.log import get_logger
    from fastdit.server.app import create_app
    from fastdit.server.worker import WorkerHandle

    signal.signal(signal.SIGTERM, _interrupt)  # while loading, SIGTERM stops like Ctrl-C: worker killed, one line
    handle = WorkerHandle(config.worker)
    try:
        sock = listen(config.host, config.port)
        info = handle.start(config.worker_load_timeout_s)
    except RuntimeError as exc:
        print(f"fastdit.serve: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        handle.stop(timeout_s=0)  # a loading worker has nothing to finish
        print(f"fastdit.serve: interrupted ({exc or 'SIGINT'}) while loading {config.model_name!r}", file=sys.stderr)
        return 130
    get_logger().info(
        "serving %s (%s, %s on %s) at http://%s:%d, worker pid %d",
        config.model_name, info["task"], info["dtype"], info["device"], config.host, config.port, info["pid"],
    )
    server = uvicorn.Server(uvicorn.Config(
        create_app(config, handle), log_level=args.log_level, timeout_graceful_shutdown=config.shutdown_timeout_s,
    ))
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _already_handled)
    try:
        server.run(sockets=[sock])
    finally:
        handle.stop()
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
