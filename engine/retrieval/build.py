"""Building an INDEX_DIR: passages -> store + embeddings -> trained, filled FAISS index.

Everything is written into a staging directory next to ``OUT`` (:func:`ragrt.artifacts.staging_dir`)
and renamed to ``OUT`` only when complete (manifest last), so an interrupted or failed build
never leaves a directory that looks like a valid index; ``--overwrite`` replaces only an index. Memory stays bounded: passages stream from the file, embeddings go to a
memory-mapped work file, training uses a random sample and vectors are added in chunks.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ragrt import __version__
from ragrt.artifacts import check_output, file_record, staging_dir
from ragrt.errors import InputError
from ragrt.retrieval.faiss_index import (
    FLAT_BELOW,
    default_factory,
    default_train_size,
    load_faiss,
    nlist_of,
)
from ragrt.retrieval.index_manifest import EMB_FILES, INDEX_FILE, KIND, METRIC, IndexManifest
from ragrt.retrieval.passages import (
    ID_HASHES_FILE,
    STORE_FILES,
    Passage,
    ReadStats,
    build_store,
    count_rows,
    iter_passages,
)
from ragrt.retrieval.search import RERANK_FACTOR, RERANK_MIN, search_core

log = logging.getLogger(__name__)

TARGET_RECALL = 0.95
#: the passage-as-query proxy is optimistic; it must reach the target plus this
PROXY_MARGIN = 0.03


@dataclass
class BuildOptions:
    """Knobs of :func:`build_index` (CLI flags of ``ragrt index build``)."""

    factory: str | None = None  # default: from corpus size (default_factory)
    train_size: int | None = None  # default: 50 points per list, >= 65536, <= N
    exact_embeddings: bool = True
    exact_dtype: str = "float16"
    skip_bad_rows: bool = False
    batch_size: int = 64
    add_chunk: int = 65536
    embed_chunk: int = 4096  # passages sorted by length together before batching
    seed: int = 0
    calibrate_queries: int = 200
    target_recall: float = TARGET_RECALL
    nprobe: int | None = None  # fix the default nprobe instead of calibrating it
    #: question embeddings [Q, dim] (array or .npy) to calibrate nprobe on; default: sampled
    #: passages as queries (a proxy that can be optimistic, see calibrate_nprobe)
    calibration_queries: Any = None
    overwrite: bool = False
    progress: bool = True
    fmt: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def model_identity(art: Any, encoder: Any) -> dict[str, Any]:
    """What the manifest records about the embedding model (checked at query time)."""
    ident: dict[str, Any] = {"name": None, "dim": None}
    if encoder is not None:
        ident.update(
            name=encoder.name,
            dim=int(encoder.dim),
            precision=encoder.precision,
            onnx_sha256=encoder.onnx_sha256,
        )
    if art is not None:
        q = art.question_encoder
        ident["question_encoder"] = {
            "name": q.name,
            "dim": int(q.dim),
            "sha256": {p: art.files[r]["sha256"] for p, r in q.onnx.items() if r in art.files},
        }
        c = art.context_encoder
        if c is not None:
            ident["context_encoder"] = {
                "name": c.name,
                "dim": int(c.dim),
                "sha256": {p: art.files[r]["sha256"] for p, r in c.onnx.items() if r in art.files},
            }
            ident["name"] = ident["name"] or c.name
            ident["dim"] = ident["dim"] or int(c.dim)
        ident["name"] = ident["name"] or q.name
        ident["dim"] = ident["dim"] or int(q.dim)
    return ident


class _Embedder:
    """Collects passages, embeds them in length-sorted chunks, appends to the work file."""

    def __init__(self, encoder: Any, out: Path, dtype: str, opts: BuildOptions, total: int | None):
        self.encoder = encoder
        self.f = open(out, "wb")
        self.dtype = np.dtype(dtype)
        self.opts = opts
        self.buf: list[Passage] = []
        self.n = 0
        self.bar = None
        if opts.progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total,
                desc="embedding passages",
                unit="passage",
                unit_scale=True,
                dynamic_ncols=True,
            )

    def __call__(self, p: Passage) -> None:
        self.buf.append(p)
        if len(self.buf) >= self.opts.embed_chunk:
            self.flush()

    def flush(self) -> None:
        if not self.buf:
            return
        out = embed_passages(self.encoder, self.buf, self.opts.batch_size, start=self.n)
        self.f.write(np.ascontiguousarray(out, dtype=self.dtype).tobytes())
        self.n += len(self.buf)
        if self.bar is not None:
            self.bar.update(len(self.buf))
        self.buf = []

    def close(self) -> None:
        self.flush()
        self.f.close()
        if self.bar is not None:
            self.bar.close()


def embed_passages(
    encoder: Any, passages: Sequence[Passage], batch_size: int, start: int = 0
) -> np.ndarray:
    """Embeddings ``[len(passages), dim]`` float32 of ``title [SEP] text``, in input order.

    The chunk is sorted by length before batching (less padding) and put back in order. Both
    the one-process and the Ray build embed the same chunks through here, so they run the
    same batches and get the same bits. ``start`` (row of the first passage) locates NaN rows.
    """
    items = [(p.title, p.text) if p.title else p.text for p in passages]
    order = np.argsort([len(p.title) + len(p.text) for p in passages], kind="stable")
    emb = encoder.encode([items[i] for i in order], batch_size=batch_size, sort_by_length=False)
    out = np.empty_like(emb)
    out[order] = emb
    _check_finite(out, start, "the context encoder produced")
    return out


def _check_finite(x: np.ndarray, start: int, what: str) -> None:
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        row = start + int(np.flatnonzero(bad)[0])
        raise InputError(f"{what} NaN or infinite values (first at passage row {row})")


def load_embeddings(path: str | os.PathLike) -> np.ndarray:
    """A ``.npy`` [N, dim] float array, memory-mapped (never read whole)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"embeddings file {p} does not exist")
    try:
        arr = np.load(p, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise InputError(f"cannot read embeddings {p} as a .npy array: {e}") from None
    if not isinstance(arr, np.ndarray):
        raise InputError(f"{p} is not a single .npy array")
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise InputError(f"embeddings {p} must have shape [passages, dim], got {list(arr.shape)}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise InputError(f"embeddings {p} must be float16/32/64, got {arr.dtype}")
    return arr


def _copy_embeddings(
    src: np.ndarray, rows: np.ndarray | None, out: Path, dtype: str, chunk: int, label: str
) -> None:
    """Write ``src[rows]`` as raw ``dtype`` to ``out`` in chunks, checking for NaN/inf."""
    n = len(rows) if rows is not None else len(src)
    dt = np.dtype(dtype)
    with open(out, "wb") as f:
        for s in range(0, n, chunk):
            block = src[rows[s : s + chunk]] if rows is not None else src[s : s + chunk]
            block = np.asarray(block, dtype=np.float32)
            _check_finite(block, s, f"{label} has")
            f.write(np.ascontiguousarray(block, dtype=dt).tobytes())


def check_options(opts: BuildOptions, out: Path) -> None:
    """Fail before any work on options no build can use (one-process and Ray alike)."""
    if opts.exact_dtype not in EMB_FILES:
        raise InputError(
            f"exact embedding dtype must be float16 or float32, got {opts.exact_dtype!r}"
        )
    if opts.batch_size <= 0:
        raise InputError(f"--batch-size must be >= 1, got {opts.batch_size}")
    if opts.train_size is not None and opts.train_size <= 0:
        raise InputError(f"--train-size must be >= 1, got {opts.train_size}")
    if opts.nprobe is not None and (
        isinstance(opts.nprobe, bool) or not isinstance(opts.nprobe, int) or opts.nprobe <= 0
    ):
        raise InputError(
            f"--nprobe must be an integer >= 1 (IVF lists probed per query), got {opts.nprobe!r}"
        )
    check_output(out, KIND, overwrite=opts.overwrite)


def work_file(opts: BuildOptions, est_rows: int) -> tuple[str, str]:
    """(dtype, file name) of the work embeddings for a corpus of about ``est_rows`` rows.

    The work file holds every embedding between embedding and adding (and is the exact store
    when kept). A flat index stores vectors as given, so it gets float32; IVF-PQ trains and
    adds from float16 (halves the disk for 21M x 768) unless float32 exact scores are asked.
    """
    keep = opts.exact_embeddings
    flat_expected = opts.factory == "Flat" or (opts.factory is None and est_rows < FLAT_BELOW)
    if flat_expected:
        return "float32", "embeddings.work"
    work_dtype = opts.exact_dtype if keep else "float16"
    return work_dtype, EMB_FILES[opts.exact_dtype] if keep else "embeddings.work"


def build_index(
    passages: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    model: str | os.PathLike | None = None,
    embeddings: str | os.PathLike | np.ndarray | None = None,
    encoder: Any = None,
    precision: str = "fp32",
    device: str = "cpu",
    options: BuildOptions | None = None,
) -> IndexManifest:
    """Build INDEX_DIR ``out_dir`` from a passage file.

    Embeddings come from ``model`` (an ART_DIR; its context encoder embeds ``title [SEP] text``
    as DPR does), an explicit ``encoder`` (anything with ``encode``/``dim``/``name``), or
    ``embeddings`` (a ``.npy`` path or array, one row per data row of the passage file in file
    order; rows of skipped bad passages are dropped with them). ``model`` together with
    ``embeddings`` records the model's identity without running it.
    """
    opts = options or BuildOptions()
    faiss = load_faiss()
    t_start = time.perf_counter()
    src = Path(passages)
    out = Path(out_dir)
    check_options(opts, out)
    art = None
    if model is not None:
        from ragrt.runtime import manifest as manifest_mod

        if embeddings is None and encoder is None:
            from ragrt.runtime.encoders import TextEncoder
            from ragrt.runtime.sessions import SessionOptions

            art = manifest_mod.load(model, precision=precision)  # verifies the files it runs
            encoder = TextEncoder.from_manifest(
                art, "context_encoder", precision, SessionOptions(device=device)
            )
        else:
            art = manifest_mod.load(model, verify=False)
    if embeddings is None and encoder is None:
        raise InputError(
            "give a model (--model ART_DIR) or precomputed embeddings (--embeddings FILE.npy)"
        )
    pre = None
    if embeddings is not None:
        pre = load_embeddings(embeddings) if not isinstance(embeddings, np.ndarray) else embeddings
        if pre.ndim != 2:
            raise InputError(f"embeddings must have shape [passages, dim], got {list(pre.shape)}")
    ident = model_identity(art, encoder if pre is None else None)
    dim = int(pre.shape[1]) if pre is not None else int(encoder.dim)
    if art is not None and ident.get("dim") and ident["dim"] != dim:
        raise InputError(
            f"embeddings have {dim} dims but the model {ident['name']!r} outputs {ident['dim']}"
        )
    ident["dim"] = dim

    with staging_dir(out, KIND, overwrite=opts.overwrite) as tmp:
        return _build(src, tmp, out, pre, encoder, dim, ident, opts, faiss, t_start)


def _build(
    src: Path,
    tmp: Path,
    out: Path,
    pre: np.ndarray | None,
    encoder: Any,
    dim: int,
    ident: dict[str, Any],
    opts: BuildOptions,
    faiss: Any,
    t_start: float,
) -> IndexManifest:
    stats = ReadStats(str(src), opts.fmt or "")
    est_rows = len(pre) if pre is not None else count_rows(src, opts.fmt)
    work_dtype, work_name = work_file(opts, est_rows)
    work = tmp / work_name
    timings: dict[str, float] = {}

    # 1. passages -> store (+ embeddings on the way)
    t = time.perf_counter()
    rows_iter = iter_passages(
        src, fmt=opts.fmt, skip_bad_rows=opts.skip_bad_rows, stats=stats, track_rows=pre is not None
    )
    if pre is None:
        emb = _Embedder(encoder, work, work_dtype, opts, est_rows)
        try:
            st = build_store(rows_iter, tmp, source=str(src), on_passage=emb)
        finally:
            emb.close()
    else:
        st = build_store(rows_iter, tmp, source=str(src))
        if len(pre) != stats.rows:
            raise InputError(
                f"embeddings have {len(pre)} rows but {src} has {stats.rows} passage rows; "
                "one embedding per row, in file order"
            )
        rows = np.asarray(stats.kept_rows, dtype=np.int64) if stats.skipped else None
        _copy_embeddings(pre, rows, work, work_dtype, opts.add_chunk, "the embeddings file")
    timings["store_and_embed_s"] = time.perf_counter() - t
    staged = StagedBuild(
        tmp=tmp,
        out=out,
        work=work,
        work_dtype=work_dtype,
        passages=st.passages,
        dim=dim,
        ident=ident,
        stats=stats,
        embeddings="precomputed" if pre is not None else "context_encoder",
        timings=timings,
        t_start=t_start,
    )
    return finish_index(staged, opts, faiss)


@dataclass
class StagedBuild:
    """A build directory whose passage store and work embeddings are written: what
    :func:`finish_index` turns into an index (the one-process and the Ray build stage it)."""

    tmp: Path
    out: Path
    work: Path  # raw ``work_dtype`` [passages, dim], row order (see :func:`work_file`)
    work_dtype: str
    passages: int
    dim: int
    ident: dict[str, Any]
    stats: ReadStats
    embeddings: str  # "context_encoder" | "precomputed"
    timings: dict[str, float]
    t_start: float


def add_in_chunks(index: Any, vecs: np.ndarray, chunk: int) -> None:
    """``index.add`` rows of ``vecs`` (any float dtype, memmap) in float32 chunks, in order."""
    for s in range(0, len(vecs), chunk):
        index.add(np.ascontiguousarray(vecs[s : s + chunk], dtype=np.float32))


def finish_index(
    staged: StagedBuild,
    opts: BuildOptions,
    faiss: Any,
    add: Callable[[Any, np.ndarray], None] | None = None,
) -> IndexManifest:
    """Train, fill and calibrate the index over the staged embeddings; write the manifest.

    ``add(trained_index, vecs)`` fills the index (default: :func:`add_in_chunks` in row order
    with ``opts.add_chunk``); the Ray build adds chunks on the cluster and merges them.
    """
    tmp, out, work, work_dtype = staged.tmp, staged.out, staged.work, staged.work_dtype
    n, dim, ident, stats = staged.passages, staged.dim, staged.ident, staged.stats
    timings, t_start, keep = staged.timings, staged.t_start, opts.exact_embeddings
    vecs = np.memmap(work, dtype=np.dtype(work_dtype), mode="r", shape=(n, dim))

    # 2. index: factory, train on a sample, add in chunks
    factory = opts.factory or default_factory(n, dim)
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except (RuntimeError, TypeError) as e:
        raise InputError(
            f"bad FAISS factory {factory!r} for {dim}-d vectors: {_first(e)}"
        ) from None
    is_flat = nlist_of(index) is None and type(faiss.downcast_index(index)).__name__.startswith(
        "IndexFlat"
    )
    rng = np.random.default_rng(opts.seed)
    t = time.perf_counter()
    train_n = 0
    if not index.is_trained:
        train_n = min(n, opts.train_size or default_train_size(n, factory))
        sample = np.sort(rng.choice(n, size=train_n, replace=False))
        xt = np.ascontiguousarray(vecs[sample], dtype=np.float32)
        log.info("training %s on %d vectors", factory, train_n)
        try:
            index.train(xt)
        except RuntimeError as e:
            raise InputError(
                f"cannot train {factory!r} on {train_n} vectors: {_first(e)} "
                "(fewer passages than lists? choose a smaller --factory or more --train-size)"
            ) from None
        del xt
    timings["train_s"] = time.perf_counter() - t
    t = time.perf_counter()
    if add is None:
        add_in_chunks(index, vecs, opts.add_chunk)
    else:
        add(index, vecs)
    timings["add_s"] = time.perf_counter() - t
    faiss.write_index(index, str(tmp / INDEX_FILE))

    # 3. exact embeddings: kept (IVF) / dropped (flat stores them exactly already)
    exact = None
    if keep and not is_flat:
        exact = {"file": work.name, "dtype": opts.exact_dtype}
    nlist = nlist_of(index)

    # 4. default nprobe from measured recall
    t = time.perf_counter()
    nprobe, calibration = _default_nprobe(index, vecs, nlist, dim, exact is not None, opts)
    timings["calibrate_s"] = time.perf_counter() - t
    del vecs
    if exact is None:
        work.unlink()

    files = {
        r: file_record(tmp, r)
        for r in [INDEX_FILE, *STORE_FILES, ID_HASHES_FILE] + ([exact["file"]] if exact else [])
    }
    man = IndexManifest(
        dimension=dim,
        metric=METRIC,
        factory=factory,
        passages=n,
        embedding_model=ident,
        scores="exact" if (is_flat or exact) else "pq_approximate",
        files=files,
        nprobe=nprobe,
        exact_embeddings=exact,
        calibration=calibration,
        source={
            "passages": stats.path,
            "format": stats.format,
            "rows": stats.rows,
            "skipped_rows": stats.skipped,
            "skipped_examples": [f"line {ln}: {r}" for ln, r in stats.skipped_rows],
            "embeddings": staged.embeddings,
        },
        build={
            "train_size": train_n,
            "seconds": round(time.perf_counter() - t_start, 3),
            **{k: round(v, 3) for k, v in timings.items()},
            "rerank": {"factor": RERANK_FACTOR, "min": RERANK_MIN},
            **opts.extra,
        },
        ragrt_version=__version__,
        created=_now(),
    )
    man.write(tmp)
    log.info("built %s: %d passages, %s, %.1fs", out, n, factory, time.perf_counter() - t_start)
    return man


def _default_nprobe(
    index: Any, vecs: np.ndarray, nlist: int | None, dim: int, exact_ok: bool, opts: BuildOptions
) -> tuple[int | None, dict[str, Any] | None]:
    """The index's default nprobe: none for a flat index, ``--nprobe`` when given, else
    calibrated (:func:`calibrate_nprobe`); with the calibration record."""
    if nlist is None:
        return None, None
    if opts.nprobe is not None:
        return int(opts.nprobe), None
    cq = opts.calibration_queries
    if cq is not None and not isinstance(cq, np.ndarray):
        cq = load_embeddings(cq)
    if cq is not None and (cq.ndim != 2 or cq.shape[1] != dim):
        raise InputError(
            f"calibration queries must have shape [queries, {dim}], got {list(cq.shape)}"
        )
    calibration = calibrate_nprobe(
        index,
        vecs,
        nlist,
        queries=cq,
        exact_ok=exact_ok,
        n_queries=opts.calibrate_queries,
        target=opts.target_recall,
        seed=opts.seed,
    )
    return calibration["nprobe"], calibration


def _first(e: BaseException) -> str:
    s = str(e).strip()
    for line in s.splitlines():
        if "Error" in line and ":" in line:
            return line.split(":", 1)[-1].strip() or s.splitlines()[0]
    return s.splitlines()[0] if s else type(e).__name__


def exact_topk(vecs: np.ndarray, q: np.ndarray, k: int, chunk: int = 65536) -> np.ndarray:
    """Exact inner-product top-``k`` rows of ``q`` over ``vecs``, best first, streaming
    ``vecs`` (a memmap) in chunks through ``faiss.contrib``'s ``knn_ground_truth``."""
    from faiss.contrib.exhaustive_search import knn_ground_truth

    faiss = load_faiss()
    blocks = (
        np.ascontiguousarray(vecs[s : s + chunk], dtype=np.float32)
        for s in range(0, len(vecs), chunk)
    )
    q32 = np.ascontiguousarray(q, dtype=np.float32)
    _, rows = knn_ground_truth(q32, blocks, k, metric_type=faiss.METRIC_INNER_PRODUCT, ngpu=0)
    return rows.astype(np.int64)


def calibrate_nprobe(
    index: Any,
    vecs: np.ndarray,
    nlist: int,
    *,
    exact_ok: bool,
    queries: np.ndarray | None = None,
    n_queries: int = 200,
    target: float = TARGET_RECALL,
    k: int = 10,
    seed: int = 0,
) -> dict[str, Any]:
    """Smallest power-of-two nprobe whose recall@k vs exact search reaches the target.

    With ``queries`` (question embeddings, the best choice: a few hundred real questions),
    recall is measured on them against exact search. Without, sampled passages serve as
    queries, each one's own row excluded from both result lists; passages find their
    neighbours more easily than questions do, so this proxy aims ``PROXY_MARGIN`` higher.
    """
    n = len(vecs)
    rng = np.random.default_rng(seed + 1)
    if queries is not None:
        q = np.ascontiguousarray(queries[:n_queries] if n_queries else queries, dtype=np.float32)
        _check_finite(q, 0, "calibration queries have")
        rows = np.full(len(q), -1, dtype=np.int64)  # nothing to exclude
        goal, source = target, "given question embeddings"
    else:
        rows = np.sort(rng.choice(n, size=min(n_queries, n), replace=False))
        q = np.ascontiguousarray(vecs[rows], dtype=np.float32)
        goal, source = min(0.995, target + PROXY_MARGIN), "sampled passages (proxy)"
    qn = len(q)
    kk = min(k, n - 1)
    if kk <= 0 or qn == 0:
        return {"nprobe": 1, f"recall@{k}": 1.0, "queries": qn, "sweep": {}}
    truth_top = _without(exact_topk(vecs, q, kk + 1), rows, kk)
    exact_fn = (
        (lambda r: np.asarray(vecs[r.ravel()], dtype=np.float32).reshape(*r.shape, -1))
        if exact_ok
        else None
    )
    from faiss.contrib.evaluation import knn_intersection_measure

    sweep: dict[str, float] = {}
    npb, chosen = 1, None
    while True:
        rerank = max(RERANK_MIN, RERANK_FACTOR * (kk + 1)) if exact_fn else None
        got, _ = search_core(
            index, q, kk + 1, nprobe=npb, nlist=nlist, exact=exact_fn, rerank=rerank
        )
        rec = float(knn_intersection_measure(truth_top, _without(got, rows, kk)))
        sweep[str(npb)] = round(rec, 4)
        if rec >= goal:
            chosen = npb
            break
        if npb >= nlist:
            break
        npb = min(npb * 2, nlist)
    if chosen is None:
        chosen = nlist
        log.warning(
            "recall@%d %.3f < %.2f even at nprobe=nlist=%d (PQ too coarse for this data?)",
            kk,
            sweep[str(nlist)],
            goal,
            nlist,
        )
    return {
        "nprobe": chosen,
        "queries_from": source,
        "goal": goal,
        f"recall@{k}": sweep[str(chosen)],
        "target": target,
        "queries": qn,
        "reranked": bool(exact_fn),
        "sweep": sweep,
    }


def _without(top: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """The first ``k`` of each row of ``top`` [Q, k+1], leaving out that query's own passage
    row (``rows[i]``; -1 excludes nothing). Short rows are padded with -2, which matches
    nothing."""
    out = np.full((len(top), k), -2, dtype=np.int64)
    for i, (t, r) in enumerate(zip(top, rows)):
        keep = t[t != r][:k]
        out[i, : len(keep)] = keep
    return out


__all__ = [
    "BuildOptions",
    "StagedBuild",
    "add_in_chunks",
    "build_index",
    "calibrate_nprobe",
    "check_options",
    "embed_passages",
    "exact_topk",
    "finish_index",
    "load_embeddings",
    "model_identity",
    "work_file",
]
