"""What a benchmark records about the machine it ran on: CPU, memory, GPUs, package versions,
the load (and other busy processes) before and during a run, and the process's resident memory.
Linux ``/proc`` where available; every probe degrades to ``None`` elsewhere."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_total_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


BUSY_NAMES = ("pytest", "tritonserver", "index_bench", "serving_bench", "ragrt bench")


def other_busy_processes() -> list[dict[str, Any]]:
    """Other processes whose command line says they load the machine (tests, servers, benches)."""
    out = []
    me = os.getpid()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) in (me, os.getppid()):
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(n in cmd for n in BUSY_NAMES):
            out.append({"pid": int(d.name), "cmd": cmd.strip()[:160]})
    return out


def load_snapshot() -> dict[str, Any]:
    la = os.getloadavg()
    return {
        "time": _dt.datetime.now().isoformat(timespec="seconds"),
        "loadavg_1_5_15": [round(x, 2) for x in la],
        "others": other_busy_processes(),
    }


def gpu_info() -> dict[str, Any]:
    """GPU name, memory and driver (nvidia-smi), plus what ONNX Runtime / torch see."""
    info: dict[str, Any] = {}
    try:
        q = "name,memory.total,driver_version"
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        rows = [r.split(", ") for r in out.stdout.strip().splitlines() if r.strip()]
        info["gpus"] = [dict(zip(q.split(","), r)) for r in rows]
    except (OSError, subprocess.SubprocessError):
        info["gpus"] = []
    try:
        import onnxruntime as ort

        info["ort_providers"] = ort.get_available_providers()
    except ImportError:  # pragma: no cover
        pass
    try:
        import torch

        info["torch_cuda"] = torch.version.cuda if torch.cuda.is_available() else None
    except ImportError:  # pragma: no cover
        pass
    return info


def machine_info(device: str) -> dict[str, Any]:
    from ragrt.runtime.sessions import cpu_threads

    m = {
        "hostname": platform.node(),
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": cpu_threads(),
        "mem_total_gib": _mem_total_gib(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
    }
    if device != "cpu":
        m["gpu"] = gpu_info()
    return m


def versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {}
    for dist in (
        "ragrt",
        "onnxruntime",
        "onnxruntime-gpu",
        "torch",
        "transformers",
        "optimum",
        "optimum-onnx",
        "faiss-cpu",
        "faiss-gpu-cu12",
        "numpy",
        "tokenizers",
        "onnx",
    ):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    try:
        out["git_commit"] = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        out["git_commit"] = None
    return out


def wait_for_quiet(max_load: float, wait_s: float, log=print) -> dict[str, Any]:
    """Wait (up to ``wait_s``) until the 1-min load average is below ``max_load``."""
    t0 = time.monotonic()
    snap = load_snapshot()
    while snap["loadavg_1_5_15"][0] >= max_load and time.monotonic() - t0 < wait_s:
        log(f"load {snap['loadavg_1_5_15'][0]:.2f} >= {max_load}: waiting for a quiet machine")
        time.sleep(min(30.0, max(1.0, wait_s - (time.monotonic() - t0))))
        snap = load_snapshot()
    snap["waited_s"] = round(time.monotonic() - t0, 1)
    snap["quiet"] = snap["loadavg_1_5_15"][0] < max_load
    return snap


# -- memory --------------------------------------------------------------------------------------
def _status_kib(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_mib() -> float | None:
    v = _status_kib("VmRSS")
    return None if v is None else v / 1024


def reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float | None:
    v = _status_kib("VmHWM")
    return None if v is None else v / 1024
