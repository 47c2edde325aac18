"""The index build on a Ray cluster: the one-process build's index, embedded by many workers.

``ragrt index build ... --ray [ADDRESS]`` runs :func:`build_index_ray`. The process that runs
it (the driver) must be on a node of the cluster; the ART_DIR must be readable at the same path
on every node (a shared volume, or baked into the image); the passage file and the output are
only needed on the driver's node. Stages:

1. The driver streams the passage file once with ragrt's own reader (the same bad-row handling
   and duplicate-id check as the one-process build) into the final passage store, in corpus
   order, inside the work directory ``.OUT.ray-work`` next to ``OUT``.
2. Ray Data turns the rows into blocks of ``block_rows`` (row ranges, so row numbers stay corpus
   order). A reader actor pinned to the driver's node reads each block's passages from the
   store, and a pool of ``workers`` embedding actors (:class:`BlockEmbedder`: the ONNX context
   encoder loaded once per actor, on ``cpu`` or one GPU each) embeds them in the same
   length-sorted chunks as the one-process build (:func:`~ragrt.retrieval.build.embed_passages`).
   Each finished block comes back to the driver, which writes it into its rows of the work
   embeddings file, flushes it to disk and only then marks the shard done
   (``shards/block-NNNNNN.json``). Ray restarts a killed actor and retries its blocks; a build
   that still fails (or is interrupted) keeps the work directory, and ``--resume`` embeds only
   the blocks without a done mark.
3. The driver finishes as the one-process build does (:func:`~ragrt.retrieval.build.finish_index`):
   the same training sample (same seed, same quantizer), codes for IVF indexes computed on the
   cluster per add chunk (``sa_encode``, the one-process build's add chunks, so the same
   batches) and appended in row order (``add_sa_codes``), nprobe calibrated, the directory
   published atomically. The index files are byte-identical to the one-process build's.

Ray (the ``distributed`` extra) is imported only here, and only when a Ray build runs.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import warnings
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ragrt.artifacts import publish_dir
from ragrt.errors import DeviceError, InputError, RagrtError, error_from_code
from ragrt.retrieval.build import (
    BuildOptions,
    StagedBuild,
    add_in_chunks,
    check_options,
    embed_passages,
    finish_index,
    model_identity,
    work_file,
)
from ragrt.retrieval.index_manifest import KIND, IndexManifest
from ragrt.retrieval.passages import (
    PassageStore,
    ReadStats,
    build_store,
    count_rows,
    iter_passages,
)

log = logging.getLogger(__name__)

WORK_SUFFIX = ".ray-work"
PLAN_FILE = "plan.json"
STORE_DONE = "store.json"
SHARDS_DIR = "shards"
#: a dead embedding actor is restarted, and its blocks retried, this many times by default
MAX_RETRIES = 3


@dataclass
class RayOptions:
    """Knobs of :func:`build_index_ray` (the ``--ray`` flags of ``ragrt index build``)."""

    #: ``None``: the cluster in ``RAY_ADDRESS`` (as a KubeRay RayJob sets it), else a new local
    #: Ray runtime; ``"auto"``: the cluster this node belongs to; ``HOST:PORT``: that cluster
    address: str | None = None
    workers: int = 1  # embedding actors
    cpus_per_worker: float = 1.0  # Ray CPUs per actor, and its ONNX Runtime threads
    #: rows per shard; a multiple of BuildOptions.embed_chunk (4096) embeds the very same
    #: chunks as the one-process build
    block_rows: int = 4096
    resume: bool = False
    max_retries: int = MAX_RETRIES  # restarts of a dead actor, retries of its blocks
    #: object store of a new local runtime (bytes; None: Ray's default, 30% of RAM)
    object_store_memory: int | None = None


def work_dir_for(out: str | os.PathLike) -> Path:
    """Where the Ray build of ``out`` keeps its store, shards and plan until it publishes."""
    out = Path(out)
    return out.with_name(f".{out.name}{WORK_SUFFIX}")


@dataclass(frozen=True)
class _EncoderIdentity:
    """What :func:`model_identity` reads from an encoder, taken from the manifest alone (the
    driver records the identity without opening an ONNX session)."""

    name: str
    dim: int
    precision: str
    onnx_sha256: str


def _encoder_identity(art: Any, precision: str) -> _EncoderIdentity:
    spec = art.encoder("context_encoder")
    art.require_precision(precision)
    if precision not in spec.onnx:
        raise InputError(f"context_encoder has no {precision} variant in {art.root}")
    sha = art.files[spec.onnx[precision]]["sha256"]
    return _EncoderIdentity(spec.name, int(spec.dim), precision, sha)


def _ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise RagrtError(
            f"the Ray build needs the distributed extra ({e.name} is missing): "
            "pip install 'ragrt[distributed]'"
        ) from None
    return ray


# -- Ray Data stages (run in Ray worker processes) ----------------------------------------------
class BlockReader:
    """Reads blocks of passages from the store; pinned to the driver's node, which holds it."""

    def __init__(self, store: str):
        self.store = PassageStore(store)

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        out: dict[str, list] = {"block": [], "start": [], "title": [], "text": []}
        for b, s, e in zip(
            batch.column("block").to_pylist(),
            batch.column("start").to_pylist(),
            batch.column("stop").to_pylist(),
        ):
            ps = [self.store[r] for r in range(s, e)]
            out["block"].append(b)
            out["start"].append(s)
            out["title"].append([p.title for p in ps])
            out["text"].append([p.text for p in ps])
        return pa.table(out)


class BlockEmbedder:
    """One embedding actor: loads the context encoder once, embeds whole blocks.

    A block is embedded in the one-process build's chunks (row multiples of ``embed_chunk``),
    so both builds run the same batches through the same graph.
    """

    def __init__(
        self,
        model: str,
        precision: str,
        device: str,
        threads: int,
        batch_size: int,
        embed_chunk: int,
        dtype: str,
        onnx_sha256: str,
    ):
        from ragrt.errors import ArtifactError
        from ragrt.runtime import manifest as manifest_mod
        from ragrt.runtime.encoders import TextEncoder
        from ragrt.runtime.sessions import SessionOptions

        if not Path(model).is_dir():
            raise ArtifactError(
                f"ART_DIR {model} does not exist on Ray node {os.uname().nodename}: the Ray "
                "build needs the artifacts at the same path on every node (a shared volume or "
                "the image)"
            )
        art = manifest_mod.load(model, precision=precision)
        self.encoder = TextEncoder.from_manifest(
            art,
            "context_encoder",
            precision,
            SessionOptions(device=device, intra_op_threads=threads),
        )
        if self.encoder.onnx_sha256 != onnx_sha256:
            raise ArtifactError(
                f"ART_DIR {model} on Ray node {os.uname().nodename} holds another context encoder "
                f"(sha256 {self.encoder.onnx_sha256[:12]}, the driver's is {onnx_sha256[:12]}): "
                "give every node the same artifacts"
            )
        self.batch_size = batch_size
        self.embed_chunk = embed_chunk
        self.dtype = np.dtype(dtype)

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        from ragrt.retrieval.passages import Passage

        out: dict[str, list] = {"block": [], "start": [], "emb": []}
        for b, s, titles, texts in zip(
            batch.column("block").to_pylist(),
            batch.column("start").to_pylist(),
            batch.column("title").to_pylist(),
            batch.column("text").to_pylist(),
        ):
            ps = [Passage("", t, x) for t, x in zip(titles, texts)]
            parts = []
            for c0, c1 in _chunks(s, s + len(ps), self.embed_chunk):
                emb = embed_passages(self.encoder, ps[c0 - s : c1 - s], self.batch_size, start=c0)
                parts.append(np.ascontiguousarray(emb, dtype=self.dtype))
            out["block"].append(b)
            out["start"].append(s)
            out["emb"].append(np.concatenate(parts).tobytes())
        return pa.table(out)


def _chunks(start: int, stop: int, chunk: int) -> list[tuple[int, int]]:
    """``[start, stop)`` cut at the multiples of ``chunk`` (the one-process build's chunks)."""
    cuts = [start, *range((start // chunk + 1) * chunk, stop, chunk), stop]
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]


def sa_encode_chunk(index_bytes: np.ndarray, x: np.ndarray, threads: int) -> np.ndarray:
    """Standalone codes (list number + PQ code) of ``x`` under the trained, empty index: the
    expensive part of ``add`` (coarse assignment and encoding), run on the cluster."""
    import faiss

    faiss.omp_set_num_threads(max(1, threads))
    index = faiss.deserialize_index(index_bytes)
    return index.sa_encode(np.ascontiguousarray(x, dtype=np.float32))


# -- the driver ---------------------------------------------------------------------------------
def build_index_ray(
    passages: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    model: str | os.PathLike,
    precision: str = "fp32",
    device: str = "cpu",
    options: BuildOptions | None = None,
    ray_options: RayOptions | None = None,
) -> IndexManifest:
    """Build INDEX_DIR ``out_dir`` from a passage file on a Ray cluster (module docstring).

    The result equals :func:`~ragrt.retrieval.build.build_index` with the same ``model`` and
    options: same passage store, same embeddings, byte-identical FAISS index. A failed or
    interrupted build leaves no ``out_dir``, only its work directory (:func:`work_dir_for`),
    from which ``ray_options.resume`` continues.
    """
    from ragrt.runtime import manifest as manifest_mod

    opts = options or BuildOptions()
    ropts = ray_options or RayOptions()
    t_start = time.perf_counter()
    src, out = Path(passages), Path(out_dir)
    _check_ray_options(ropts, device)
    check_options(opts, out)
    ray = _ray()  # before any work: the extra may be missing
    if model is None:
        raise InputError(
            "the Ray build embeds passages with --model ART_DIR's context encoder; precomputed "
            "--embeddings need no cluster: drop --ray"
        )
    art = manifest_mod.load(model, precision=precision)  # verifies the files the workers run
    enc = _encoder_identity(art, precision)
    ident = model_identity(art, enc)
    dim = enc.dim
    work_dtype, work_name = work_file(opts, count_rows(src, opts.fmt))
    wd = work_dir_for(out)
    plan = {
        "passages": str(src.resolve()),
        "passages_bytes": src.stat().st_size,
        "passages_mtime_ns": src.stat().st_mtime_ns,
        "format": opts.fmt,
        "skip_bad_rows": opts.skip_bad_rows,
        "model": ident,
        "block_rows": ropts.block_rows,
        "embed_chunk": opts.embed_chunk,
        "work": [work_name, work_dtype],
    }
    _open_work_dir(wd, out, plan, ropts.resume)
    try:
        return _build(
            ray,
            src,
            out,
            wd,
            art,
            enc,
            ident,
            dim,
            work_name,
            work_dtype,
            plan,
            opts,
            ropts,
            device,
            t_start,
        )
    except BaseException as e:
        done = _done_shards(wd)
        if not done:  # nothing worth resuming: leave nothing behind
            shutil.rmtree(wd, ignore_errors=True)
        elif not isinstance(e, RagrtError):  # a RagrtError's message says it already
            log.warning(
                "build of %s stopped (%s); %d embedded shards are kept in %s: rerun with "
                "--resume to embed only the rest, or delete it",
                out,
                type(e).__name__,
                done,
                wd,
            )
        raise


def _check_ray_options(ropts: RayOptions, device: str) -> None:
    if ropts.workers < 1:
        raise InputError(f"--workers must be >= 1, got {ropts.workers}")
    if ropts.block_rows < 1:
        raise InputError(f"--block-rows must be >= 1, got {ropts.block_rows}")
    if not ropts.cpus_per_worker > 0:
        raise InputError(f"--cpus-per-worker must be > 0, got {ropts.cpus_per_worker}")
    if ropts.max_retries < 0:
        raise InputError(f"--max-retries must be >= 0, got {ropts.max_retries}")
    if device not in ("cpu", "cuda", "tensorrt"):
        raise InputError(f"unknown device {device!r}: cpu, cuda or tensorrt")


def _done_shards(wd: Path) -> int:
    return len(list((wd / SHARDS_DIR).glob("block-*.json"))) if wd.is_dir() else 0


def _open_work_dir(wd: Path, out: Path, plan: dict[str, Any], resume: bool) -> None:
    """A fresh work directory, or (``resume``) the one an interrupted build of the same plan left."""
    plan_path = wd / PLAN_FILE
    if wd.exists():
        old = json.loads(plan_path.read_text()) if plan_path.is_file() else None
        done = _done_shards(wd)
        if not resume:
            raise InputError(
                f"{wd} holds an unfinished Ray build of {out} ({done} embedded shards): pass "
                "--resume to reuse them, or delete it to start over"
            )
        if old is not None and old != plan:
            changed = sorted(k for k in plan.keys() | old.keys() if plan.get(k) != old.get(k))
            raise InputError(
                f"cannot resume from {wd}: this build differs from the interrupted one in "
                f"{', '.join(changed)}; delete {wd} to start over"
            )
        if old is not None:
            log.info("resuming from %s (%d embedded shards)", wd, done)
            return
        shutil.rmtree(wd)  # killed before its plan was written: nothing to reuse
    elif resume:
        log.info("nothing to resume in %s: starting a fresh build", wd)
    wd.parent.mkdir(parents=True, exist_ok=True)
    tmp = wd.with_name(wd.name + f".new-{os.getpid()}")
    tmp.mkdir()
    (tmp / SHARDS_DIR).mkdir()
    (tmp / PLAN_FILE).write_text(json.dumps(plan, indent=2) + "\n")
    tmp.rename(wd)


def _stage_store(src: Path, wd: Path, opts: BuildOptions) -> tuple[int, ReadStats]:
    """The passage store in corpus order (reused when a resumed build already wrote it)."""
    done = wd / STORE_DONE
    if done.is_file():
        rec = json.loads(done.read_text())
        stats = ReadStats(
            **{**rec["stats"], "skipped_rows": [tuple(x) for x in rec["stats"]["skipped_rows"]]}
        )
        return int(rec["passages"]), stats
    stats = ReadStats(str(src), opts.fmt or "")
    rows = iter_passages(src, fmt=opts.fmt, skip_bad_rows=opts.skip_bad_rows, stats=stats)
    st = build_store(rows, wd, source=str(src))
    rec = {"passages": st.passages, "stats": asdict(stats)}
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps(rec))
    tmp.rename(done)
    return st.passages, stats


def _shard_mark(wd: Path, block: int) -> Path:
    return wd / SHARDS_DIR / f"block-{block:06d}.json"


def _build(
    ray: Any,
    src: Path,
    out: Path,
    wd: Path,
    art: Any,
    enc: _EncoderIdentity,
    ident: dict[str, Any],
    dim: int,
    work_name: str,
    work_dtype: str,
    plan: dict[str, Any],
    opts: BuildOptions,
    ropts: RayOptions,
    device: str,
    t_start: float,
) -> IndexManifest:
    timings: dict[str, float] = {}
    t = time.perf_counter()
    n, stats = _stage_store(src, wd, opts)
    timings["store_s"] = time.perf_counter() - t

    rows_per = ropts.block_rows
    blocks = [(b, s, min(s + rows_per, n)) for b, s in enumerate(range(0, n, rows_per))]
    work = wd / work_name
    size = n * dim * np.dtype(work_dtype).itemsize
    if not work.is_file() or work.stat().st_size != size:  # new, or lost after the shards
        for mark in (wd / SHARDS_DIR).glob("block-*.json"):
            mark.unlink()
        with open(work, "wb") as f:
            f.truncate(size)  # sparse: shards fill their rows
    todo = [blk for blk in blocks if not _shard_mark(wd, blk[0]).is_file()]
    reused = len(blocks) - len(todo)
    if reused:
        log.info("reusing %d of %d embedded shards from %s", reused, len(blocks), wd)

    started = _connect(ray, ropts)
    try:
        t = time.perf_counter()
        embedded_rows = _embed(
            ray, wd, work, todo, n, dim, work_dtype, art, enc, opts, ropts, device, len(blocks)
        )
        embed_s = time.perf_counter() - t
        timings["embed_s"] = embed_s
        nodes = sum(1 for nd in ray.nodes() if nd.get("Alive"))
        staged = StagedBuild(
            tmp=wd,
            out=out,
            work=work,
            work_dtype=work_dtype,
            passages=n,
            dim=dim,
            ident=ident,
            stats=stats,
            embeddings="context_encoder",
            timings=timings,
            t_start=t_start,
        )
        opts = replace(
            opts,
            extra={
                **opts.extra,
                "ray": {
                    "nodes": nodes,
                    "workers": ropts.workers,
                    "device": device,
                    "block_rows": rows_per,
                    "blocks": len(blocks),
                    "reused_blocks": reused,
                    "embedded_blocks": len(todo),
                    "embedded_passages_per_s": round(embedded_rows / embed_s, 2)
                    if embed_s
                    else None,
                },
            },
        )
        man = finish_index(staged, opts, _faiss(), add=_cluster_add(ray, ropts, opts))
    finally:
        if started:
            ray.shutdown()
    for name in (PLAN_FILE, STORE_DONE):
        (wd / name).unlink()
    shutil.rmtree(wd / SHARDS_DIR)  # now the directory holds what a one-process build's does
    publish_dir(wd, out, KIND, overwrite=opts.overwrite)
    log.info(
        "built %s on Ray: %d passages, %d blocks (%d reused), %.1fs",
        out,
        n,
        len(blocks),
        reused,
        time.perf_counter() - t_start,
    )
    return man


def _faiss() -> Any:
    import faiss

    return faiss


def _connect(ray: Any, ropts: RayOptions) -> bool:
    """Join (or start) the Ray cluster; True when this call did, so the build shuts it down."""
    if ray.is_initialized():
        return False
    kw: dict[str, Any] = {"logging_level": logging.WARNING}
    local = ropts.address is None and not os.environ.get("RAY_ADDRESS")
    if local:
        kw.update(include_dashboard=False)
        if ropts.object_store_memory:
            kw["object_store_memory"] = int(ropts.object_store_memory)
    try:
        ray.init(address=ropts.address, **kw)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = ropts.address or os.environ.get("RAY_ADDRESS") or "a new local runtime"
        raise DeviceError(
            f"cannot reach the Ray cluster at {where}: {_first_line(e)} (start one with "
            "`ray start --head`, or pass its address: --ray HOST:PORT)"
        ) from None
    return True


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


def _embedding_dataset(
    ray: Any,
    wd: Path,
    todo: list[tuple[int, int, int]],
    work_dtype: str,
    art: Any,
    enc: _EncoderIdentity,
    opts: BuildOptions,
    ropts: RayOptions,
    device: str,
) -> Any:
    """The Ray Data pipeline of one build: blocks read from the store on the driver's node,
    embedded by an actor pool of ``ropts.workers`` encoders."""
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # ours counts passages across the cluster
    if not log.isEnabledFor(logging.INFO):  # Ray Data's per-run INFO lines only with -v
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    here = ray.get_runtime_context().get_node_id()
    items = [{"block": b, "start": s, "stop": e} for b, s, e in todo]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(
        BlockReader,
        fn_constructor_kwargs={"store": str(wd)},
        batch_size=1,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=1),
        num_cpus=0,
        label_selector={"ray.io/node-id": here},  # the store is on the driver's disk
    )
    threads = max(1, int(ropts.cpus_per_worker))
    with warnings.catch_warnings():
        # Ray Data names no parameter for bounded restarts (its default is to restart a dead
        # actor forever, which turns a deterministic crash into a hang); the remote args do.
        warnings.filterwarnings("ignore", message=".*ray_remote_args. is deprecated")
        ds = ds.map_batches(
            BlockEmbedder,
            fn_constructor_kwargs={
                "model": str(Path(art.root).resolve()),
                "precision": enc.precision,
                "device": device,
                "threads": threads,
                "batch_size": opts.batch_size,
                "embed_chunk": opts.embed_chunk,
                "dtype": work_dtype,
                "onnx_sha256": enc.onnx_sha256,
            },
            batch_size=1,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=ropts.workers),
            num_cpus=ropts.cpus_per_worker,
            num_gpus=1 if device != "cpu" else 0,
            max_restarts=ropts.max_retries,
            max_task_retries=ropts.max_retries,
        )
    return ds


def _progress(total: int, initial: int, workers: int) -> Any:
    """Passages embedded across the cluster (Ray Data's own bars are off)."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=f"embedding passages on Ray ({workers} workers)",
        unit="passage",
        unit_scale=True,
        dynamic_ncols=True,
    )


def _embed(
    ray: Any,
    wd: Path,
    work: Path,
    todo: list[tuple[int, int, int]],
    n: int,
    dim: int,
    work_dtype: str,
    art: Any,
    enc: _EncoderIdentity,
    opts: BuildOptions,
    ropts: RayOptions,
    device: str,
    nblocks: int,
) -> int:
    """Embed the ``todo`` blocks on the cluster; each lands in its rows of ``work``, durably,
    before its shard is marked done. Returns the rows embedded."""
    if not todo:
        return 0
    ds = _embedding_dataset(ray, wd, todo, work_dtype, art, enc, opts, ropts, device)
    stops = {b: e for b, _, e in todo}
    total_rows = sum(e - s for _, s, e in todo)
    bar = _progress(n, n - total_rows, ropts.workers) if opts.progress else None
    itemsize = np.dtype(work_dtype).itemsize
    done_rows = 0
    fd = os.open(work, os.O_WRONLY)
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            for b, s, buf in zip(
                batch.column("block").to_pylist(),
                batch.column("start").to_pylist(),
                batch.column("emb").to_pylist(),
            ):
                rows = stops[b] - s
                if len(buf) != rows * dim * itemsize:
                    raise DeviceError(
                        f"block {b} came back with {len(buf)} bytes, expected {rows} x {dim} "
                        f"{work_dtype}; rerun with --resume"
                    )
                os.pwrite(fd, buf, s * dim * itemsize)
                os.fsync(fd)
                _shard_mark(wd, b).write_text(
                    json.dumps({"block": b, "start": s, "stop": s + rows})
                )
                done_rows += rows
                if bar is not None:
                    bar.update(rows)
    except RagrtError:
        raise
    except Exception as e:  # Ray's wrapping of a worker's error, or of a cluster failure
        done = _done_shards(wd)
        hint = (
            f" ({done} of {nblocks} shards are embedded and kept in {wd}: rerun with --resume "
            "to embed only the rest)"
            if done
            else ""
        )
        cause = _ragrt_cause(e)
        if cause is not None:
            raise error_from_code(cause.code, f"{_first_line(cause)}{hint}") from None
        raise DeviceError(f"the Ray build failed: {_first_line(e)}{hint}") from None
    finally:
        os.close(fd)
        if bar is not None:
            bar.close()
    return done_rows


def _ragrt_cause(e: BaseException) -> RagrtError | None:
    """The ragrt error a worker raised, out of Ray's wrappers (``cause``, ``__cause__``...)."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [e]
    while stack:
        x = stack.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, RagrtError):
            return x
        stack += [getattr(x, "cause", None), x.__cause__, x.__context__]
    return None


def _cluster_add(
    ray: Any, ropts: RayOptions, opts: BuildOptions
) -> Callable[[Any, np.ndarray], None]:
    """``add`` for :func:`finish_index`: IVF codes computed on the cluster, one task per add
    chunk, appended in row order; other index types are filled in the driver."""

    def add(index: Any, vecs: np.ndarray) -> None:
        faiss = _faiss()
        ivf = faiss.downcast_index(index)
        if not isinstance(ivf, faiss.IndexIVF):
            add_in_chunks(index, vecs, opts.add_chunk)
            return
        trained = ray.put(faiss.serialize_index(index))
        threads = max(1, int(ropts.cpus_per_worker))
        task = ray.remote(sa_encode_chunk).options(
            num_cpus=ropts.cpus_per_worker, max_retries=ropts.max_retries
        )
        window: deque = deque()
        chunk = opts.add_chunk
        starts = iter(range(0, len(vecs), chunk))
        s = next(starts, None)
        while s is not None or window:
            while s is not None and len(window) < 2 * ropts.workers:
                x = np.ascontiguousarray(vecs[s : s + chunk])  # work dtype; float32 on the worker
                window.append((s, task.remote(trained, x, threads)))
                s = next(starts, None)
            s0, ref = window.popleft()
            codes = ray.get(ref)
            ids = np.arange(s0, s0 + len(codes), dtype=np.int64)
            index.add_sa_codes(codes, ids)

    return add


__all__ = [
    "BlockEmbedder",
    "BlockReader",
    "RayOptions",
    "build_index_ray",
    "sa_encode_chunk",
    "work_dir_for",
]
