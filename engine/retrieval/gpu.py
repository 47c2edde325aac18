"""Putting an index on GPUs: a plan decided without touching a GPU (:func:`gpu_plan`, pure and
unit-tested), and the clone that follows it (:func:`to_device`), with a CPU fallback that says
why when ``device="auto"``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ragrt.errors import DeviceError, InputError
from ragrt.retrieval.faiss_index import (
    GPU_PQ_M,
    GPU_PQ_SUBDIMS,
    describe_index,
    is_gpu_index,
    load_faiss,
)
from ragrt.runtime import stack

log = logging.getLogger(__name__)


@dataclass
class GpuPlan:
    """What :func:`to_device` will do with an index (decided without touching a GPU)."""

    use_gpu: bool
    reason: str
    gpus: list[int] = field(default_factory=list)
    shard: bool = False
    float16_lookup_tables: bool = False
    flat_coarse_quantizer: bool = False  # an HNSW (or other) coarse quantizer must be rebuilt


def gpu_plan(
    info: dict[str, Any],
    *,
    device: str,
    num_gpus: int,
    has_gpu_faiss: bool,
    gpus: Sequence[int] | None = None,
    shard: bool = True,
) -> GpuPlan:
    """Decide how (or whether) to put an index described by :func:`describe_index` on GPUs.

    ``device``: ``cpu`` (never), ``cuda`` (must; :class:`DeviceError` otherwise) or ``auto``
    (GPU when possible, CPU fallback with the reason). Pure: unit-tested without a GPU.
    """
    if device not in ("cpu", "cuda", "auto"):
        raise InputError(f"unknown index device {device!r}: cpu, cuda or auto")
    if device == "cpu":
        return GpuPlan(False, "cpu requested")
    if not has_gpu_faiss:
        return _no(device, f"this faiss build has no GPU support (switch stacks: {stack.TO_GPU})")
    if num_gpus <= 0:
        return _no(device, "faiss sees no CUDA device")
    ids = list(range(num_gpus)) if gpus is None else [int(g) for g in gpus]
    bad = [g for g in ids if not 0 <= g < num_gpus]
    if bad or not ids:
        raise InputError(f"GPU ids {ids} invalid: this machine has {num_gpus} GPU(s)")
    why_not = _unsupported(info)
    if why_not:
        return _no(device, why_not)
    kind = info.get("kind")
    return GpuPlan(
        True,
        "ok",
        gpus=ids,
        shard=shard and len(ids) > 1,
        # needed for M=64 8-bit (shared memory), harmless else
        float16_lookup_tables=kind == "ivfpq",
        flat_coarse_quantizer=kind in ("ivfpq", "ivfflat")
        and not str(info.get("coarse", "")).startswith("IndexFlat"),
    )


def _no(device: str, reason: str) -> GpuPlan:
    if device == "cuda":
        raise DeviceError(f"cannot put the index on a GPU: {reason}; use --device cpu")
    return GpuPlan(False, reason)


def _unsupported(info: dict[str, Any]) -> str | None:
    """Why faiss-gpu cannot hold this index, or None."""
    kind = info.get("kind")
    if kind == "ivfpq":
        m, nbits, d = info["M"], info["nbits"], info["d"]
        if nbits != 8:
            return f"GPU IVF-PQ needs 8-bit codes, index has {nbits}"
        if m not in GPU_PQ_M or d % m or d // m not in GPU_PQ_SUBDIMS:
            return f"GPU IVF-PQ does not support PQ{m} on {d} dims"
        return None
    if kind in ("ivfflat", "flat"):
        return None
    return f"{info.get('class')} has no GPU clone path in ragrt"


def with_flat_coarse_quantizer(index: Any, faiss_module: Any = None) -> Any:
    """A copy of an IVF index whose (e.g. HNSW) coarse quantizer is replaced by a flat one
    holding the same centroids (GPU faiss cannot clone HNSW); ``faiss.contrib``'s
    ``replace_ivf_quantizer`` does the swap and the ownership bookkeeping."""
    from faiss.contrib.ivf_tools import replace_ivf_quantizer

    faiss = faiss_module or load_faiss()
    ivf = faiss.clone_index(index)  # owning, already downcast (do not re-wrap: GC would free it)
    metric_ip = ivf.metric_type == faiss.METRIC_INNER_PRODUCT
    flat = faiss.IndexFlatIP(ivf.d) if metric_ip else faiss.IndexFlatL2(ivf.d)
    replace_ivf_quantizer(ivf, flat)  # fills the empty flat quantizer with the centroids
    return ivf


def to_device(
    index: Any,
    *,
    device: str = "auto",
    gpus: Sequence[int] | None = None,
    shard: bool = True,
    faiss_module: Any = None,
) -> tuple[Any, GpuPlan]:
    """Clone ``index`` to GPU(s) according to :func:`gpu_plan`; the CPU index on fallback."""
    faiss = faiss_module or load_faiss()
    has = all(hasattr(faiss, a) for a in ("StandardGpuResources", "GpuMultipleClonerOptions"))
    n = int(faiss.get_num_gpus()) if has and hasattr(faiss, "get_num_gpus") else 0
    plan = gpu_plan(
        describe_index(index, faiss),
        device=device,
        num_gpus=n,
        has_gpu_faiss=has,
        gpus=gpus,
        shard=shard,
    )
    if not plan.use_gpu:
        if device != "cpu":
            log.warning("index stays on the CPU: %s", plan.reason)
        return index, plan
    src = with_flat_coarse_quantizer(index, faiss) if plan.flat_coarse_quantizer else index
    co = faiss.GpuMultipleClonerOptions()
    co.useFloat16LookupTables = plan.float16_lookup_tables
    co.shard = plan.shard
    try:
        resources = [faiss.StandardGpuResources() for _ in plan.gpus]
        if len(plan.gpus) == 1:
            gpu = faiss.index_cpu_to_gpu(resources[0], plan.gpus[0], src, co)
        else:
            gpu = faiss.index_cpu_to_gpu_multiple_py(resources, src, co, plan.gpus)
    except (RuntimeError, MemoryError) as e:
        if device == "cuda":
            raise DeviceError(f"cloning the index to GPU failed: {e}") from None
        return _fallback(index, f"GPU clone failed: {e}")
    if not is_gpu_index(gpu, faiss):
        msg = f"GPU clone produced {type(faiss.downcast_index(gpu)).__name__}, not a Gpu* index"
        if device == "cuda":
            raise DeviceError(msg)
        return _fallback(index, msg)
    gpu.referenced_objects = [resources, src]
    return gpu, plan


def _fallback(index: Any, reason: str) -> tuple[Any, GpuPlan]:
    log.warning("index stays on the CPU: %s", reason)
    return index, GpuPlan(False, reason)
