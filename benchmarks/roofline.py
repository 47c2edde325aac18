"""Memory roofline of a decode step: bytes it must read vs this machine's memory bandwidth.

A decode step of a seq2seq generator does a matrix-vector product per weight matrix for a few
rows, so it is bound by memory bandwidth, not arithmetic: its floor is

    t_min = (weights streamed + KV cache read + logits written) / bandwidth

- Bandwidth is measured here (:func:`measure_bandwidth`): a large numpy copy, a threaded
  read-only reduction and a BLAS matrix-vector product over a matrix far larger than the
  caches; the best *read* rate is the roofline's limit.
- Weight bytes come from the decoder-with-past ONNX graph itself (:func:`graph_weight_bytes`):
  every initializer a step multiplies with is streamed once per step; tables only indexed by
  ``Gather`` (token/position embeddings) contribute a few rows, not their size. The with-past
  graph has no cross-attention K/V projections (those run once, in the first-step graph).
- Cache bytes: each step reads the self-attention cache (and ONNX Runtime copies it into the
  grown ``present``) and the whole cross-attention cache of every row.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

_ONNX_ITEMSIZE = {1: 4, 2: 1, 3: 1, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 16: 2}


def _best(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure_bandwidth(mib: int = 512, repeats: int = 5, threads: int | None = None) -> dict:
    """Best-of-``repeats`` memory bandwidth in GB/s (1e9 bytes/s) on ``mib`` MiB arrays.

    ``copy_gbps`` counts bytes read + written by ``np.copyto``; ``read_gbps`` is a sum over
    ``threads`` slices in parallel (numpy releases the GIL); ``gemv_gbps`` is matrix bytes / time
    of a float32 matrix-vector product (OpenBLAS threads), the access pattern of a decode step.
    ``limit_gbps`` = the best read rate, the roofline's denominator.
    """
    threads = threads or max(1, len(os.sched_getaffinity(0)))
    n = mib * 2**20 // 4
    src = np.ones(n, dtype=np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # fault pages in
    t_copy = _best(lambda: np.copyto(dst, src), repeats)
    dst = None
    parts = np.array_split(src, threads)
    with ThreadPoolExecutor(threads) as pool:
        t_read = _best(lambda: list(pool.map(np.sum, parts)), repeats)
    mat = src.reshape(-1, 4096)
    vec = np.ones(4096, dtype=np.float32)
    t_gemv = _best(lambda: mat @ vec, repeats)
    nbytes = src.nbytes
    out = {
        "array_mib": mib,
        "threads": threads,
        "copy_gbps": 2 * nbytes / t_copy / 1e9,
        "read_gbps": nbytes / t_read / 1e9,
        "gemv_gbps": nbytes / t_gemv / 1e9,
    }
    out["limit_gbps"] = max(out["read_gbps"], out["gemv_gbps"])
    return out


def measure_gpu_bandwidth(mib: int = 1024, repeats: int = 5, device_id: int = 0) -> dict:
    """Device memory bandwidth (GB/s) with ONNX Runtime's CUDA provider, no torch needed.

    Runs ragrt's hand-built ``Gather`` graph (the one that reorders KV caches on the GPU) over
    every row of a ``mib`` MiB float32 tensor bound in device memory: each run reads and writes
    the tensor once. ``limit_gbps`` = read + write bytes / time, i.e. the copy bandwidth, the
    right denominator for a step that streams weights and caches once.
    """
    import onnxruntime as ort

    from ragrt.runtime.generator import RowGather
    from ragrt.runtime.sessions import SessionOptions

    rows = mib * 2**20 // 4 // 1024
    g = RowGather(1, 2, np.float32, SessionOptions(device="cuda", device_id=device_id))
    x = ort.OrtValue.ortvalue_from_numpy(np.ones((rows, 1024), dtype=np.float32), "cuda", device_id)
    idx = np.arange(rows, dtype=np.int64)
    g.run_device([x], idx, "cuda", device_id)
    t = _best(lambda: g.run_device([x], idx, "cuda", device_id), repeats)
    nbytes = rows * 1024 * 4
    gbps = 2 * nbytes / t / 1e9
    return {"array_mib": mib, "copy_gbps": gbps, "limit_gbps": gbps, "method": "ORT CUDA Gather"}


def measure_matmul_gflops(n: int = 1024, repeats: int = 5) -> float:
    """float32 GEMM rate (numpy/OpenBLAS, all threads): the compute roof, for reference."""
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    a @ a
    return 2 * n**3 / _best(lambda: a @ a, repeats) / 1e9


def graph_weight_bytes(path: str | os.PathLike) -> dict[str, int]:
    """Bytes of the initializers one run of the graph streams, and of Gather-only tables.

    Reads only the graph structure (external data files are not loaded).
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    g = model.graph
    consumers: dict[str, list[tuple[str, int]]] = {}
    for node in g.node:
        for i, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node.op_type, i))
    streamed = gathered = 0
    for init in g.initializer:
        size = int(np.prod(init.dims, dtype=np.int64)) * _ONNX_ITEMSIZE.get(init.data_type, 4)
        uses = consumers.get(init.name, [])
        if uses and all(op == "Gather" and i == 0 for op, i in uses):
            gathered += size
        else:
            streamed += size
    return {"streamed": streamed, "gathered": gathered}


_WEIGHT_CACHE: dict[str, dict[str, int]] = {}


def step_weights(art_dir: Path, precision: str) -> dict[str, int]:
    """:func:`graph_weight_bytes` of an ART_DIR's decoder-with-past graph (cached)."""
    import json

    man = json.loads((Path(art_dir) / "manifest.json").read_text())
    rel = man["generator"]["onnx"][precision]["decoder_with_past"]
    key = str(Path(art_dir) / rel)
    if key not in _WEIGHT_CACHE:
        _WEIGHT_CACHE[key] = graph_weight_bytes(key)
    return _WEIGHT_CACHE[key]


def step_bytes(
    weights: int,
    gen: dict[str, Any],
    rows: int,
    context_len: int,
    new_tokens: int,
    cache_itemsize: int = 4,
) -> dict[str, float]:
    """Average bytes one with-past decode step moves, for ``rows`` decoder rows.

    ``gen``: the manifest's generator spec (decoder_layers, d_model, vocab_size). The self-
    attention cache of step ``t`` holds ``t`` positions: read by attention and copied into the
    grown present (read + write), averaged over steps 2..``new_tokens``.
    """
    layers, d = int(gen["decoder_layers"]), int(gen["d_model"])
    per_pos = rows * layers * 2 * d * cache_itemsize  # K and V, all layers
    avg_past = (new_tokens) / 2.0 if new_tokens > 1 else 1.0
    self_kv = per_pos * avg_past * 3  # attention read + copy read + copy write
    cross_kv = per_pos * context_len
    logits = rows * int(gen["vocab_size"]) * 4
    total = weights + self_kv + cross_kv + logits
    return {
        "weights": float(weights),
        "self_kv": float(self_kv),
        "cross_kv": float(cross_kv),
        "logits": float(logits),
        "total": float(total),
    }


def generator_floor(
    enc_weight_bytes: int,
    step: dict[str, float],
    gen: dict[str, Any],
    rows: int,
    contexts: int,
    context_len: int,
    steps: int,
    bandwidth_gbps: float,
    gflops: float,
    bytes_per_param: float = 4.0,
    real_tokens: int | None = None,
) -> dict[str, float]:
    """Lower bound on the generator part (seconds) of one call on this machine.

    ``contexts`` encoded contexts of ``context_len`` tokens, ``rows`` decoder rows. Encoder:
    ``2 * params * tokens`` + attention ``4 * L^2 * d`` per context and layer, at the measured
    sgemm rate. First decode step: the cross-attention K/V projections of every row
    (``4 * d^2 * L`` per row and layer). Every later step: the larger of its bytes at the
    measured bandwidth and its arithmetic (``2 * params * rows`` + attention) at the sgemm rate
    (a step is memory-bound for a few rows, compute-bound for many). Integer kernels are
    counted at the fp32 rate, so use this for fp32 only.
    """
    d, layers = int(gen["d_model"]), int(gen["encoder_layers"])
    dec_layers = int(gen["decoder_layers"])
    peak = gflops * 1e9
    enc_params = enc_weight_bytes / bytes_per_param
    enc = 2 * enc_params * contexts * context_len + 4 * context_len**2 * d * layers * contexts
    first = 4 * d * d * context_len * rows * dec_layers
    step_params = step["weights"] / bytes_per_param
    avg_t = steps / 2.0
    step_flops = 2 * step_params * rows + 4 * rows * dec_layers * d * (context_len + avg_t)
    t_step = max(step["total"] / (bandwidth_gbps * 1e9), step_flops / peak)
    out = {
        "encoder_s": enc / peak,
        "first_step_s": first / peak,
        "steps_s": max(0, steps - 1) * t_step,
    }
    out["total_s"] = sum(out.values())
    if real_tokens:  # each context encoded at its own length (a ragged encoder)
        mean = real_tokens / contexts
        ragged = 2 * enc_params * real_tokens + 4 * mean**2 * d * layers * contexts
        out["encoder_ragged_s"] = ragged / peak
        out["total_ragged_s"] = out["total_s"] - out["encoder_s"] + out["encoder_ragged_s"]
    out["step_bound"] = (
        "compute" if step_flops / peak > step["total"] / (bandwidth_gbps * 1e9) else "memory"
    )  # type: ignore[assignment]
    return out
