"""The passage index: FAISS inner-product search + the memory-mapped passage store.

An INDEX_DIR (written by :func:`ragrt.retrieval.build.build_index`, ``ragrt index build``) holds

``manifest.json``
    format, dimension, metric, factory, passage count, embedding model (name + sha256 of its
    ONNX files), whether doc scores are exact, the calibrated default nprobe, every file's
    sha256 and size.
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
them, rows numbered shard after shard), optionally cloned to GPUs (:func:`gpu_plan`).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ragrt.errors import ArtifactError, DeviceError, InputError
from ragrt.results import Doc
from ragrt.retrieval.passages import PassageStore
from ragrt.runtime import stack
from ragrt.runtime.manifest import sha256_file

log = logging.getLogger(__name__)

INDEX_FORMAT = "ragrt-index"
INDEX_FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
INDEX_FILE = "index.faiss"
EMB_FILES = {"float16": "embeddings.f16", "float32": "embeddings.f32"}
METRIC = "inner_product"
#: corpora below this size get an exact flat index (IVF needs ~40 training points per list)
FLAT_BELOW = 20_000
#: verify="auto" hashes files up to this size at open; larger ones get size + structure checks
AUTO_HASH_BYTES = 64 << 20
#: exact re-ranking looks at max(RERANK_MIN, RERANK_FACTOR * k) PQ candidates
RERANK_FACTOR = 16
RERANK_MIN = 256

# sub-quantizer counts and dims per sub-quantizer that faiss-gpu's IVFPQ supports
GPU_PQ_M = (1, 2, 3, 4, 8, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64, 96)
GPU_PQ_SUBDIMS = (1, 2, 3, 4, 6, 8, 10, 12, 16, 20, 24, 28, 32)


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
    import re

    m = re.match(r"IVF(\d+)", factory)
    nlist = int(m.group(1)) if m else 0
    return int(min(n, max(50 * nlist, 65536)))


# -- manifest --------------------------------------------------------------------------------
@dataclass
class IndexManifest:
    """Parsed ``INDEX_DIR/manifest.json``."""

    dimension: int
    metric: str
    factory: str
    passages: int
    embedding_model: dict[str, Any]
    scores: str  # "exact" | "pq_approximate"
    files: dict[str, dict[str, Any]]
    nprobe: int | None = None
    exact_embeddings: dict[str, Any] | None = None  # {"file", "dtype"}
    calibration: dict[str, Any] | None = None
    source: dict[str, Any] = field(default_factory=dict)
    build: dict[str, Any] = field(default_factory=dict)
    ragrt_version: str = ""
    created: str = ""
    format: str = INDEX_FORMAT
    format_version: int = INDEX_FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, root: str | os.PathLike) -> Path:
        p = Path(root) / MANIFEST_NAME
        p.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return p

    @property
    def exact_scores(self) -> bool:
        return self.scores == "exact"

    @classmethod
    def load(cls, root: str | os.PathLike) -> IndexManifest:
        root = Path(root)
        if not root.exists():
            raise ArtifactError(
                f"index directory {root} does not exist; build it with `ragrt index build`"
            )
        if not root.is_dir():
            raise ArtifactError(
                f"{root} is not a directory; pass the INDEX_DIR of `ragrt index build`"
            )
        mpath = root / MANIFEST_NAME
        if not mpath.is_file():
            raise ArtifactError(
                f"{root} has no {MANIFEST_NAME}: not a (complete) ragrt index; a build that did "
                "not finish leaves none - rebuild with `ragrt index build`"
            )
        try:
            data = json.loads(mpath.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ArtifactError(f"{mpath} is not valid JSON ({e}); rebuild the index") from None
        if not isinstance(data, dict) or data.get("format") != INDEX_FORMAT:
            raise ArtifactError(f"{mpath} is not a ragrt index manifest; rebuild the index")
        if int(data.get("format_version", -1)) > INDEX_FORMAT_VERSION:
            raise ArtifactError(f"{root} was written by a newer ragrt; upgrade ragrt or rebuild")
        try:
            from dataclasses import fields

            names = {f.name for f in fields(cls)}
            m = cls(**{k: v for k, v in data.items() if k in names})
            m.dimension, m.passages = int(m.dimension), int(m.passages)
        except (TypeError, ValueError) as e:
            raise ArtifactError(f"{mpath} is malformed ({e}); rebuild the index") from None
        return m

    def verify(self, root: Path, mode: str = "auto") -> None:
        """Files present with recorded sizes; sha256 too (``full``, or small files in ``auto``)."""
        if mode not in ("none", "size", "auto", "full"):
            raise InputError(f"unknown verify mode {mode!r}: none, size, auto or full")
        if mode == "none":
            return
        for rel, rec in self.files.items():
            p = root / rel
            if not p.is_file():
                raise ArtifactError(
                    f"index file {p} is missing; the index is incomplete - rebuild it"
                )
            size = p.stat().st_size
            if size != rec["bytes"]:
                raise ArtifactError(
                    f"index file {p} is corrupt or truncated: {size} bytes, manifest says "
                    f"{rec['bytes']}; re-copy or rebuild the index"
                )
            if mode == "full" or (mode == "auto" and size <= AUTO_HASH_BYTES):
                if sha256_file(p) != rec["sha256"]:
                    raise ArtifactError(
                        f"index file {p} is corrupt: sha256 does not match the manifest; "
                        "re-copy or rebuild the index"
                    )


# -- GPU decisions ---------------------------------------------------------------------------
@dataclass
class GpuPlan:
    """What :func:`to_device` will do with an index (decided without touching a GPU)."""

    use_gpu: bool
    reason: str
    gpus: list[int] = field(default_factory=list)
    shard: bool = False
    float16_lookup_tables: bool = False
    flat_coarse_quantizer: bool = False  # an HNSW (or other) coarse quantizer must be rebuilt


def describe_index(index: Any, faiss_module: Any = None) -> dict[str, Any]:
    """Kind of a CPU faiss index: flat / ivfflat / ivfpq (+ M, nbits, coarse quantizer class)."""
    faiss = faiss_module or _faiss()
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

    def no(reason: str) -> GpuPlan:
        if device == "cuda":
            raise DeviceError(f"cannot put the index on a GPU: {reason}; use --device cpu")
        return GpuPlan(False, reason)

    if device == "cpu":
        return GpuPlan(False, "cpu requested")
    if not has_gpu_faiss:
        return no(f"this faiss build has no GPU support (switch stacks: {stack.TO_GPU})")
    if num_gpus <= 0:
        return no("faiss sees no CUDA device")
    ids = list(range(num_gpus)) if gpus is None else [int(g) for g in gpus]
    bad = [g for g in ids if not 0 <= g < num_gpus]
    if bad or not ids:
        raise InputError(f"GPU ids {ids} invalid: this machine has {num_gpus} GPU(s)")
    kind = info.get("kind")
    plan = GpuPlan(True, "ok", gpus=ids, shard=shard and len(ids) > 1)
    if kind == "ivfpq":
        m, nbits = info["M"], info["nbits"]
        if nbits != 8:
            return no(f"GPU IVF-PQ needs 8-bit codes, index has {nbits}")
        if m not in GPU_PQ_M or info["d"] % m or info["d"] // m not in GPU_PQ_SUBDIMS:
            return no(f"GPU IVF-PQ does not support PQ{m} on {info['d']} dims")
        plan.float16_lookup_tables = True  # needed for M=64 8-bit (shared memory), harmless else
        plan.flat_coarse_quantizer = not str(info.get("coarse", "")).startswith("IndexFlat")
    elif kind == "ivfflat":
        plan.flat_coarse_quantizer = not str(info.get("coarse", "")).startswith("IndexFlat")
    elif kind != "flat":
        return no(f"{info.get('class')} has no GPU clone path in ragrt")
    return plan


def is_gpu_index(index: Any, faiss_module: Any = None) -> bool:
    """True when ``index`` (or every shard/replica of it) is a ``Gpu*`` class."""
    faiss = faiss_module or _faiss()
    idx = faiss.downcast_index(index)
    name = type(idx).__name__
    if name.startswith("Gpu"):
        return True
    if name in ("IndexShards", "IndexReplicas"):
        n = idx.count()
        return n > 0 and all(is_gpu_index(idx.at(i), faiss) for i in range(n))
    return False


def with_flat_coarse_quantizer(index: Any, faiss_module: Any = None) -> Any:
    """A copy of an IVF index whose (e.g. HNSW) coarse quantizer is replaced by a flat one
    holding the same centroids (GPU faiss cannot clone HNSW)."""
    faiss = faiss_module or _faiss()
    ivf = faiss.clone_index(index)  # owning, already downcast (do not re-wrap: GC would free it)
    centroids = ivf.quantizer.reconstruct_n(0, ivf.nlist)
    metric_ip = ivf.metric_type == faiss.METRIC_INNER_PRODUCT
    flat = faiss.IndexFlatIP(ivf.d) if metric_ip else faiss.IndexFlatL2(ivf.d)
    flat.add(centroids)
    old = ivf.quantizer
    ivf.quantizer = flat
    if ivf.own_fields and hasattr(old, "this"):
        old.this.acquire()  # Python now frees the old (HNSW) quantizer
    ivf.own_fields = False
    ivf.referenced_objects = [flat]  # keep the new quantizer alive as long as the index
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
    faiss = faiss_module or _faiss()
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
        log.warning("index stays on the CPU: GPU clone failed (%s)", e)
        return index, GpuPlan(False, f"GPU clone failed: {e}")
    if not is_gpu_index(gpu, faiss):
        msg = f"GPU clone produced {type(faiss.downcast_index(gpu)).__name__}, not a Gpu* index"
        if device == "cuda":
            raise DeviceError(msg)
        log.warning("index stays on the CPU: %s", msg)
        return index, GpuPlan(False, msg)
    gpu.referenced_objects = [resources, src]
    return gpu, plan


def _faiss():
    return stack.faiss()  # checks that one faiss build (CPU or GPU) is installed, not both


# -- search ----------------------------------------------------------------------------------
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
    faiss = faiss_module or _faiss()
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


@dataclass
class _Shard:
    root: Path
    manifest: IndexManifest
    store: PassageStore
    index: Any
    emb: np.ndarray | None
    offset: int


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
        self._nlists = [_nlist(s.index) for s in shards]
        self.nlist = max(self._nlists) if all(x is not None for x in self._nlists) else None
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
        faiss = _faiss()
        dirs = [index_dirs] if isinstance(index_dirs, (str, os.PathLike)) else list(index_dirs)
        if not dirs:
            raise InputError("no index directory given")
        shards: list[_Shard] = []
        offset = 0
        for d in dirs:
            root = Path(d)
            m = IndexManifest.load(root)
            m.verify(root, verify)
            if shards:
                _check_compatible(shards[0], m, root)
            store = PassageStore(root)
            if len(store) != m.passages:
                raise ArtifactError(
                    f"{root}: passage store has {len(store)} passages, manifest says {m.passages}; rebuild"
                )
            flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
            try:
                index = faiss.read_index(str(root / INDEX_FILE), flags)
            except (RuntimeError, MemoryError) as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise ArtifactError(
                    f"cannot read {root / INDEX_FILE} (corrupt or truncated?): {first}; rebuild the index"
                ) from None
            if index.ntotal != m.passages or index.d != m.dimension:
                raise ArtifactError(
                    f"{root / INDEX_FILE} holds {index.ntotal} vectors of {index.d} dims, manifest "
                    f"says {m.passages} x {m.dimension}; rebuild the index"
                )
            emb = None
            if m.exact_embeddings:
                ep = root / m.exact_embeddings["file"]
                dt = np.dtype(m.exact_embeddings["dtype"])
                if not ep.is_file() or ep.stat().st_size != m.passages * m.dimension * dt.itemsize:
                    raise ArtifactError(f"{ep} is missing or has the wrong size; rebuild the index")
                emb = np.memmap(ep, dtype=dt, mode="r", shape=(m.passages, m.dimension))
            shards.append(_Shard(root, m, store, index, emb, offset))
            offset += m.passages
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
        if len(self.shards) == 1:
            out[:] = self.shards[0].emb[flat]
        else:
            sid, local = self._locate(flat)
            for i, sh in enumerate(self.shards):
                sel = np.flatnonzero(sid == i)
                if len(sel):
                    out[sel] = sh.emb[local[sel]]
        return out.reshape(*np.shape(rows), self.dim)

    def _reconstruct(self, rows: np.ndarray) -> np.ndarray:
        faiss = _faiss()
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
        for i, r in enumerate(rows):
            if r < 0:
                continue
            d = self.passage(int(r))
            d.score = float(sc[i]) if sc is not None else float("nan")
            docs.append(d)
        return docs

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


def _nlist(index: Any) -> int | None:
    faiss = _faiss()
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        return None
    return int(ivf.nlist) if ivf is not None else None


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


def check_model_identity(
    m: IndexManifest, *, name: str, dim: int, sha256s: set[str], where: Any = "index"
) -> None:
    """The dimension must match; when the index recorded its encoder, name and sha256 too."""
    em = m.embedding_model or {}
    built = em.get("question_encoder") or {}
    built_name = built.get("name") or em.get("name") or "precomputed embeddings"
    if int(dim) != m.dimension:
        raise ArtifactError(
            f"index {where} holds {m.dimension}-d embeddings ({built_name}) but the question "
            f"encoder {name!r} outputs {dim}-d: use the model the index was built with, or "
            "rebuild the index with `ragrt index build --model ART_DIR`"
        )
    if not built:
        log.warning(
            "index %s was built from precomputed embeddings with no recorded model; "
            "only the dimension (%d) was checked",
            where,
            m.dimension,
        )
        return
    recorded = set((built.get("sha256") or {}).values())
    if built.get("name") != name or (sha256s and recorded and not (sha256s & recorded)):
        raise ArtifactError(
            f"index {where} was built for question encoder {built.get('name')!r} "
            f"(onnx sha256 {', '.join(sorted(x[:12] for x in recorded)) or '?'}) but the model "
            f"has {name!r} (sha256 {', '.join(sorted(x[:12] for x in sha256s)) or '?'}): another "
            "encoder; use the ART_DIR the index was built with or rebuild the index"
        )
