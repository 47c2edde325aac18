"""Start, watch and stop a real ``tritonserver`` on a ragrt model repository.

Where the binary comes from, in order: an explicit path, ``$RAGRT_TRITONSERVER``, a
``tritonserver`` on ``PATH`` (the NGC container: its own backends are used), or the one bundled by
``nvidia-pytriton`` (``pip install 'ragrt[serve]'``). For the bundled one, a backend directory is
assembled in a temporary folder: the Python backend library plus the
``triton_python_backend_stub`` built for this interpreter's Python version. The stub embeds
libpython and finds packages through the ``python3`` on ``PATH`` (``PYTHONPATH`` is ignored), so
this interpreter's ``bin/`` goes first on ``PATH``, and the bundle's shared libraries
(``nvidia_pytriton.libs``) go on ``LD_LIBRARY_PATH``.

The server runs in its own session (Ctrl-C in a terminal reaches ragrt, which then stops the
server in order); its log goes to a file whose tail is quoted when it fails to start.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ragrt.errors import InputError, ServerError
from ragrt.serving import processes
from ragrt.serving.security import GrpcTls, Restriction, check_restrictions, server_args

log = logging.getLogger(__name__)

DEFAULT_HTTP_PORT = 8000
DEFAULT_GRPC_PORT = 8001
DEFAULT_METRICS_PORT = 8002


@dataclass
class TritonInstall:
    """A tritonserver binary and what it needs to run the Python backend."""

    binary: Path
    bundled: bool  # the nvidia-pytriton bundle (needs the backend dir + env set up here)
    backend_lib_dir: Path | None = None  # bundle: folder with libtriton_python.so
    stub: Path | None = None  # bundle: triton_python_backend_stub for this Python
    libs: Path | None = None  # bundle: nvidia_pytriton.libs


def _bundle() -> TritonInstall | None:
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(list(spec.submodule_search_locations)[0])
    ts = root / "tritonserver"
    binary = ts / "bin" / "tritonserver"
    if not binary.is_file():
        return None
    ver = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = ts / "python_backend_stubs" / ver / "triton_python_backend_stub"
    if not stub.is_file():
        raise ServerError(
            f"nvidia-pytriton at {root} has no Python backend stub for Python {ver} "
            f"({stub}); use a Python version it ships a stub for, or a tritonserver on PATH"
        )
    libs = root.parent / "nvidia_pytriton.libs"
    return TritonInstall(
        binary, True, ts / "backends" / "python", stub, libs if libs.is_dir() else None
    )


def find_tritonserver(explicit: str | os.PathLike | None = None) -> TritonInstall:
    """Locate tritonserver (see the module docstring for the order)."""
    for cand in (explicit, os.environ.get("RAGRT_TRITONSERVER")):
        if cand:
            p = Path(cand)
            if not (p.is_file() and os.access(p, os.X_OK)):
                raise InputError(f"tritonserver {p} does not exist or is not executable")
            b = _bundle()
            if b is not None and p.resolve() == b.binary.resolve():
                return b
            return TritonInstall(p, False)
    found = shutil.which("tritonserver")
    if found:
        b = _bundle()
        if b is not None and Path(found).resolve() == b.binary.resolve():
            return b
        return TritonInstall(Path(found), False)
    b = _bundle()
    if b is not None:
        return b
    raise ServerError(
        "no tritonserver found: install the bundled one with `pip install 'ragrt[serve]'` "
        "(nvidia-pytriton), put tritonserver on PATH, or run in the NGC Triton container "
        "(nvcr.io/nvidia/tritonserver:<yy.mm>-py3)"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free right now on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_in_use(host: str, port: int) -> bool:
    """Whether another socket already holds ``port`` on ``host`` (or on every interface).

    SO_REUSEADDR as tritonserver sets it: a port left in TIME_WAIT by a server that just
    stopped counts as free, one that some process listens on does not."""
    import errno

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return True
            raise InputError(f"cannot listen on {host} port {port}: {e.strerror or e}") from None
    return False


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: SIGTERM the server when the process (thread) that started it dies, so a killed
    ragrt or test run never leaves an orphan tritonserver behind."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - not Linux: best effort
        pass


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


class TritonServer:
    """One tritonserver process serving ``repo``.

    Ports given as 0 are picked free at :meth:`start`. Use as a context manager, or call
    :meth:`start` / :meth:`wait_ready` / :meth:`stop`::

        with TritonServer("repo", http_port=0, grpc_port=0, metrics_port=0) as srv:
            client = RagClient(srv.grpc_url)
    """

    def __init__(
        self,
        repo: str | os.PathLike,
        *,
        host: str = "127.0.0.1",
        http_port: int = DEFAULT_HTTP_PORT,
        grpc_port: int = DEFAULT_GRPC_PORT,
        metrics_port: int = DEFAULT_METRICS_PORT,
        tritonserver: str | os.PathLike | None = None,
        backend_directory: str | os.PathLike | None = None,
        log_file: str | os.PathLike | None = None,
        log_verbose: int = 0,
        exit_timeout: int = 10,
        extra_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        die_with_parent: bool = True,
        restrictions: Sequence[Restriction] = (),
        grpc_tls: GrpcTls | None = None,
        metrics: bool = True,
    ):
        self.repo = Path(repo).resolve()
        if not self.repo.is_dir():
            raise InputError(
                f"model repository {self.repo} does not exist; build it with "
                "`ragrt triton build-repo`"
            )
        if not any(self.repo.glob("*/config.pbtxt")):
            raise InputError(
                f"{self.repo} holds no models (no */config.pbtxt); build it with "
                "`ragrt triton build-repo`"
            )
        for name, port in (("http", http_port), ("grpc", grpc_port), ("metrics", metrics_port)):
            if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
                raise InputError(
                    f"--{name}-port must be 0..65535 (0 = any free port), got {port!r}"
                )
        self.host = host
        self.ports = {"http": http_port, "grpc": grpc_port, "metrics": metrics_port}
        self.install = find_tritonserver(tritonserver)
        self.backend_directory = Path(backend_directory) if backend_directory else None
        self.log_to_console = str(log_file) == "-"
        self.log_file = Path(log_file) if log_file and not self.log_to_console else None
        self.log_verbose = int(log_verbose)
        self.exit_timeout = int(exit_timeout)
        self.extra_args = list(extra_args)
        self.extra_env = dict(env or {})
        self.die_with_parent = die_with_parent
        #: API groups behind a header (sent by this class's own readiness checks too)
        self.restrictions = check_restrictions(restrictions)
        self.grpc_tls = grpc_tls
        self.metrics = metrics
        self.proc: subprocess.Popen | None = None
        self._tmp: Path | None = None
        self._log_handle: IO[bytes] | None = None
        #: the Python backend stubs seen once the models were ready (instance name -> stub)
        self.stubs: dict[str, processes.Stub] = {}
        self._shm_regions: set[str] = set()

    # -- addresses -------------------------------------------------------------------------
    @property
    def http_url(self) -> str:
        return f"{_client_host(self.host)}:{self.ports['http']}"

    @property
    def grpc_url(self) -> str:
        return f"{_client_host(self.host)}:{self.ports['grpc']}"

    @property
    def metrics_url(self) -> str:
        return f"http://{_client_host(self.host)}:{self.ports['metrics']}/metrics"

    # -- lifecycle -------------------------------------------------------------------------
    def _backend_dir(self) -> Path | None:
        if self.backend_directory is not None:
            return self.backend_directory
        inst = self.install
        if not inst.bundled:
            return None  # the server's own default (/opt/tritonserver/backends)
        assert self._tmp is not None and inst.backend_lib_dir is not None and inst.stub is not None
        py = self._tmp / "backends" / "python"
        if not py.is_dir():
            py.mkdir(parents=True)
            for f in inst.backend_lib_dir.iterdir():
                if f.is_file():
                    shutil.copy2(f, py / f.name)
            shutil.copy2(inst.stub, py / inst.stub.name)
        return py.parent

    def command(self) -> list[str]:
        """The tritonserver command line (after :meth:`start` picked the ports)."""
        cmd = [
            str(self.install.binary),
            "--model-repository",
            str(self.repo),
            "--http-address",
            self.host,
            "--grpc-address",
            self.host,
            "--http-port",
            str(self.ports["http"]),
            "--grpc-port",
            str(self.ports["grpc"]),
            "--metrics-port",
            str(self.ports["metrics"]),
            "--exit-timeout-secs",
            str(self.exit_timeout),
            "--log-verbose",
            str(self.log_verbose),
        ]
        bd = self._backend_dir()
        if bd is not None:
            cmd += ["--backend-directory", str(bd)]
        cmd += server_args(self.restrictions, self.grpc_tls, self.metrics)
        return cmd + self.extra_args

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)  # the stub ignores it; keep the two worlds consistent
        # the stub finds site-packages through the python3 on PATH: this interpreter's first
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        if self.install.bundled and self.install.libs is not None:
            env["LD_LIBRARY_PATH"] = os.pathsep.join(
                x for x in (str(self.install.libs), env.get("LD_LIBRARY_PATH", "")) if x
            )
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        env.update(self.extra_env)
        return env

    def start(self) -> TritonServer:
        if self.proc is not None and self.proc.poll() is None:
            raise ServerError("this tritonserver is already running")
        if self._tmp is None:
            self._tmp = Path(tempfile.mkdtemp(prefix="ragrt-triton-"))
        for name, port in self.ports.items():
            if port == 0:
                self.ports[name] = free_port(_client_host(self.host))
        self.check_ports()
        self.stubs = {}
        if self.log_to_console:
            self._log_handle = None
        else:
            if self.log_file is None:
                self.log_file = self._tmp / "tritonserver.log"
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            self._log_handle = open(self.log_file, "ab")
        cmd = self.command()
        log.info("starting %s", " ".join(cmd))
        self.proc = subprocess.Popen(
            cmd,
            env=self.environment(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT if self._log_handle is not None else None,
            start_new_session=True,
            preexec_fn=_die_with_parent if self.die_with_parent else None,
        )
        return self

    def used_ports(self) -> dict[str, int]:
        """The ports the server listens on (the metrics port only when metrics are on)."""
        return {n: p for n, p in self.ports.items() if n != "metrics" or self.metrics}

    def check_ports(self) -> None:
        """Refuse (:class:`InputError`, naming the port) ports that repeat or that another
        process holds: tritonserver would exit on them only after loading every model, and
        meanwhile whatever holds the HTTP port would answer its readiness checks."""
        seen: dict[int, str] = {}
        for name, port in self.used_ports().items():
            if port in seen:
                raise InputError(
                    f"--{seen[port]}-port and --{name}-port are both {port}: give each its own "
                    "port (0 = any free port)"
                )
            seen[port] = name
        for name, port in self.used_ports().items():
            if port_in_use(self.host, port):
                raise InputError(
                    f"port {port} (--{name}-port) is already in use on {self.host}: another "
                    f"process listens there (another server still running?); stop it, choose "
                    f"another port, or pass --{name}-port 0 for any free port"
                )

    def answering_is_ours(self) -> bool:
        """Whether the process listening on the HTTP port is the server started here (true
        where ``/proc`` cannot tell)."""
        return (
            self.proc is not None
            and processes.listens_on(self.proc.pid, self.ports["http"]) is not False
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        if self.log_file is None or not self.log_file.is_file():
            return ""
        with open(self.log_file, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode("utf-8", "replace")
        return "\n".join(text.splitlines()[-lines:])

    def log_problems(self) -> list[str]:
        """The reasons in the log why models failed to load or the server gave up (one line
        each, Python tracebacks cut off), e.g. ``model 'rag' failed to load: ArtifactError: ...``."""
        import re

        if self.log_file is None or not self.log_file.is_file():
            return []
        out = []
        text = self.log_file.read_text(encoding="utf-8", errors="replace")
        for m in re.finditer(
            r"failed to load '([^']+)' version \d+: (.*?)(?:\\n\\nAt:|\"$)", text, re.M
        ):
            msg = m.group(2).replace("Internal: ", "", 1).replace("\\n", " ").strip()
            out.append(f"model '{m.group(1)}' failed to load: {msg}")
        for m in re.finditer(r"^error: (.*)$", text, re.M):
            out.append(m.group(1).strip())
        return list(dict.fromkeys(out))

    def _failure(self, what: str) -> str:
        problems = self.log_problems()
        where = f" (log: {self.log_file})" if self.log_file is not None else ""
        if problems:
            return f"{what}{where}:\n  " + "\n  ".join(problems)
        return f"{what}; end of its log{where}:\n{self.log_tail()}"

    def _get(self, path: str, method: str = "GET", timeout: float = 2.0) -> tuple[int, bytes]:
        url = f"http://{self.http_url}{path}"
        req = urllib.request.Request(
            url,
            method=method,
            data=b"{}" if method == "POST" else None,
            headers={r.header: r.value for r in self.restrictions},
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def ready(self) -> bool:
        try:
            return self._get("/v2/health/ready", timeout=1.0)[0] == 200
        except (OSError, urllib.error.URLError):
            return False

    def model_states(self) -> dict[str, str]:
        """Model name -> state (READY, UNAVAILABLE, ...) from the repository index."""
        code, body = self._get("/v2/repository/index", method="POST")
        if code != 200:
            raise ServerError(f"the repository index answered HTTP {code}: {body[:200]!r}")
        return {m["name"]: m.get("state", "") for m in json.loads(body or b"[]")}

    def wait_ready(
        self,
        timeout: float = 300.0,
        models: Sequence[str] | None = None,
        cancel: Callable[[], bool] | None = None,
    ) -> TritonServer:
        """Block until the server and its models are ready; on failure stop it and raise a
        :class:`ServerError` quoting the end of its log. ``cancel()`` returning true stops the
        server and raises KeyboardInterrupt."""
        if self.proc is None:
            raise ServerError("start() the server first")
        deadline = time.monotonic() + timeout
        while True:
            if cancel is not None and cancel():
                self.stop()
                raise KeyboardInterrupt
            rc = self.proc.poll()
            if rc is not None:
                msg = self._failure(f"tritonserver exited with code {rc} before it was ready")
                self.stop()
                raise ServerError(msg)
            if self.ready() and self.answering_is_ours():
                break
            if time.monotonic() > deadline:
                msg = self._failure(f"tritonserver was not ready after {timeout:.0f} s")
                self.stop()
                raise ServerError(msg)
            time.sleep(0.2)
        states = self.model_states()
        want = list(models) if models is not None else list(states)
        bad = {m: states.get(m, "missing") for m in want if states.get(m) != "READY"}
        if bad:
            msg = self._failure(f"models not ready: {bad}")
            self.stop()
            raise ServerError(msg)
        rc = self.proc.poll()
        if rc is not None:
            msg = self._failure(f"tritonserver exited with code {rc} right after it was ready")
            self.stop()
            raise ServerError(msg)
        foreign = [
            f"{port} (--{name}-port)"
            for name, port in self.used_ports().items()
            if processes.listens_on(self.proc.pid, port) is False
        ]
        if foreign:
            msg = self._failure(
                f"tritonserver is not the process listening on port(s) {', '.join(foreign)}"
            )
            self.stop()
            raise ServerError(msg)
        self.stubs = {s.instance: s for s in processes.python_stubs(self.proc.pid)}
        self._shm_regions |= {s.shm_region for s in self.stubs.values()}
        return self

    def dead_models(self) -> dict[str, str]:
        """Models whose Python backend stub (seen when the server became ready) has died and
        not been replaced: model name -> instance name. Triton still calls such a model READY,
        but every request to it fails (``Stub process '<instance>' is not healthy``)."""
        if self.proc is None or not self.stubs:
            return {}
        now = {s.instance: s for s in processes.python_stubs(self.proc.pid)}
        self._shm_regions |= {s.shm_region for s in now.values()}
        dead = {}
        for inst, stub in self.stubs.items():
            if inst in now and processes.alive(now[inst].pid):
                self.stubs[inst] = now[inst]
            elif not processes.alive(stub.pid):
                dead[stub.model] = inst
        return dead

    def stop(self, timeout: float | None = None) -> int | None:
        """Ask the server to exit (SIGTERM: it drains in-flight requests for up to
        ``exit_timeout`` s), kill it if it does not, and remove its temporary files."""
        rc = None
        p = self.proc
        if p is not None:
            if p.poll() is None:
                # the regions of stubs that die with the server are removed below
                self._shm_regions |= {s.shm_region for s in processes.python_stubs(p.pid)}
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=timeout if timeout is not None else self.exit_timeout + 10)
                except subprocess.TimeoutExpired:
                    log.warning("tritonserver did not exit in time: killing it")
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
            rc = p.returncode
            # the Python backend stubs live in the server's process group: none may outlive it
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
            # a stub killed (by the OOM killer, by the SIGKILL above, with a crashed server)
            # leaves its shared memory in /dev/shm: remove what our server's stubs used
            removed = processes.remove_shm_regions(self._shm_regions)
            if removed:
                log.info("removed %d stale /dev/shm region(s) of the Python backend", len(removed))
            self._shm_regions = set()
        self._cleanup(keep_tmp=True)
        return rc

    def _cleanup(self, keep_tmp: bool = False) -> None:
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None
        if not keep_tmp:
            self.close()

    def close(self) -> None:
        """Stop the server if needed and delete the temporary folder (backend dir, log)."""
        if self.alive():
            self.stop()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
            if self.log_file is not None and not self.log_file.exists():
                self.log_file = None

    def restart(self, timeout: float = 300.0) -> TritonServer:
        """Stop and start again on the same ports, then wait until ready."""
        self.stop()
        self.start()
        return self.wait_ready(timeout)

    def __enter__(self) -> TritonServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.close()
