"""The search core: one FAISS search over question embeddings, with a wider nprobe for rows
that came back short and an optional exact re-rank from stored embeddings. Shared by
:class:`~ragrt.retrieval.index.PassageIndex` and the build's nprobe calibration.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ragrt.errors import InputError
from ragrt.retrieval.faiss_index import load_faiss

#: exact re-ranking looks at max(RERANK_MIN, RERANK_FACTOR * k) PQ candidates
RERANK_FACTOR = 16
RERANK_MIN = 256


class SearchResult(NamedTuple):
    """``rows`` int64 [B, k] (passage rows, ranking order), ``scores`` float32 [B, k] (``q . d``),
    ``embeddings`` float32 [B, k, dim] when asked for, else None."""

    rows: np.ndarray
    scores: np.ndarray
    embeddings: np.ndarray | None


def check_queries(q: Any, dim: int) -> np.ndarray:
    """Question embeddings as contiguous float32 ``[B, dim]`` (a single ``[dim]`` vector is B=1)."""
    try:
        arr = np.asarray(q)
    except (TypeError, ValueError) as e:
        raise InputError(f"question embeddings are not an array: {e}") from None
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
    ):
        raise InputError(f"question embeddings must be numeric, got dtype {arr.dtype}")
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise InputError(
            f"question embeddings must have shape [batch, {dim}], got {list(np.shape(q))}"
        )
    if arr.shape[0] == 0:
        raise InputError("no question embeddings (batch of 0)")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise InputError("question embeddings contain NaN or infinite values")
    return arr


def check_k(k: Any, n: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise InputError(f"k must be an integer, got {k!r}")
    if k <= 0:
        raise InputError(f"k must be >= 1, got {k}")
    if k > n:
        raise InputError(f"k={k} is larger than the corpus ({n} passages)")
    return int(k)


def search_core(
    index: Any,
    q: np.ndarray,
    k: int,
    *,
    nprobe: int | None,
    nlist: int | None,
    exact: Any = None,
    rerank: int | None = None,
    faiss_module: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One FAISS search (+ exact re-rank from ``exact(rows) -> [*, dim]`` embeddings).

    Rows that come back with fewer than ``k`` hits (probed lists too small) are searched again
    with a doubled nprobe, so every row gets ``k`` results whenever ``k <= ntotal``.
    """
    faiss = faiss_module or load_faiss()
    kk = k if exact is None or rerank is None else min(max(rerank, k), index.ntotal)
    n_probe = nprobe

    def run(x: np.ndarray, npb: int | None) -> tuple[np.ndarray, np.ndarray]:
        if npb is None or nlist is None:
            return index.search(x, kk)
        return index.search(x, kk, params=faiss.SearchParametersIVF(nprobe=int(min(npb, nlist))))

    D, I = run(q, n_probe)  # noqa: E741
    if nlist is not None:
        short = np.flatnonzero(I[:, k - 1] < 0)
        npb = n_probe or 1
        while len(short) and npb < nlist:
            npb = min(npb * 2, nlist)
            D2, I2 = run(q[short], npb)
            D[short], I[short] = D2, I2
            short = short[I2[:, k - 1] < 0]
    if exact is None or rerank is None:
        return I[:, :k].astype(np.int64), D[:, :k].astype(np.float32)
    valid = I >= 0
    emb = exact(np.where(valid, I, 0))  # [B, kk, dim]
    s = np.einsum("bd,bkd->bk", q, emb, dtype=np.float32)
    s[~valid] = -np.inf
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(I, order, 1).astype(np.int64), np.take_along_axis(s, order, 1)
