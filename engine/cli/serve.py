"""``ragrt serve REPO``: run tritonserver on a ragrt model repository until Ctrl-C/SIGTERM."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ragrt.serving.security import GrpcTls, Restriction
    from ragrt.serving.server import TritonServer


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
    sec = p.add_argument_group(
        "access control (see README, Security)",
        "tritonserver checks a header on the API groups you restrict; gRPC can use TLS. HTTP "
        "has no TLS and the metrics port no access control: keep them behind a proxy / off "
        "untrusted networks.",
    )
    sec.add_argument(
        "--api-key-file",
        metavar="PATH",
        help="require header 'ragrt-api-key: <the key in PATH>' on every API but health "
        "(also from $RAGRT_API_KEY); clients: RagClient(api_key=...), ragrt ask --api-key-file",
    )
    sec.add_argument(
        "--restrict",
        action="append",
        default=[],
        metavar="APIS:HEADER=VALUE",
        help="require HEADER=VALUE on these API groups (comma-separated: health, metadata, "
        "inference, shared-memory, model-config, model-repository, statistics, trace, "
        "logging), over HTTP and gRPC; repeatable, e.g. "
        "model-repository,shared-memory,statistics,trace,logging:admin-key=SECRET",
    )
    sec.add_argument("--grpc-tls-cert", metavar="PEM", help="serve gRPC over TLS: certificate")
    sec.add_argument("--grpc-tls-key", metavar="PEM", help="serve gRPC over TLS: private key")
    sec.add_argument(
        "--grpc-tls-client-ca",
        metavar="PEM",
        help="mutual TLS: accept only gRPC clients with a certificate signed by this CA",
    )
    sec.add_argument(
        "--no-metrics", action="store_true", help="no Prometheus metrics port (it has no auth)"
    )
    p.set_defaults(func=run)


def security_settings(args: argparse.Namespace) -> tuple[list[Restriction], GrpcTls | None]:
    """The restrictions and gRPC TLS settings of ``ragrt serve``'s flags."""
    from ragrt.serving.security import GrpcTls, Restriction, api_key_restriction, read_key_file

    restrictions = [Restriction.parse(r) for r in args.restrict]
    key = read_key_file(args.api_key_file) if args.api_key_file else None
    if key is None and os.environ.get("RAGRT_API_KEY", "").strip():
        key = os.environ["RAGRT_API_KEY"].strip()
    if key is not None:
        restrictions.append(api_key_restriction(key, restrictions))
    tls = GrpcTls.of(args.grpc_tls_cert, args.grpc_tls_key, args.grpc_tls_client_ca)
    return restrictions, tls


def run(args: argparse.Namespace) -> int:
    from ragrt.serving.server import TritonServer
    from ragrt.triton_models.verify import check_servable

    check_servable(args.repo)  # never serve a staging directory a killed build-repo left
    restrictions, tls = security_settings(args)
    default_log = args.log_file is None
    if default_log:
        remove_old_logs()
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
        restrictions=restrictions,
        grpc_tls=tls,
        metrics=not args.no_metrics,
    )
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        received.append(signum)
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    failed = False
    try:
        print(f"starting tritonserver ({srv.install.binary}) on {srv.repo} ...", flush=True)
        srv.start()
        srv.wait_ready(args.timeout, cancel=stop.is_set)
        models = ", ".join(sorted(srv.model_states()))
        print(f"ready: models {models}")
        grpc = f"grpcs://{srv.grpc_url}" if tls is not None else srv.grpc_url
        print(f"  HTTP    http://{srv.http_url}")
        print(f"  gRPC    {grpc}" + (" (TLS)" if tls is not None else ""))
        if srv.metrics:
            print(f"  metrics {srv.metrics_url}")
        for r in restrictions:
            print(f"  restricted: {', '.join(r.apis)} need header '{r.header}'")
        if srv.log_file is not None:
            print(f"  log     {srv.log_file}")
        print(f'ask it:   ragrt ask --url {grpc} "your question"')
        print("Ctrl-C or SIGTERM stops the server.", flush=True)
        watch(srv, stop)
        name = signal.Signals(received[0]).name if received else "signal"
        print(f"{name}: stopping tritonserver ...", file=sys.stderr, flush=True)
    except Exception:
        failed = True  # the log stays for reading (its path is in the error)
        raise
    finally:
        rc = srv.stop()
        srv.close()
        for s, h in old.items():
            signal.signal(s, h)
        if default_log and srv.log_file is not None and not failed:
            srv.log_file.unlink(missing_ok=True)  # a failure's log stays (its path was shown)
    print(f"tritonserver stopped (exit code {rc})", file=sys.stderr)
    return 0


def watch(srv: TritonServer, stop: threading.Event, every: float = 0.5) -> None:
    """Until ``stop`` is set: raise :class:`ServerError` when the server exits on its own or
    one of its models' backend process dies (Triton would keep calling that model READY while
    failing every request to it), so a supervisor (systemd, Kubernetes) can restart it."""
    from ragrt.errors import ServerError

    where = f" (log: {srv.log_file})" if srv.log_file is not None else ""
    while not stop.wait(every):
        if not srv.alive():
            code = srv.proc.returncode if srv.proc is not None else None
            raise ServerError(
                f"tritonserver exited unexpectedly (code {code}){where}; end of its log:\n"
                f"{srv.log_tail()}"
            )
        dead = srv.dead_models()
        if dead:
            names = ", ".join(f"{m} (instance {i})" for m, i in sorted(dead.items()))
            raise ServerError(
                f"the backend process of model(s) {names} died (out of memory?): every request "
                f"to it would fail, so ragrt serve stops the server{where}"
            )


def remove_old_logs(keep: int = 4) -> list[Path]:
    """Delete the default logs (``$TMPDIR/ragrt-tritonserver-<pid>.log``) of earlier runs that
    are no longer running, keeping the ``keep`` newest (logs of failed runs, worth reading);
    a run that stops cleanly deletes its own."""
    tmp = Path(tempfile.gettempdir())
    old = []
    for f in tmp.glob("ragrt-tritonserver-*.log"):
        pid = f.stem.rsplit("-", 1)[1]
        if not pid.isdigit() or int(pid) == os.getpid() or _running(int(pid)):
            continue
        try:
            old.append((f.stat().st_mtime, f))
        except OSError:
            continue
    old.sort(reverse=True)
    removed = []
    for _, f in old[keep:]:
        try:
            f.unlink()
            removed.append(f)
        except OSError:
            continue
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
