"""``ragrt serve REPO``: run tritonserver on a ragrt model repository until Ctrl-C/SIGTERM."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve a model repository with tritonserver",
        description=(
            "Start tritonserver on REPO (from `ragrt triton build-repo`): the tritonserver on "
            "PATH, or the one bundled by nvidia-pytriton with its Python backend set up. Waits "
            "until every model is ready, prints the endpoints, and stops the server cleanly on "
            "Ctrl-C or SIGTERM."
        ),
    )
    p.add_argument("repo", type=Path, metavar="REPO", help="model repository")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1; 0.0.0.0 for every interface)",
    )
    p.add_argument(
        "--http-port", type=int, default=8000, help="HTTP port (default 8000; 0 = any free)"
    )
    p.add_argument(
        "--grpc-port", type=int, default=8001, help="gRPC port (default 8001; 0 = any free)"
    )
    p.add_argument(
        "--metrics-port", type=int, default=8002, help="Prometheus metrics port (default 8002)"
    )
    p.add_argument(
        "--tritonserver",
        metavar="PATH",
        help="tritonserver binary (default: PATH, then nvidia-pytriton)",
    )
    p.add_argument(
        "--log-file",
        metavar="PATH",
        help="server log file ('-' = this terminal; default: a temporary file, shown on failure)",
    )
    p.add_argument(
        "--log-verbose", type=int, default=0, metavar="N", help="tritonserver --log-verbose level"
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        metavar="S",
        help="seconds to wait for the models to load (default 600)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ragrt.errors import ServerError
    from ragrt.serving.server import TritonServer
    from ragrt.triton_models.verify import check_servable

    check_servable(args.repo)  # never serve a staging directory a killed build-repo left
    srv = TritonServer(
        args.repo,
        host=args.host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        tritonserver=args.tritonserver,
        log_file=args.log_file
        or Path(tempfile.gettempdir()) / f"ragrt-tritonserver-{os.getpid()}.log",
        log_verbose=args.log_verbose,
    )
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        received.append(signum)
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        print(f"starting tritonserver ({srv.install.binary}) on {srv.repo} ...", flush=True)
        srv.start()
        srv.wait_ready(args.timeout, cancel=stop.is_set)
        models = ", ".join(sorted(srv.model_states()))
        print(f"ready: models {models}")
        print(f"  HTTP    http://{srv.http_url}")
        print(f"  gRPC    {srv.grpc_url}")
        print(f"  metrics {srv.metrics_url}")
        if srv.log_file is not None:
            print(f"  log     {srv.log_file}")
        print(f'ask it:   ragrt ask --url {srv.grpc_url} "your question"')
        print("Ctrl-C or SIGTERM stops the server.", flush=True)
        while not stop.wait(0.5):
            if not srv.alive():
                raise ServerError(
                    f"tritonserver exited unexpectedly (code {srv.proc.returncode}); end of "
                    f"its log:\n{srv.log_tail()}"
                )
        name = signal.Signals(received[0]).name if received else "signal"
        print(f"{name}: stopping tritonserver ...", file=sys.stderr, flush=True)
    finally:
        rc = srv.stop()
        srv.close()
        for s, h in old.items():
            signal.signal(s, h)
    print(f"tritonserver stopped (exit code {rc})", file=sys.stderr)
    return 0
