"""ONNX Runtime sessions: execution providers, threads and device checks in one place.

Every ONNX graph ragrt runs is opened here, so the choice of CPU / CUDA / TensorRT, the
thread counts and the error raised when a device is missing are the same everywhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ragrt.errors import ArtifactError, DeviceError, InputError

if TYPE_CHECKING:  # pragma: no cover
    from onnxruntime import InferenceSession

DEVICES = ("cpu", "cuda", "tensorrt")


@dataclass(frozen=True)
class SessionOptions:
    """How to open sessions. ``intra_op_threads=0`` means one thread per physical core."""

    device: str = "cpu"
    device_id: int = 0
    intra_op_threads: int = 0
    graph_optimization: str = "all"  # disable | basic | extended | all
    trt_fp16: bool = True
    trt_cache_dir: str | None = None


def cpu_threads() -> int:
    """Cores this process may use (respects taskset / cgroup affinity)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def available_providers() -> list[str]:
    import onnxruntime as ort

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
            f"(available: {', '.join(have)}); install `ragrt[gpu]` (onnxruntime-gpu) on a "
            "machine with an NVIDIA GPU, or use --device cpu"
        )
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
    import onnxruntime as ort

    opts = opts or SessionOptions()
    p = Path(path)
    if not p.is_file():
        raise ArtifactError(f"missing ONNX file {p}; re-run `ragrt export`")
    so = ort.SessionOptions()
    so.intra_op_num_threads = opts.intra_op_threads or cpu_threads()
    so.inter_op_num_threads = 1
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
