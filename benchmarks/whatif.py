"""What-if measurements: candidate engine/export changes, timed without changing the engine.

Each experiment measures one proposed fix on the headline workload's real inputs (the contexts
ragrt builds for the benchmark questions) and checks that outputs stay the same:

- ``ragged_encoder``: run the generator encoder on each context at its own length (or on
  length-sorted buckets) instead of padding all ``B * n_docs`` contexts to the longest; the
  states are then padded with zeros (masked) for the decoder. Same values up to rounding.
- ``fused_graphs``: ``onnxruntime.transformers.optimizer`` (BART attention / LayerNorm / GELU
  fusions) applied to the exported encoder and decoder-with-past graphs.
- ``no_spinning``: ONNX Runtime intra-op threads that do not spin-wait after a run, so the
  Python/numpy work between decode steps gets the cores.

Usage (quiet machine; a few minutes)::

    python -m ragrt.benchmarks.whatif --size bart-base --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def _time(fn, repeats: int) -> list[float]:
    fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _session(path: Path, threads: int, spinning: bool = True) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def headline_contexts(engine: Any, questions: list[str], n_docs: int) -> list[Any]:
    """The generator inputs ragrt builds for each question (``RagEngine.prepare``)."""
    return [engine.prepare([q], n_docs) for q in questions]


def ragged_encoder(enc_path: Path, preps: list[Any], threads: int, repeats: int) -> dict[str, Any]:
    sess = _session(enc_path, threads)

    def padded(p):
        return sess.run(None, {"input_ids": p.context_ids, "attention_mask": p.context_mask})[0]

    def ragged(p):
        lens = p.context_mask.sum(1)
        outs = []
        for i, n in enumerate(lens):
            ids = p.context_ids[i : i + 1, :n]
            m = p.context_mask[i : i + 1, :n]
            outs.append(sess.run(None, {"input_ids": ids, "attention_mask": m})[0])
        return outs

    rows = []
    for p in preps:
        lens = p.context_mask.sum(1)
        a = padded(p)
        b = ragged(p)
        diff = max(float(np.abs(a[i, :n] - b[i][0]).max()) for i, n in enumerate(lens))
        tp = statistics.median(_time(lambda p=p: padded(p), repeats))
        tr = statistics.median(_time(lambda p=p: ragged(p), repeats))
        rows.append(
            {
                "lengths": lens.tolist(),
                "padded_tokens": int(p.context_ids.size),
                "real_tokens": int(lens.sum()),
                "padded_s": tp,
                "ragged_s": tr,
                "max_abs_diff": diff,
            }
        )
    tp = sum(r["padded_s"] for r in rows)
    tr = sum(r["ragged_s"] for r in rows)
    return {"calls": rows, "padded_s": tp, "ragged_s": tr, "speedup": tp / tr}


def fused_graphs(
    art: Path, man: dict[str, Any], preps: list[Any], threads: int, repeats: int
) -> dict[str, Any]:
    """Encoder and decoder-with-past, exported vs ``optimize_model(model_type="bart")``."""
    from onnxruntime.transformers.optimizer import optimize_model

    g = man["generator"]
    files = g["onnx"]["fp32"]
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for role in ("encoder", "decoder_with_past"):
            src = art / files[role]
            dst = Path(tmp) / f"{role}.onnx"
            m = optimize_model(
                str(src),
                model_type="bart",
                num_heads=int(g["num_heads"]),
                hidden_size=int(g["d_model"]),
                opt_level=1,
            )
            fused_ops = {k: v for k, v in m.get_fused_operator_statistics().items() if v}
            m.save_model_to_file(str(dst), use_external_data_format=src.stat().st_size > 1.8e9)
            base, opt = _session(src, threads), _session(dst, threads)
            if role == "encoder":
                p = preps[0]
                feeds = {"input_ids": p.context_ids, "attention_mask": p.context_mask}
            else:
                feeds = _past_feeds(base, preps[0], man, steps=16)
            a, b = base.run(None, feeds)[0], opt.run(None, feeds)[0]
            tb = statistics.median(_time(lambda s=base, f=feeds: s.run(None, f), repeats))
            to = statistics.median(_time(lambda s=opt, f=feeds: s.run(None, f), repeats))
            out[role] = {
                "fused_ops": fused_ops,
                "exported_s": tb,
                "fused_s": to,
                "speedup": tb / to,
                "max_abs_diff": float(np.abs(a - b).max()),
            }
    return out


def _past_feeds(sess: Any, prep: Any, man: dict[str, Any], steps: int) -> dict[str, np.ndarray]:
    """Feeds of a decoder-with-past step at ``steps`` cached positions (random caches)."""
    g = man["generator"]
    rows, length = prep.context_ids.shape
    heads, hd = int(g["num_heads"]), int(g["head_dim"])
    rng = np.random.default_rng(0)
    feeds: dict[str, np.ndarray] = {
        "encoder_attention_mask": prep.context_mask,
        "input_ids": rng.integers(4, 1000, (rows, 1)).astype(np.int64),
    }
    for i in sess.get_inputs():
        if i.name.startswith("past_key_values."):
            n = steps if ".decoder." in i.name else length
            feeds[i.name] = rng.standard_normal((rows, heads, n, hd), dtype=np.float32)
    return feeds


def no_spinning(bm: Any, questions: list[str], threads: int, repeats: int) -> dict[str, Any]:
    """ragrt end to end with spinning intra-op threads (default) vs without."""
    from ragrt.benchmarks.systems import RagrtSystem, Workload

    w = Workload(1, 5, 1, 32)
    out = {}
    for spinning in (True, False):
        s = RagrtSystem(bm, "fp32", "cpu", threads)
        g = s.engine.generator
        if not spinning:  # re-open the engine's sessions with spinning off, keep the proxies
            from ragrt.benchmarks.systems import SessionProxy

            files = json.loads((bm.art / "manifest.json").read_text())["generator"]["onnx"]
            f = files["fp32"]
            g.encoder = _session(bm.art / f["encoder"], threads, spinning=False)
            g.decoder = SessionProxy(
                _session(bm.art / f["decoder"], threads, False), s.clock, "ort_first"
            )
            g.decoder_with_past = SessionProxy(
                _session(bm.art / f["decoder_with_past"], threads, False), s.clock, "ort_past"
            )
        s.run(questions[:1], w)
        lat, over, loop = [], [], []
        for _ in range(repeats):
            for q in questions:
                a = s.run([q], w)
                lat.append(a.latency_s)
                over.append(a.stages["decode_overhead"])
                loop.append(a.stages["decode_loop"])
        out["spinning" if spinning else "no_spinning"] = {
            "latency_p50_s": statistics.median(lat),
            "decode_overhead_p50_s": statistics.median(over),
            "decode_loop_p50_s": statistics.median(loop),
        }
        s.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ragrt.benchmarks.whatif")
    ap.add_argument("--size", default="bart-base")
    ap.add_argument("--encoder-size", default="bert-base")
    ap.add_argument("--questions", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default=None)
    ap.add_argument(
        "--only", default="ragged_encoder,fused_graphs,no_spinning", help="experiments to run"
    )
    a = ap.parse_args(argv)
    from ragrt.benchmarks.harness import QUESTIONS, load_snapshot, machine_info
    from ragrt.benchmarks.models import prepare
    from ragrt.engine import RagEngine
    from ragrt.runtime.sessions import cpu_threads

    threads = a.threads or cpu_threads()
    bm = prepare(a.encoder_size, a.size)
    man = json.loads((bm.art / "manifest.json").read_text())
    engine = RagEngine.load(bm.art, bm.index, intra_op_threads=threads)
    qs = QUESTIONS[: a.questions]
    preps = headline_contexts(engine, qs, 5)
    only = set(a.only.split(","))
    res: dict[str, Any] = {
        "machine": machine_info("cpu"),
        "load_start": load_snapshot(),
        "size": a.size,
        "threads": threads,
    }
    enc = bm.art / man["generator"]["onnx"]["fp32"]["encoder"]
    if "ragged_encoder" in only:
        res["ragged_encoder"] = ragged_encoder(enc, preps, threads, a.repeats)
        print(
            "ragged encoder:",
            json.dumps({k: v for k, v in res["ragged_encoder"].items() if k != "calls"}),
        )
    if "fused_graphs" in only:
        res["fused_graphs"] = fused_graphs(bm.art, man, preps, threads, a.repeats)
        print("fused graphs:", json.dumps(res["fused_graphs"]))
    del engine
    if "no_spinning" in only:
        res["no_spinning"] = no_spinning(bm, qs, threads, a.repeats)
        print("spinning:", json.dumps(res["no_spinning"]))
    res["load_end"] = load_snapshot()
    if a.out:
        p = Path(a.out) / f"whatif_cpu_{a.size}.json"
        os.makedirs(a.out, exist_ok=True)
        p.write_text(json.dumps(res, indent=1) + "\n")
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
