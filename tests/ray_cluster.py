"""A real two-node Ray cluster on this machine, for tests (tests/test_distributed_build.py).

A head and a second node, each started by ``ray start`` in a session (process group) of its own,
with one CPU and a small object store each. Both bind 127.0.0.2: Ray replaces 127.0.0.1 with the
machine's outward address, the rest of 127/8 is loopback too and is kept. A random token
(``RAY_AUTH_MODE=token``) keeps other local processes out, and nothing is written to ``~/.ray``.

Stopping kills exactly the processes of the cluster's two sessions and any process naming its
temp dir (never ``ray stop``, which stops every Ray on the machine). A watchdog process does the
same if the test process dies without stopping it (a crash, a SIGKILL):
``python -m tests.ray_cluster PARENT_PID TEMP_DIR``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = Path(sys.executable).with_name("ray")
ROOT = Path(__file__).resolve().parents[1]
SESSIONS_FILE = "sessions"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _session_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[3])  # state ppid pgrp session


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def processes(temp: Path) -> list[int]:
    """Live processes of the cluster in ``temp``: its sessions, and any process naming it."""
    try:
        own = {int(x) for x in (temp / SESSIONS_FILE).read_text().split()}
    except OSError:
        own = set()
    tag = str(temp)
    me = {os.getpid(), os.getppid()}
    return [
        pid
        for pid in (int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit())
        if pid not in me and (_session_of(pid) in own or tag in cmdline(pid))
    ]


def kill_cluster(temp: Path) -> list[int]:
    """Stop the cluster in ``temp`` and remove ``temp``; returns the processes that survived."""
    for sig, grace in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
        for pid in processes(temp):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and processes(temp):
            time.sleep(0.2)
    left = processes(temp)
    shutil.rmtree(temp, ignore_errors=True)
    return left


class TwoNodeCluster:
    """See the module docstring."""

    def __init__(self) -> None:
        # short: Ray's unix sockets live under it (108-byte path limit)
        self.temp = Path(tempfile.mkdtemp(prefix="rr", dir="/tmp"))
        self.env = {
            **os.environ,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": secrets.token_hex(16),
            "RAY_USAGE_STATS_ENABLED": "0",
        }
        self.address = f"127.0.0.2:{free_port()}"
        self.watchdog = subprocess.Popen(
            [sys.executable, "-m", "tests.ray_cluster", str(os.getpid()), str(self.temp)],
            cwd=ROOT,
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )

    def _start(self, *args: str, log: str) -> None:
        ports = [
            "--dashboard-agent-listen-port",
            "--dashboard-agent-grpc-port",
            "--runtime-env-agent-port",
            "--metrics-export-port",
        ]
        cmd = [str(RAY), "start", "--node-ip-address", "127.0.0.2", "--disable-usage-stats"]
        cmd += [*args, *(x for p in ports for x in (p, str(free_port())))]
        with open(self.temp / log, "w") as f:
            p = subprocess.Popen(
                cmd, env=self.env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
            )
            with open(self.temp / SESSIONS_FILE, "a") as s:
                s.write(f"{p.pid}\n")  # setsid: the session id is this pid
            try:
                rc = p.wait(timeout=180)
            except subprocess.TimeoutExpired:
                rc = None
        if rc != 0:
            raise RuntimeError(f"`ray start` failed ({rc}):\n{(self.temp / log).read_text()}")

    def start(self) -> TwoNodeCluster:
        port = self.address.rsplit(":", 1)[1]
        self._start(
            *("--head", "--port", port, "--num-cpus", "1"),
            *("--object-store-memory", str(200 << 20), "--include-dashboard=false"),
            *("--ray-client-server-port", str(free_port())),
            *("--dashboard-port", str(free_port()), "--temp-dir", str(self.temp)),
            log="head.log",
        )
        self._start(
            *("--address", self.address, "--num-cpus", "1"),
            *("--object-store-memory", str(120 << 20)),
            log="node.log",
        )
        return self

    def processes(self) -> list[int]:
        return processes(self.temp)

    def embedding_actors(self, busy: bool) -> list[int]:
        """Embedding actor processes (``busy``: running a block right now)."""
        out = []
        for pid in self.processes():
            cmd = cmdline(pid)
            if "MapBatches(BlockEmbedder)" in cmd and (not busy or cmd.endswith(".submit")):
                out.append(pid)
        return out

    def stop(self) -> list[int]:
        """Stop both nodes (and the watchdog); returns the processes that survived."""
        left = kill_cluster(self.temp)
        self.watchdog.kill()
        self.watchdog.wait(timeout=10)
        return left


def _watch(parent: int, temp: Path) -> None:
    """Stop the cluster in ``temp`` once ``parent`` (the test process) is gone."""
    while temp.exists():
        try:
            os.kill(parent, 0)
        except ProcessLookupError:
            kill_cluster(temp)
            return
        time.sleep(1.0)


if __name__ == "__main__":
    _watch(int(sys.argv[1]), Path(sys.argv[2]))
