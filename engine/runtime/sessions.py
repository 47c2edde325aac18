"""ONNX Runtime sessions: execution providers, threads and device checks in one place.

Every ONNX graph ragrt runs is opened here, so the choice of CPU / CUDA / TensorRT, the
thread counts and the error raised when a device is missing are the same everywhere.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ragrt.errors import ArtifactError, DeviceError, InputError
from ragrt.runtime import stack

if TYPE_CHECKING:  # pragma: no cover
    from onnxruntime import InferenceSession

DEVICES = ("cpu", "cuda", "tensorrt")
GRAPH_OPTIMIZATIONS = ("disable", "basic", "extended", "all")


@dataclass(frozen=True)
class SessionOptions:
    """How to open sessions. ``intra_op_threads=0`` means one thread per usable core.

    ``spinning``: let ONNX Runtime's idle intra-op threads busy-wait for the next parallel
    section. Off by default: a spinning thread burns a core between operators and between
    decode steps, which the Python loop, other model instances and other processes need; when
    the cores are shared, spinning workers and descheduled ones make every parallel section
    wait for the slowest (see ``ragrt.benchmarks.contention``).

    ``denormal_as_zero``: flush denormal floats to zero (FTZ/DAZ) in ONNX Runtime's threads.
    x86 cores take ~100x longer on denormal operands; peaked attention distributions are full
    of them (softmax probabilities below 1.2e-38), and they only ever add less than one ulp to
    a sum, so results keep their bits (``tests/test_speed.py``). ONNX Runtime applies it to the
    calling thread only from the first session a process creates (ragrt's first, unless
    another library opened one before).
    """

    device: str = "cpu"
    device_id: int = 0
    intra_op_threads: int = 0
    spinning: bool = False
    denormal_as_zero: bool = True
    graph_optimization: str = "all"  # disable | basic | extended | all
    trt_fp16: bool = True
    trt_cache_dir: str | None = None

    def __post_init__(self) -> None:
        for name in ("device_id", "intra_op_threads"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise InputError(
                    f"{name} must be an integer >= 0 (0 = "
                    f"{'one thread per core' if name == 'intra_op_threads' else 'the first GPU'}"
                    f"), got {v!r}"
                )
        if self.graph_optimization not in GRAPH_OPTIMIZATIONS:
            raise InputError(
                f"graph_optimization must be one of {', '.join(GRAPH_OPTIMIZATIONS)}, "
                f"got {self.graph_optimization!r}"
            )


def cgroup_cpu_limit(root: str | os.PathLike = "/sys/fs/cgroup") -> float | None:
    """CPUs the cgroup's quota allows (Kubernetes ``limits.cpu``, ``docker --cpus``), or None.

    A container sees every core of the node in its affinity mask; threads beyond its quota
    only get throttled, every parallel section then waits for the slowest.
    """
    r = Path(root)
    try:  # cgroup v2: "max 100000" or "200000 100000"
        max_, per = (r / "cpu.max").read_text().split()[:2]
        return None if max_ == "max" else int(max_) / int(per)
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        quota = int((r / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((r / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 or period <= 0 else quota / period
    except (OSError, ValueError):
        return None


def cpu_threads() -> int:
    """Cores this process may use: its affinity mask (taskset, cpusets), capped by the
    cgroup CPU quota (rounded up)."""
    try:
        n = max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        n = max(1, os.cpu_count() or 1)
    limit = cgroup_cpu_limit()
    return n if limit is None else max(1, min(n, math.ceil(limit)))


def available_providers() -> list[str]:
    ort = stack.onnxruntime()

    return list(ort.get_available_providers())


def providers_for(opts: SessionOptions) -> list[str | tuple[str, dict]]:
    """Execution providers for a device, most preferred first, CPU always last.

    Raises :class:`DeviceError` when the device was asked for but ONNX Runtime cannot use it,
    rather than silently running on the CPU.
    """
    if opts.device not in DEVICES:
        raise InputError(f"unknown device {opts.device!r}: choose one of {', '.join(DEVICES)}")
    if opts.device == "cpu":
        return ["CPUExecutionProvider"]
    have = available_providers()
    if "CUDAExecutionProvider" not in have:
        raise DeviceError(
            f"device {opts.device!r} requested but ONNX Runtime has no CUDA provider "
            f"(available: {', '.join(have)}); on a machine with an NVIDIA GPU switch to the "
            f"GPU stack ({stack.TO_GPU}), or use --device cpu"
        )
    stack.load_cuda_libraries()
    cuda = ("CUDAExecutionProvider", {"device_id": opts.device_id})
    if opts.device == "tensorrt":
        if "TensorrtExecutionProvider" not in have:
            raise DeviceError(
                "device 'tensorrt' requested but ONNX Runtime has no TensorRT provider; "
                "install tensorrt next to onnxruntime-gpu, or use --device cuda"
            )
        trt_opts: dict = {"device_id": opts.device_id, "trt_fp16_enable": opts.trt_fp16}
        if opts.trt_cache_dir:
            trt_opts.update(trt_engine_cache_enable=True, trt_engine_cache_path=opts.trt_cache_dir)
        return [("TensorrtExecutionProvider", trt_opts), cuda, "CPUExecutionProvider"]
    return [cuda, "CPUExecutionProvider"]


def open_session(path: str | os.PathLike, opts: SessionOptions | None = None) -> InferenceSession:
    """Open one ONNX graph as an ``onnxruntime.InferenceSession``."""
    ort = stack.onnxruntime()

    opts = opts or SessionOptions()
    p = Path(path)
    if not p.is_file():
        raise ArtifactError(f"missing ONNX file {p}; re-run `ragrt export`")
    so = ort.SessionOptions()
    so.intra_op_num_threads = opts.intra_op_threads or cpu_threads()
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if opts.spinning else "0")
    so.add_session_config_entry(
        "session.set_denormal_as_zero", "1" if opts.denormal_as_zero else "0"
    )
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[opts.graph_optimization]
    so.log_severity_level = 3
    providers = providers_for(opts)
    try:
        return ort.InferenceSession(str(p), sess_options=so, providers=providers)
    except Exception as e:  # onnxruntime raises its own untyped errors for bad files
        raise ArtifactError(f"ONNX Runtime cannot load {p}: {str(e).splitlines()[0]}") from None
