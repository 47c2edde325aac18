"""The FAISS side of an index: importing faiss, choosing a factory string for a corpus, and
describing what kind of index a file holds (flat / IVF-Flat / IVF-PQ, its lists, its coarse
quantizer) - the facts the build, the GPU plan and the search decide on.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from ragrt.runtime import stack

#: corpora below this size get an exact flat index (IVF needs ~40 training points per list)
FLAT_BELOW = 20_000
# sub-quantizer counts and dims per sub-quantizer that faiss-gpu's IVFPQ supports
GPU_PQ_M = (1, 2, 3, 4, 8, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64, 96)
GPU_PQ_SUBDIMS = (1, 2, 3, 4, 6, 8, 10, 12, 16, 20, 24, 28, 32)


def load_faiss() -> Any:
    """The ``faiss`` module; :func:`ragrt.runtime.stack.faiss` checks that exactly one build
    (CPU or GPU) is installed and names the extra or the uninstall otherwise."""
    return stack.faiss()


# -- factory choice --------------------------------------------------------------------------
def pq_m_for(dim: int) -> int:
    """PQ sub-quantizers: ~8 dims each, at most 64 (768 -> 64 as wiki_dpr, 384 -> 48), dividing
    ``dim`` and supported by faiss-gpu."""
    ok = [m for m in GPU_PQ_M if m <= 64 and dim % m == 0 and dim // m in GPU_PQ_SUBDIMS]
    if not ok:
        ok = [m for m in range(1, dim + 1) if dim % m == 0 and dim // m <= 32] or [dim]
    return min(ok, key=lambda m: (abs(min(dim / 8, 64) - m), -m))


def nlist_for(n: int) -> int:
    """Inverted lists: the power of two nearest ``4 * sqrt(n)``, at most ``n / 39``."""
    target = 4.0 * np.sqrt(max(n, 1))
    nlist = 2 ** int(round(np.log2(target)))
    while nlist > 1 and nlist * 39 > n:
        nlist //= 2
    return max(nlist, 1)


def default_factory(n: int, dim: int) -> str:
    """FAISS factory for ``n`` vectors of ``dim``: Flat when tiny, else ``IVF{nlist},PQ{m}``.

    1M x 384 -> ``IVF4096,PQ48``; 21M x 768 -> ``IVF16384,PQ64`` (65536+ lists get an HNSW
    coarse quantizer, as the released wiki_dpr index does, to keep list assignment fast).
    """
    if n < FLAT_BELOW:
        return "Flat"
    nlist = nlist_for(n)
    coarse = f"IVF{nlist}_HNSW32" if nlist >= 65536 else f"IVF{nlist}"
    return f"{coarse},PQ{pq_m_for(dim)}"


def default_train_size(n: int, factory: str) -> int:
    """Training points: 50 per inverted list, at least 65536, at most the corpus."""
    m = re.match(r"IVF(\d+)", factory)
    nlist = int(m.group(1)) if m else 0
    return int(min(n, max(50 * nlist, 65536)))


# -- what an index is ------------------------------------------------------------------------
def nlist_of(index: Any) -> int | None:
    """Inverted lists of an IVF index (or of the IVF inside shards / a pre-transform); None for
    a flat index."""
    faiss = load_faiss()
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        return None
    return int(ivf.nlist) if ivf is not None else None


def describe_index(index: Any, faiss_module: Any = None) -> dict[str, Any]:
    """Kind of a CPU faiss index: flat / ivfflat / ivfpq (+ M, nbits, coarse quantizer class)."""
    faiss = faiss_module or load_faiss()
    idx = faiss.downcast_index(index)
    name = type(idx).__name__
    info: dict[str, Any] = {"class": name, "kind": "other"}
    if name.startswith("IndexFlat"):
        info["kind"] = "flat"
    elif name in ("IndexIVFPQ", "IndexIVFFlat"):
        info["kind"] = "ivfpq" if name == "IndexIVFPQ" else "ivfflat"
        info["coarse"] = type(faiss.downcast_index(idx.quantizer)).__name__
        if name == "IndexIVFPQ":
            info["M"], info["nbits"] = int(idx.pq.M), int(idx.pq.nbits)
        info["d"] = int(idx.d)
    return info


def is_gpu_index(index: Any, faiss_module: Any = None) -> bool:
    """True when ``index`` (or every shard/replica of it) is a ``Gpu*`` class."""
    faiss = faiss_module or load_faiss()
    idx = faiss.downcast_index(index)
    name = type(idx).__name__
    if name.startswith("Gpu"):
        return True
    if name in ("IndexShards", "IndexReplicas"):
        n = idx.count()
        return n > 0 and all(is_gpu_index(idx.at(i), faiss) for i in range(n))
    return False
