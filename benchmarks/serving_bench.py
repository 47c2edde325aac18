"""Serving benchmark: a concurrency sweep against the real tritonserver vs the in-process engine.

For each concurrency c in (1, 2, 4, 8, 16): c closed-loop clients (threads) each send one
question per request, for ``--seconds`` per point, split into ``--rounds`` alternating
served / in-process rounds (each after a short warm-up) so that both sides see the same load
on a shared machine; the same questions and generation settings go to

* ``served``: ``RagClient`` (gRPC) -> tritonserver -> the ``rag`` Python-backend model
  (dynamic batching merges concurrent requests into one engine batch);
* ``in_process``: c threads calling ``RagEngine.generate([q])`` on one shared engine.

Reported per point: throughput (requests/s), p50/p95/p99 latency, and served/in-process
throughput ratio (goal: >= 0.8 at c = 8). Every served answer is checked against the engine's
token ids. Writes ``benchmarks/results/serving_<timestamp>.json`` and ``.png``.

Model: ``--model ART_DIR --index INDEX_DIR``, or by default the seeded BART RAG fixture of the
tests with an index over the bundled demo corpus, built once under ``.cache/serving_bench/``.
Both sides use the same ONNX Runtime thread count (``--threads``).

Usage (a script, not a CI step; be kind to shared cores)::

    nice -n 10 .venv/bin/python benchmarks/serving_bench.py
    nice -n 10 .venv/bin/python benchmarks/serving_bench.py --seconds 5 --concurrency 1 8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "serving_bench"
RESULTS = ROOT / "benchmarks" / "results"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def fixture_artifacts() -> tuple[Path, Path]:
    """The tests' seeded BART RAG fixture + an index over 500 demo passages (cached)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    art, index = CACHE / "art", CACHE / "index"
    if not (art / "manifest.json").is_file():
        from ragrt.export import ExportOptions, export_artifacts
        from ragrt.export.fixtures import build_rag_checkpoint

        log("building the seeded BART RAG fixture ...")
        rag, ctx = CACHE / "rag-token-bart", CACHE / "ctx-encoder"
        if not rag.exists():
            build_rag_checkpoint(rag, generator="bart", rag_type="token", context_encoder_dir=ctx)
        export_artifacts(
            ExportOptions(
                out=art, rag_dir=rag, context_encoder=ctx, precisions=["fp32"], progress=False
            )
        )
    if not (index / "manifest.json").is_file():
        from importlib import resources

        from ragrt.retrieval.build import BuildOptions, build_index

        log("building the index ...")
        src = Path(str(resources.files("ragrt") / "demo" / "python_stdlib_docs.jsonl"))
        corpus = CACHE / "corpus.jsonl"
        corpus.write_text("\n".join(src.read_text(encoding="utf-8").splitlines()[:500]) + "\n")
        build_index(corpus, index, model=art, options=BuildOptions(progress=False))
    return art, index


def questions(n: int) -> list[str]:
    from importlib import resources

    src = Path(str(resources.files("ragrt") / "demo" / "python_stdlib_docs.jsonl"))
    titles = [
        json.loads(line)["title"] for line in src.read_text(encoding="utf-8").splitlines()[:2000:7]
    ]
    forms = ["what does {} do?", "how do I use {}", "when should I call {}?", "explain {}"]
    return [forms[i % len(forms)].format(t) for i, t in enumerate(titles[:n])]


class Point:
    """Latencies and counts of one system at one concurrency, over several rounds."""

    def __init__(self, concurrency: int):
        self.concurrency = concurrency
        self.lat: list[float] = []
        self.count = 0
        self.seconds = 0.0
        self.load: list[float] = []

    def summary(self) -> dict[str, Any]:
        ms = np.array(self.lat) * 1000
        return {
            "concurrency": self.concurrency,
            "requests": self.count,
            "seconds": round(self.seconds, 3),
            "throughput_rps": round(self.count / self.seconds, 3),
            "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p95_ms": round(float(np.percentile(ms, 95)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "loadavg_1m": round(float(np.mean(self.load)), 2),
        }


def closed_loop(
    call, qs: list[str], point: Point, seconds: float, warmup: float, offset: int
) -> None:
    """``point.concurrency`` threads each calling ``call(q)`` back to back: ``warmup`` seconds
    unrecorded, then ``seconds`` recorded into ``point``."""
    c = point.concurrency
    lock = threading.Lock()
    stop_at = [0.0]
    record = [False]

    def worker(w: int) -> None:
        i = offset + w
        while time.perf_counter() < stop_at[0]:
            q = qs[i % len(qs)]
            i += c
            t = time.perf_counter()
            call(q)
            dt = time.perf_counter() - t
            if record[0]:
                with lock:
                    point.lat.append(dt)
                    point.count += 1

    with ThreadPoolExecutor(c) as pool:
        stop_at[0] = time.perf_counter() + warmup
        list(pool.map(worker, range(c)))
        record[0] = True
        t0 = time.perf_counter()
        stop_at[0] = t0 + seconds
        list(pool.map(worker, range(c)))
        point.seconds += time.perf_counter() - t0
    point.load.append(os.getloadavg()[0])


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for name, style in (("served", "o-"), ("in_process", "s--")):
        pts = result["sweep"][name]
        c = [p["concurrency"] for p in pts]
        a.plot(c, [p["throughput_rps"] for p in pts], style, label=name.replace("_", "-"))
        b.plot(c, [p["p50_ms"] for p in pts], style, label=f"{name.replace('_', '-')} p50")
        b.plot(
            c, [p["p99_ms"] for p in pts], style, alpha=0.5, label=f"{name.replace('_', '-')} p99"
        )
    for ax in (a, b):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.grid(alpha=0.3)
        ax.legend()
    a.set_ylabel("requests / s")
    b.set_ylabel("latency (ms)")
    s = result["settings"]
    fig.suptitle(
        f"ragrt serving sweep: {s['model_name']}, n_docs={s['n_docs']}, "
        f"max_new_tokens={s['max_new_tokens']}, {result['machine']['cpus']} CPUs"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, help="ART_DIR (default: the seeded BART fixture)")
    p.add_argument("--index", type=Path, help="INDEX_DIR (with --model)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument("--seconds", type=float, default=8.0, help="measured seconds per point")
    p.add_argument("--warmup", type=float, default=0.5, help="warm-up seconds per round")
    p.add_argument(
        "--rounds", type=int, default=4, help="alternating served/in-process rounds per point"
    )
    p.add_argument("--questions", type=int, default=64)
    p.add_argument("--n-docs", type=int, default=5)
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument(
        "--threads", type=int, default=0, help="ONNX Runtime threads, both sides (0 = per core)"
    )
    p.add_argument("--instances", type=int, default=1, help="rag model instances in the server")
    p.add_argument(
        "--parallel", type=int, default=0, help="engine threads per rag instance (0 = auto)"
    )
    p.add_argument("--max-batch-size", type=int, default=16)
    p.add_argument("--queue-delay-us", type=int, default=2000)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)

    from ragrt.engine import RagEngine
    from ragrt.serving.client import RagClient
    from ragrt.serving.server import TritonServer
    from ragrt.triton_models.repository import RepoOptions, build_repository

    if args.model is not None and args.index is None:
        p.error("--model needs --index")
    art, index = (args.model, args.index) if args.model else fixture_artifacts()
    qs = questions(args.questions)
    gen = {"n_docs": args.n_docs, "max_new_tokens": args.max_new_tokens}

    # threads share the engine: its tokenizers are serialized, as in the server's models
    engine = RagEngine.load(art, index, intra_op_threads=args.threads)  # thread-safe
    log("expected answers (in-process, one batch) ...")
    want = {q: r.token_ids for q, r in zip(qs, engine.generate(qs, **gen))}

    repo = CACHE / "repo"
    build_repository(
        art,
        index,
        repo,
        RepoOptions(
            models=["rag"],
            max_batch_size=args.max_batch_size,
            queue_delay_us=args.queue_delay_us,
            instances=args.instances,
            parallel=args.parallel,
            intra_op_threads=args.threads,
            overwrite=True,
        ),
    )
    sweep: dict[str, list[dict[str, Any]]] = {"served": [], "in_process": []}
    mismatches = [0]
    srv = TritonServer(repo, http_port=0, grpc_port=0, metrics_port=0, exit_timeout=2)
    srv.start()
    try:
        srv.wait_ready(timeout=300)
        log(f"server ready on {srv.grpc_url}")
        client = RagClient(srv.grpc_url, timeout=300)

        def served(q: str) -> None:
            if client.ask(q, **gen).token_ids != want[q]:
                mismatches[0] += 1

        def in_process(q: str) -> None:
            engine.generate([q], **gen)

        for c in args.concurrency:
            # alternate short rounds so that both sides see the same (shared, noisy) machine
            points = {"served": Point(c), "in_process": Point(c)}
            for r in range(args.rounds):
                for name, fn in (("served", served), ("in_process", in_process)):
                    closed_loop(
                        fn, qs, points[name], args.seconds / args.rounds, args.warmup, 7 * r
                    )
            for name, pt in points.items():
                sm = pt.summary()
                sweep[name].append(sm)
                log(
                    f"{name:10s} c={c:2d}: {sm['throughput_rps']:7.2f} req/s  p50 {sm['p50_ms']:7.1f} ms  "
                    f"p95 {sm['p95_ms']:7.1f}  p99 {sm['p99_ms']:7.1f}  (load {sm['loadavg_1m']})"
                )
        client.close()
    finally:
        srv.stop()
        srv.close()

    ratio = {
        s["concurrency"]: round(s["throughput_rps"] / i["throughput_rps"], 3)
        for s, i in zip(sweep["served"], sweep["in_process"])
    }
    import importlib.metadata

    import onnxruntime

    from ragrt import __version__
    from ragrt.runtime.manifest import load as load_manifest

    m = load_manifest(art, verify=False)
    result = {
        "benchmark": "serving",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "cpus": len(os.sched_getaffinity(0)),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "loadavg_1m_at_end": os.getloadavg()[0],
        },
        "versions": {
            "ragrt": __version__,
            "onnxruntime": onnxruntime.__version__,
            "tritonclient": importlib.metadata.version("tritonclient"),
            "tritonserver": "2.51 (nvidia-pytriton bundle)"
            if srv.install.bundled
            else str(srv.install.binary),
        },
        "settings": {
            "model": str(art),
            "model_name": f"{m.question_encoder.name} + {m.generator.name}",
            "index": str(index),
            "questions": len(qs),
            "n_docs": args.n_docs,
            "max_new_tokens": args.max_new_tokens,
            "num_beams": 1,
            "mode": m.generation.rag_type,
            "seconds_per_point": args.seconds,
            "warmup_seconds_per_round": args.warmup,
            "rounds": args.rounds,
            "ort_threads": args.threads,
            "server": {
                "models": ["rag"],
                "instances": args.instances,
                "parallel": args.parallel,
                "max_batch_size": args.max_batch_size,
                "queue_delay_us": args.queue_delay_us,
                "protocol": "grpc",
            },
        },
        "sweep": sweep,
        "served_over_in_process": ratio,
        "goal": {
            "served_over_in_process_at_8": 0.8,
            "met": ratio.get(8, 0) >= 0.8 if 8 in ratio else None,
        },
        "served_answer_mismatches": mismatches[0],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    jpath = args.out / f"serving_{stamp}.json"
    jpath.write_text(json.dumps(result, indent=2) + "\n")
    try:
        plot(result, args.out / f"serving_{stamp}.png")
    except ImportError:
        log("matplotlib missing: no PNG")
    log(f"served/in-process throughput: {ratio}; answer mismatches: {mismatches[0]}")
    log(f"wrote {jpath} (+ .png)")
    return 0 if mismatches[0] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
