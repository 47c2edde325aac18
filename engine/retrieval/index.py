"""The passage index: FAISS inner-product search + the memory-mapped passage store.

An INDEX_DIR (written by :func:`ragrt.retrieval.build.build_index`, ``ragrt index build``) holds

``manifest.json``
    what the index is and what it was built with (:mod:`ragrt.retrieval.index_manifest`).
``index.faiss``
    the FAISS index (ids are passage rows ``0..N-1``).
``passages.*``
    the passage store (:mod:`ragrt.retrieval.passages`).
``embeddings.f16`` (optional)
    exact passage embeddings, raw float16 ``[N, dim]``, memory-mapped. With it, doc scores are
    ``q . d`` recomputed from the stored embedding (as the reference RAG retriever does) and
    IVF-PQ candidates are re-ranked exactly; without it, IVF-PQ scores and embeddings are PQ
    reconstructions (the manifest's ``scores`` says which).

:class:`PassageIndex` opens one INDEX_DIR or several (shards: one faiss ``IndexShards`` over
them, rows numbered shard after shard), optionally cloned to GPUs
(:mod:`ragrt.retrieval.gpu`); the search itself is :func:`ragrt.retrieval.search.search_core`.
The names of those modules are re-exported here.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ragrt.artifacts import AUTO_HASH_BYTES
from ragrt.errors import ArtifactError, InputError
from ragrt.results import Doc
from ragrt.retrieval.faiss_index import (
    FLAT_BELOW,
    GPU_PQ_M,
    GPU_PQ_SUBDIMS,
    default_factory,
    default_train_size,
    describe_index,
    is_gpu_index,
    load_faiss,
    nlist_for,
    nlist_of,
    pq_m_for,
)
from ragrt.retrieval.gpu import GpuPlan, gpu_plan, to_device, with_flat_coarse_quantizer
from ragrt.retrieval.index_manifest import (
    EMB_FILES,
    INDEX_FILE,
    INDEX_FORMAT,
    INDEX_FORMAT_VERSION,
    METRIC,
    IndexManifest,
    check_model_identity,
)
from ragrt.retrieval.passages import PassageStore, shared_ids
from ragrt.retrieval.search import (
    RERANK_FACTOR,
    RERANK_MIN,
    SearchResult,
    check_k,
    check_queries,
    search_core,
)

MANIFEST_NAME = "manifest.json"

__all__ = [
    "AUTO_HASH_BYTES",
    "EMB_FILES",
    "FLAT_BELOW",
    "GPU_PQ_M",
    "GPU_PQ_SUBDIMS",
    "INDEX_FILE",
    "INDEX_FORMAT",
    "INDEX_FORMAT_VERSION",
    "MANIFEST_NAME",
    "METRIC",
    "RERANK_FACTOR",
    "RERANK_MIN",
    "GpuPlan",
    "IndexManifest",
    "PassageIndex",
    "SearchResult",
    "check_k",
    "check_model_identity",
    "check_queries",
    "default_factory",
    "default_train_size",
    "describe_index",
    "gpu_plan",
    "is_gpu_index",
    "nlist_for",
    "pq_m_for",
    "search_core",
    "to_device",
    "with_flat_coarse_quantizer",
]


@dataclass
class _Shard:
    """One INDEX_DIR: its manifest, passage store, FAISS index and exact embeddings."""

    root: Path
    manifest: IndexManifest
    store: PassageStore
    index: Any
    emb: np.ndarray | None
    offset: int

    @classmethod
    def open(cls, root: Path, offset: int, *, verify: str, mmap: bool) -> _Shard:
        faiss = load_faiss()
        m = IndexManifest.load(root)
        m.verify(root, verify)
        store = PassageStore(root)
        if len(store) != m.passages:
            raise ArtifactError(
                f"{root}: passage store has {len(store)} passages, manifest says {m.passages}; "
                "rebuild the index"
            )
        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
        try:
            index = faiss.read_index(str(root / INDEX_FILE), flags)
        except (RuntimeError, MemoryError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ArtifactError(
                f"cannot read {root / INDEX_FILE} (corrupt or truncated?): {first}; "
                "rebuild the index"
            ) from None
        if index.ntotal != m.passages or index.d != m.dimension:
            raise ArtifactError(
                f"{root / INDEX_FILE} holds {index.ntotal} vectors of {index.d} dims, manifest "
                f"says {m.passages} x {m.dimension}; rebuild the index"
            )
        return cls(root, m, store, index, _exact_embeddings(root, m), offset)


def _exact_embeddings(root: Path, m: IndexManifest) -> np.ndarray | None:
    """The stored exact embeddings, memory-mapped (None when the index keeps none)."""
    if not m.exact_embeddings:
        return None
    ep = m.exact_embeddings_path(root)
    dt = np.dtype(m.exact_embeddings["dtype"])
    if not ep.is_file() or ep.stat().st_size != m.passages * m.dimension * dt.itemsize:
        raise ArtifactError(f"{ep} is missing or has the wrong size; rebuild the index")
    return np.memmap(ep, dtype=dt, mode="r", shape=(m.passages, m.dimension))


class PassageIndex:
    """One or several INDEX_DIRs opened for search (see the module docstring)."""

    def __init__(self, shards: list[_Shard], search_index: Any, plan: GpuPlan):
        self.shards = shards
        self._search_index = search_index
        self.plan = plan
        self.manifest = shards[0].manifest
        self.dim = self.manifest.dimension
        self._offsets = np.array(
            [s.offset for s in shards] + [shards[-1].offset + len(shards[-1].store)]
        )
        self._nlists = [nlist_of(s.index) for s in shards]
        known = [x for x in self._nlists if x is not None]
        self.nlist = max(known) if len(known) == len(self._nlists) else None
        self.default_nprobe = self.manifest.nprobe
        self._lock = threading.Lock()

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        index_dirs: str | os.PathLike | Sequence[str | os.PathLike],
        *,
        verify: str = "auto",
        device: str = "cpu",
        gpus: Sequence[int] | None = None,
        mmap: bool = False,
    ) -> PassageIndex:
        """Open an INDEX_DIR, or a list of them as shards of one corpus.

        ``verify``: none | size | auto (sha256 of files <= 64 MiB, size of larger) | full.
        ``device``: cpu | cuda | auto (see :func:`gpu_plan`). ``mmap`` maps the inverted
        lists from disk instead of reading them into RAM.
        """
        faiss = load_faiss()
        dirs = [index_dirs] if isinstance(index_dirs, (str, os.PathLike)) else list(index_dirs)
        if not dirs:
            raise InputError("no index directory given")
        shards: list[_Shard] = []
        for d in dirs:
            offset = shards[-1].offset + shards[-1].manifest.passages if shards else 0
            shards.append(_Shard.open(Path(d), offset, verify=verify, mmap=mmap))
            if len(shards) > 1:
                _check_compatible(shards[0], shards[-1].manifest, shards[-1].root)
                for earlier in shards[:-1]:
                    _check_disjoint(earlier, shards[-1])
        if len(shards) == 1:
            cpu_index = shards[0].index
        else:
            cpu_index = faiss.IndexShards(shards[0].manifest.dimension, True, True)
            for s in shards:
                cpu_index.add_shard(s.index)
            cpu_index.referenced_objects = [s.index for s in shards]
        search_index, plan = (
            to_device(cpu_index, device=device, gpus=gpus)
            if device != "cpu"
            else (cpu_index, GpuPlan(False, "cpu requested"))
        )
        return cls(shards, search_index, plan)

    # -- properties ------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._offsets[-1])

    @property
    def exact_scores(self) -> bool:
        return all(s.manifest.exact_scores for s in self.shards)

    @property
    def has_exact_embeddings(self) -> bool:
        return all(s.emb is not None for s in self.shards)

    # -- encoder check ---------------------------------------------------------------------
    def check_encoder(self, encoder: Any) -> None:
        """Fail unless ``encoder`` (a question :class:`~ragrt.runtime.encoders.TextEncoder`, or an
        :class:`~ragrt.runtime.manifest.ArtifactManifest`) matches the model the index was built with."""
        if hasattr(encoder, "question_encoder") and hasattr(encoder, "files"):
            spec = encoder.question_encoder
            name, dim = spec.name, spec.dim
            shas = {encoder.files[p]["sha256"] for p in spec.onnx.values() if p in encoder.files}
        else:
            name, dim = encoder.name, encoder.dim
            shas = {getattr(encoder, "onnx_sha256", None)} - {None}
        check_model_identity(
            self.manifest, name=name, dim=dim, sha256s=shas, where=self.shards[0].root
        )

    # -- search ----------------------------------------------------------------------------
    def search(
        self,
        question_embeddings: Any,
        k: int,
        nprobe: int | None = None,
        *,
        return_embeddings: bool = False,
        rerank: bool | int = True,
    ) -> SearchResult:
        """Top-``k`` passages per question embedding, by inner product.

        ``nprobe`` defaults to the value calibrated at build time (recall@10 >= 0.95 vs exact).
        With exact embeddings stored, ``rerank`` (True, or a candidate count) re-scores
        ``max(256, 16k)`` IVF-PQ candidates exactly and ``scores`` are exact ``q . d``.
        """
        q = check_queries(question_embeddings, self.dim)
        k = check_k(k, len(self))
        if nprobe is not None:
            if isinstance(nprobe, bool) or not isinstance(nprobe, (int, np.integer)) or nprobe <= 0:
                raise InputError(f"nprobe must be a positive integer, got {nprobe!r}")
        npb = nprobe if nprobe is not None else self.default_nprobe
        exact = self._exact if self.has_exact_embeddings else None
        n_cand = None
        if exact is not None and rerank:
            n_cand = int(rerank) if rerank is not True else max(RERANK_MIN, RERANK_FACTOR * k)
            if self.nlist is None:  # flat index: its scores are exact already, no re-rank
                n_cand = k
        rows, scores = search_core(
            self._search_index, q, k, nprobe=npb, nlist=self.nlist, exact=exact, rerank=n_cand
        )
        if exact is not None and n_cand is None:  # no re-rank asked: still report exact q.d
            e = exact(np.maximum(rows, 0))
            scores = np.einsum("bd,bkd->bk", q, e, dtype=np.float32)
        emb = None
        if return_embeddings:
            emb = exact(np.maximum(rows, 0)) if exact is not None else self._reconstruct(rows)
            emb[rows < 0] = 0
        return SearchResult(rows, scores.astype(np.float32), emb)

    def _locate(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s = np.searchsorted(self._offsets, rows, side="right") - 1
        return s, rows - self._offsets[s]

    def _exact(self, rows: np.ndarray) -> np.ndarray:
        flat = np.asarray(rows, dtype=np.int64).ravel()
        out = np.empty((len(flat), self.dim), dtype=np.float32)
        embs = [sh.emb for sh in self.shards if sh.emb is not None]
        if len(embs) != len(self.shards):
            raise ArtifactError("exact scores need every shard's stored embeddings")
        if len(embs) == 1:
            out[:] = embs[0][flat]
        else:
            sid, local = self._locate(flat)
            for i, e in enumerate(embs):
                sel = np.flatnonzero(sid == i)
                if len(sel):
                    out[sel] = e[local[sel]]
        return out.reshape(*np.shape(rows), self.dim)

    def _reconstruct(self, rows: np.ndarray) -> np.ndarray:
        faiss = load_faiss()
        flat = np.asarray(rows, dtype=np.int64).ravel()
        out = np.zeros((len(flat), self.dim), dtype=np.float32)
        sid, local = self._locate(np.maximum(flat, 0))
        with self._lock:
            for i, sh in enumerate(self.shards):
                sel = np.flatnonzero((sid == i) & (flat >= 0))
                if not len(sel):
                    continue
                if self._nlists[i] is not None:
                    ivf = faiss.extract_index_ivf(sh.index)
                    if ivf.direct_map.no():
                        ivf.make_direct_map()
                out[sel] = sh.index.reconstruct_batch(local[sel])
        return out.reshape(*np.shape(rows), self.dim)

    def embeddings(self, rows: Any) -> np.ndarray:
        """Stored exact embeddings (or PQ reconstructions) of passage ``rows``, float32."""
        r = np.asarray(rows, dtype=np.int64)
        if r.size and (r.min() < 0 or r.max() >= len(self)):
            raise InputError(f"passage rows out of range [0, {len(self)})")
        return self._exact(r) if self.has_exact_embeddings else self._reconstruct(r)

    # -- passages --------------------------------------------------------------------------
    def passage(self, row: int) -> Doc:
        r = int(row)
        if not 0 <= r < len(self):
            raise InputError(f"passage row {row} out of range [0, {len(self)})")
        s, local = self._locate(np.array([r]))
        p = self.shards[int(s[0])].store[int(local[0])]
        return Doc(id=p.id, title=p.title, text=p.text, score=float("nan"))

    def passages(self, rows: Any, scores: Any = None) -> list[Doc]:
        """Docs for passage ``rows`` (1-D), with ``scores`` when given; -1 rows are dropped."""
        rows = np.asarray(rows, dtype=np.int64).ravel()
        sc = None if scores is None else np.asarray(scores, dtype=np.float64).ravel()
        docs = []
        seen: dict[str, int] = {}
        for i, r in enumerate(rows):
            if r < 0:
                continue
            d = self.passage(int(r))
            d.score = float(sc[i]) if sc is not None else float("nan")
            if d.id in seen and len(self.shards) > 1:  # ids are unique within a shard
                raise self._duplicate(d.id, seen[d.id], int(r))
            seen[d.id] = int(r)
            docs.append(d)
        return docs

    def _duplicate(self, pid: str, row_a: int, row_b: int) -> ArtifactError:
        (sa, sb), (la, lb) = self._locate(np.array([row_a, row_b]))
        return _shared_id_error(
            pid, self.shards[int(sa)].root, int(la), self.shards[int(sb)].root, int(lb)
        )

    def docs(self, result: SearchResult) -> list[list[Doc]]:
        """One list of :class:`~ragrt.results.Doc` per question of a :meth:`search` result."""
        return [self.passages(r, s) for r, s in zip(result.rows, result.scores)]

    def row_of(self, pid: str | int) -> int:
        """Global row of passage id ``pid`` (O(1) per shard)."""
        for sh in self.shards:
            r = sh.store.find(pid)
            if r is not None:
                return sh.offset + r
        raise InputError(f"no passage with id {str(pid)!r} in the index")

    def by_id(self, pid: str | int) -> Doc:
        return self.passage(self.row_of(pid))


def _shared_id_error(pid: str, root_a: Path, row_a: int, root_b: Path, row_b: int) -> ArtifactError:
    return ArtifactError(
        f"passage id {pid!r} is in two shards: {root_a} (row {row_a}) and {root_b} (row "
        f"{row_b}); shards of one corpus must not share passages (the same passage would come "
        "back twice): rebuild them from disjoint passage files"
    )


def _check_disjoint(a: _Shard, b: _Shard) -> None:
    """Refuse two shards that share a passage id. Indexes built before ragrt kept sorted id
    hashes cannot be compared cheaply; for them a shared id is refused when a search returns
    it from both shards."""
    shared = shared_ids(a.store, b.store, limit=1)
    if shared:
        pid, ra, rb = shared[0]
        raise _shared_id_error(pid, a.root, ra, b.root, rb)


def _check_compatible(first: _Shard, m: IndexManifest, root: Path) -> None:
    a = first.manifest
    if m.dimension != a.dimension or m.metric != a.metric:
        raise ArtifactError(
            f"shard {root} ({m.dimension}-d {m.metric}) does not match shard {first.root} "
            f"({a.dimension}-d {a.metric})"
        )
    ka = {k: a.embedding_model.get(k) for k in ("name", "question_encoder")}
    km = {k: m.embedding_model.get(k) for k in ("name", "question_encoder")}
    if ka != km:
        raise ArtifactError(
            f"shard {root} was built with another embedding model than {first.root}"
        )
    if (m.exact_embeddings is None) != (a.exact_embeddings is None):
        raise ArtifactError(
            f"shards {first.root} and {root} differ in exact embeddings; rebuild one"
        )
