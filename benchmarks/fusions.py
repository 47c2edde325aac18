"""Why ONNX Runtime's BART fusions moved decoder logits, and which fusion config is safe.

``optimize_model(model_type="bart")`` on ragrt's exported graphs fuses LayerNorm + residual
(+ bias) into ``SkipLayerNormalization`` and bias + GELU into ``BiasGelu``; its attention
fusion does not match the graphs transformers 4.57 exports. An earlier run saw
decoder-with-past logits move by up to 0.51. This experiment separates a fusion *bug* from
fp32 *rounding amplified by the model* on real decoder inputs (the caches of an fp32 decode,
not random tensors):

- ``fused``: the optimizer's graph; ``fused_skip_ln`` / ``fused_bias_gelu``: one fusion each;
- ``ort_basic``: the exported graph with ONNX Runtime's own graph optimizations at "basic"
  instead of "all" (no fusions at all);
- ``perturbed``: the exported graph with every input cache changed by one float32 ulp (relative
  2**-23 noise): how far a *correct* change of rounding moves the logits of this model.

A fusion is wrong when it moves the logits far more than ``perturbed`` does, or changes the
argmax on a well-conditioned (trained) model. Results: ``fusions_cpu.json``.

Usage::

    python -m ragrt.benchmarks.fusions --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ragrt.benchmarks.int8_schemes import FILES, ROLES, record_feeds


def _session(path: Path, level: str = "all") -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    so.graph_optimization_level = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def fused_graph(src: Path, dst: Path, heads: int, hidden: int, **flags: bool) -> dict[str, int]:
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    opts = FusionOptions("bart")
    for k, v in flags.items():
        setattr(opts, k, v)
    m = optimize_model(
        str(src),
        model_type="bart",
        num_heads=heads,
        hidden_size=hidden,
        optimization_options=opts,
        opt_level=0,
    )
    m.save_model_to_file(str(dst))
    return {k: v for k, v in m.get_fused_operator_statistics().items() if v}


VARIANTS = {
    "fused": {},
    "fused_skip_ln": {"enable_bias_gelu": False, "enable_gelu": False},
    "fused_bias_gelu": {"enable_skip_layer_norm": False, "enable_bias_skip_layer_norm": False},
    "fused_mha": {"use_multi_head_attention": True},
}


def _diff(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    a, b = a[:, -1].astype(np.float64), b[:, -1].astype(np.float64)
    return {
        "max_abs": float(np.abs(a - b).max()),
        "max_rel_to_logit_std": float(np.abs(a - b).max() / a.std()),
        "argmax_same": float(np.mean(a.argmax(-1) == b.argmax(-1))),
        "top2_margin_median": float(np.median(np.diff(np.sort(a, -1)[:, -2:], axis=-1))),
    }


def compare(fp32: dict[str, Path], feeds: dict[str, Any], heads: int, hidden: int, work: Path):
    out: dict[str, Any] = {}
    for role in ("encoder", "decoder_with_past"):
        f = feeds[role][len(feeds[role]) // 2]
        base = _session(fp32[role])
        ref = base.run(None, f)[0]
        res: dict[str, Any] = {}
        res["ort_basic"] = _diff(ref, _session(fp32[role], "basic").run(None, f)[0])
        rng = np.random.default_rng(0)
        noisy = {
            k: (v * (1 + rng.choice([-1, 0, 1], v.shape) * 2.0**-23)).astype(v.dtype)
            if v.dtype == np.float32
            else v
            for k, v in f.items()
        }
        res["perturbed"] = _diff(ref, base.run(None, noisy)[0])
        for name, flags in VARIANTS.items():
            dst = work / f"{role}-{name}.onnx"
            ops = fused_graph(fp32[role], dst, heads, hidden, **flags)
            res[name] = {"fused_ops": ops, **_diff(ref, _session(dst).run(None, f)[0])}
        out[role] = res
        print(role, json.dumps(res), flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ragrt.benchmarks.fusions")
    ap.add_argument("--work", default=None)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    from ragrt.benchmarks.harness import QUESTIONS
    from ragrt.benchmarks.int8_schemes import _generator, plain_runs, rag_runs, trained
    from ragrt.benchmarks.machine import machine_info
    from ragrt.benchmarks.models import prepare
    from ragrt.engine import RagEngine
    from ragrt.runtime.generation.params import GenerationParams

    work = Path(a.work or tempfile.mkdtemp(prefix="ragrt-fusions-"))
    work.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {"machine": machine_info("cpu")}

    bm = prepare("bert-base", "bart-base")
    g = json.loads((bm.art / "manifest.json").read_text())["generator"]
    fp32 = {r: bm.art / p for r, p in g["onnx"]["fp32"].items()}
    eng = RagEngine.load(bm.art, bm.index, intra_op_threads=1)
    preps = [eng._prepare([q], 5) for q in QUESTIONS[:1]]
    params = GenerationParams(
        decoder_start_token_id=2,
        eos_token_id=2,
        pad_token_id=1,
        max_new_tokens=32,
        min_new_tokens=32,
    )
    feeds = record_feeds(_generator(fp32), lambda gen: rag_runs(gen, preps, params))
    (work / "base").mkdir(exist_ok=True)
    res["bart-base (random weights)"] = compare(
        fp32, feeds, int(g["num_heads"]), int(g["d_model"]), work / "base"
    )

    trained(work, [])  # builds the trained copy generator + its fp32 graphs
    tfp32 = {r: work / "trained-fp32" / FILES[r] for r in ROLES}
    cfg = json.loads((work / "trained-gen" / "config.json").read_text())
    import onnxruntime  # noqa: F401  (feeds below come from the same tokenizer as trained())

    from ragrt.export.sources import load_generator

    src, _ = load_generator(work / "trained-gen")
    b = src.tokenizer(
        [
            "json / JSON encoder and decoder. Serialize obj as a JSON formatted stream",
            "heapq / Heap queue algorithm, also known as the priority queue algorithm",
        ],
        padding=True,
        return_tensors="np",
    )
    ctx = [(b["input_ids"].astype(np.int64), b["attention_mask"].astype(np.int64))]
    tparams = GenerationParams(
        decoder_start_token_id=int(cfg["decoder_start_token_id"]),
        eos_token_id=int(cfg["eos_token_id"]),
        pad_token_id=int(cfg["pad_token_id"]),
        max_new_tokens=12,
        min_new_tokens=12,
    )
    tfeeds = record_feeds(_generator(tfp32), lambda gen: plain_runs(gen, ctx, tparams))
    (work / "trained").mkdir(exist_ok=True)
    res["trained copy model"] = compare(
        tfp32, tfeeds, int(cfg["decoder_attention_heads"]), int(cfg["d_model"]), work / "trained"
    )
    print(json.dumps(res, indent=1))
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        p = Path(a.out) / "fusions_cpu.json"
        p.write_text(json.dumps(res, indent=1) + "\n")
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
