"""What Linux's ``/proc`` says about a tritonserver process: which ports it listens on, and its
Python backend stubs (one process per model instance).

Why: tritonserver answers ``/v2/health/ready`` and reports every model READY even when another
process holds one of its ports (the answer then comes from that process) or when a model's
stub died (every request to that model then fails with ``Stub process '<name>' is not
healthy``). ``ragrt serve`` reads these facts here to report ready only for its own server, to
notice a dead model, and to remove the shared-memory regions that dead stubs leave in
``/dev/shm``. Off Linux every function answers "unknown" (``None`` or empty) and the callers
fall back to what the server says about itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
SHM = Path("/dev/shm")
STUB_NAME = "triton_python_backend_stub"
_LISTEN = "0A"  # TCP state LISTEN in /proc/net/tcp


def available() -> bool:
    return (PROC / "net" / "tcp").is_file()


def listening_inodes(port: int) -> set[int]:
    """Socket inodes listening on TCP ``port`` (any address, IPv4 and IPv6)."""
    out: set[int] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (PROC / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) > 9 and f[3] == _LISTEN and int(f[1].rsplit(":", 1)[1], 16) == port:
                out.add(int(f[9]))
    return out


def socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets process ``pid`` holds open (empty if it is gone)."""
    out: set[int] = set()
    try:
        fds = list((PROC / str(pid) / "fd").iterdir())
    except OSError:
        return out
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(int(target[8:-1]))
    return out


def listens_on(pid: int, port: int) -> bool | None:
    """Whether process ``pid`` is the one listening on ``port`` (None: cannot tell here)."""
    if not available():
        return None
    return bool(listening_inodes(port) & socket_inodes(pid))


def alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = list((PROC / str(pid) / "task").iterdir())
    except OSError:
        return out
    for t in tasks:
        try:
            out += [int(c) for c in (t / "children").read_text().split()]
        except OSError:
            continue
    return out


@dataclass(frozen=True)
class Stub:
    """One Python backend stub process: the model instance it runs and its shared memory."""

    pid: int
    model: str  # the model's folder name in the repository (= its name)
    instance: str  # e.g. rag_0_0
    shm_region: str  # its region's name under /dev/shm


def python_stubs(server_pid: int) -> list[Stub]:
    """The Python backend stubs the server ``server_pid`` started, from their command lines
    (``stub MODEL_DIR/VERSION/model.py SHM_REGION SHM_SIZE GROWTH PARENT_PID BACKEND_DIR
    IPC_SIZE INSTANCE_NAME ...``)."""
    out = []
    for pid in children(server_pid):
        try:
            argv = (PROC / str(pid) / "cmdline").read_bytes().decode("utf-8", "replace")
        except OSError:
            continue
        args = argv.split("\0")
        if len(args) < 9 or not args[0].endswith(STUB_NAME):
            continue
        model = Path(args[1]).parent.parent.name
        out.append(Stub(pid, model, args[8], args[2]))
    return out


def remove_shm_regions(names: set[str]) -> list[str]:
    """Delete the named Python backend regions from /dev/shm (what a stub killed before it
    could clean up leaves behind); only names the backend uses, never a path."""
    removed = []
    for name in sorted(names):
        if not name.startswith("triton_python_backend_shm_region") or "/" in name:
            continue
        try:
            (SHM / name).unlink()
            removed.append(name)
        except FileNotFoundError:
            continue
        except OSError:
            continue
    return removed
