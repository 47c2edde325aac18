"""int8 candidates side by side: CPU time and token agreement with fp32 (what-if style).

Every candidate is built from the same fp32 generator graphs (encoder, decoder,
decoder-with-past) and judged on two models:

- ``bart-base``: the benchmark's BART-base-sized generator (random weights, published vocab),
  RAG-Token greedy on the headline workload (1 question, 5 docs, 32 forced tokens): CPU
  seconds of one thread (``time.process_time``; independent of other processes on the machine,
  unlike wall time) and token agreement with ragrt fp32.
- ``trained``: a small BART briefly trained to copy its input
  (:func:`ragrt.export.fixtures.train_copy_generator`): plain greedy on held-out contexts,
  token agreement with fp32. Random weights have flat logits, so agreement there is a floor;
  on the trained model it says what a real model keeps.

Candidates (``SCHEMES``):

- ``dynamic-pc``: ``quantize_dynamic``, int8 weights per output channel, uint8 activations
  quantized per tensor at run time (the int8 of ragrt <= 0.1).
- ``dynamic-pt``: the same with one weight scale per tensor.
- ``static-pc-u8``/``static-pc-s8``: QDQ with per-channel int8 weights and activation scales
  calibrated on recorded fp32 feeds; uint8 vs int8 activations (MLAS has different kernels).
- ``nbits8``: ``MatMulNBits`` 8-bit block-wise weights (block 32, symmetric) with
  ``accuracy_level=4``: activations quantized to int8 per block of each row at run time, so a
  row's result does not depend on the other rows of the batch.
- ``fused-*``: ``onnxruntime.transformers.optimizer`` fusions (``model_type="bart"``) first.

Usage (quiet machine not needed: CPU time)::

    python -m ragrt.benchmarks.int8_schemes --out benchmarks/results
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROLES = ("encoder", "decoder", "decoder_with_past")
FILES = {
    "encoder": "encoder_model.onnx",
    "decoder": "decoder_model.onnx",
    "decoder_with_past": "decoder_with_past_model.onnx",
}


# -- candidates -----------------------------------------------------------------------------
def dynamic(src: Path, dst: Path, per_channel: bool = True) -> None:
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src),
        str(dst),
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul", "Gemm"],
        per_channel=per_channel,
        # fused graphs hold contrib ops shape inference cannot type
        extra_options={"MatMulConstBOnly": True, "DefaultTensorType": TensorProto.FLOAT},
    )


def nbits8(src: Path, dst: Path, block_size: int = 32) -> None:
    from ragrt.export.precision import to_int8_nbits

    to_int8_nbits(src, dst, block_size=block_size)


class _Reader:
    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._it = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def static(src: Path, dst: Path, feeds: list[dict[str, np.ndarray]], signed: bool) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    quantize_static(
        str(src),
        str(dst),
        _Reader(feeds),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["MatMul"],
        per_channel=True,
        activation_type=QuantType.QInt8 if signed else QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        extra_options={"MatMulConstBOnly": True},
    )


def fuse(src: Path, dst: Path, num_heads: int, hidden: int) -> dict[str, int]:
    """``optimize_model(model_type="bart")``; returns the fused-op counts."""
    from onnxruntime.transformers.optimizer import optimize_model

    m = optimize_model(
        str(src), model_type="bart", num_heads=num_heads, hidden_size=hidden, opt_level=0
    )
    m.save_model_to_file(str(dst))
    return {k: v for k, v in m.get_fused_operator_statistics().items() if v}


Converter = Callable[[Path, Path, str], None]


def schemes(calib: dict[str, list[dict[str, np.ndarray]]]) -> dict[str, Converter]:
    return {
        "dynamic-pc": lambda s, d, r: dynamic(s, d, True),
        "dynamic-pt": lambda s, d, r: dynamic(s, d, False),
        "static-pc-u8": lambda s, d, r: static(s, d, calib[r], signed=False),
        "static-pc-s8": lambda s, d, r: static(s, d, calib[r], signed=True),
        "nbits8": lambda s, d, r: nbits8(s, d, 32),
        "nbits8-b128": lambda s, d, r: nbits8(s, d, 128),
    }


def build(
    name: str, conv: Converter, fp32: dict[str, Path], out: Path, fused: dict[str, Path] | None
) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for role in ROLES:
        src = (fused or fp32)[role]
        dst = out / FILES[role]
        if not dst.exists():
            conv(src, dst, role)
        paths[role] = dst
    return paths


# -- recording feeds (calibration) ----------------------------------------------------------
class _Recorder:
    """Session stand-in that records the feeds of its runs (calibration data)."""

    def __init__(self, sess: Any, store: list, every: int = 1) -> None:
        self._sess, self._store, self._every, self._n = sess, store, every, 0

    def run(self, names, feeds, *a):
        if self._n % self._every == 0:
            self._store.append({k: np.array(v) for k, v in feeds.items()})
        self._n += 1
        return self._sess.run(names, feeds, *a)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sess, name)


def record_feeds(gen: Any, run: Callable[[Any], None]) -> dict[str, list[dict[str, np.ndarray]]]:
    store: dict[str, list] = {r: [] for r in ROLES}
    saved = gen.encoder, gen.decoder, gen.decoder_with_past
    gen.encoder = _Recorder(saved[0], store["encoder"])
    gen.decoder = _Recorder(saved[1], store["decoder"])
    gen.decoder_with_past = _Recorder(saved[2], store["decoder_with_past"], every=4)
    try:
        run(gen)
    finally:
        gen.encoder, gen.decoder, gen.decoder_with_past = saved
    return store


# -- measuring --------------------------------------------------------------------------------
def generator(paths: dict[str, Path], threads: int = 1) -> Any:
    """A :class:`~ragrt.runtime.generator.Seq2SeqGenerator` over one scheme's three graphs."""
    from ragrt.runtime.generator import Seq2SeqGenerator
    from ragrt.runtime.sessions import SessionOptions

    opts = SessionOptions(intra_op_threads=threads)
    return Seq2SeqGenerator(
        paths["encoder"], paths["decoder"], paths["decoder_with_past"], opts=opts
    )


def openvino(gen: Any, paths: dict[str, Path], hint: str) -> Any:
    """Re-open ``gen``'s three graphs on the OpenVINO execution provider plugin
    (``pip install onnxruntime-ep-openvino``; AMX-BF16 on Xeons that have it) with
    ``INFERENCE_PRECISION_HINT`` = ``hint`` (``bf16`` or ``f32``), one thread. Only after
    :func:`_has_openvino`, which registers the plugin and checks that it offers a device."""
    import onnxruntime as ort
    import onnxruntime_ep_openvino as ovep

    devs = [d for d in ort.get_ep_devices() if d.ep_name == ovep.get_ep_name()]
    cfg = Path(tempfile.mkdtemp(prefix="ragrt-ov-")) / "config.json"
    cfg.write_text(json.dumps({"CPU": {"INFERENCE_PRECISION_HINT": hint}}))
    for role in ROLES:
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.log_severity_level = 3
        opts = {"device_type": "CPU", "num_of_threads": "1", "load_config": str(cfg)}
        so.add_provider_for_devices(devs, opts)
        setattr(gen, role, ort.InferenceSession(str(paths[role]), so))
    return gen


@functools.cache
def _has_openvino() -> bool:
    """The plugin is installed *and* offers a device here. onnxruntime-ep-openvino 1.8.1 with
    onnxruntime 1.32 registers on an AMD EPYC but lists no OpenVINO device, and sessions then
    fail with "Must provide one or more OrtEpDevice instances": skip it, saying why."""
    try:
        import onnxruntime as ort
        import onnxruntime_ep_openvino as ovep
    except ImportError:
        return False
    name = ovep.get_ep_name()
    if name not in {d.ep_name for d in ort.get_ep_devices()}:
        try:
            ort.register_execution_provider_library(name, ovep.get_library_path())
        except Exception as e:  # already registered without a device, or a broken plugin
            print(f"openvino: skipped, registering the plugin failed: {e}", flush=True)
            return False
    if name not in {d.ep_name for d in ort.get_ep_devices()}:
        print("openvino: skipped, the plugin lists no device on this machine", flush=True)
        return False
    return True


def _agreement(ref: list[list[int]], got: list[list[int]]) -> dict[str, float]:
    from ragrt.export.parity import prefix_agreement

    return {
        "identical": float(np.mean([a == b for a, b in zip(ref, got)])),
        "token_agreement": float(np.mean([prefix_agreement(a, b) for a, b in zip(ref, got)])),
    }


def rag_runs(gen: Any, preps: list[Any], params: Any) -> tuple[list[list[int]], float]:
    """RAG-Token greedy per prepared question: tokens and CPU seconds (this thread's process)."""
    from ragrt.runtime.generation import rag_token

    toks, cpu = [], 0.0
    for p in preps:
        t0 = time.process_time()
        hyps = rag_token.generate(gen, p.context_ids, p.context_mask, p.doc_scores, params)
        cpu += time.process_time() - t0
        toks.append(hyps[0][0].token_ids)
    return toks, cpu


def plain_runs(gen: Any, contexts: list[tuple[np.ndarray, np.ndarray]], params: Any):
    from ragrt.runtime.generation.search import greedy

    toks, cpu = [], 0.0
    for ids, mask in contexts:
        t0 = time.process_time()
        states = gen.encode(ids, mask)
        hyps = greedy(gen.decoder_step(states, mask), len(ids), params)
        cpu += time.process_time() - t0
        toks += [h.token_ids for h in hyps]
    return toks, cpu


def _bytes(paths: dict[str, Path]) -> int:
    return sum(p.stat().st_size for p in paths.values())


def bart_base(work: Path, names: list[str], questions: int, repeats: int) -> dict[str, Any]:
    from ragrt.benchmarks.harness import QUESTIONS
    from ragrt.benchmarks.models import prepare
    from ragrt.engine import RagEngine
    from ragrt.runtime.generation.params import GenerationParams

    bm = prepare("bert-base", "bart-base")
    man = json.loads((bm.art / "manifest.json").read_text())
    g = man["generator"]
    fp32 = {r: bm.art / p for r, p in g["onnx"]["fp32"].items()}
    eng = RagEngine.load(bm.art, bm.index, intra_op_threads=1)
    preps = [eng.prepare([q], 5) for q in QUESTIONS[:questions]]
    calib_preps = [eng.prepare([q], 5) for q in QUESTIONS[-4:]]
    del eng
    params = GenerationParams(
        decoder_start_token_id=2,
        eos_token_id=2,
        pad_token_id=1,
        max_new_tokens=32,
        min_new_tokens=32,
        n_docs=5,
    )
    base = generator(fp32)
    calib = record_feeds(base, lambda gen: rag_runs(gen, calib_preps, params))
    ref, _ = rag_runs(base, preps, params)
    out: dict[str, Any] = {"fp32": _measure(base, preps, params, ref, repeats, _bytes(fp32))}
    del base
    fused = {r: work / "fused" / FILES[r] for r in ROLES}
    (work / "fused").mkdir(parents=True, exist_ok=True)
    fused_ops = {}
    for r in ROLES:
        if not fused[r].exists():
            fused_ops[r] = fuse(fp32[r], fused[r], int(g["num_heads"]), int(g["d_model"]))
    gen = generator(fused)
    out["fused-fp32"] = _measure(gen, preps, params, ref, repeats, _bytes(fused))
    out["fused-fp32"]["fused_ops"] = fused_ops
    del gen
    if _has_openvino():
        for hint in ("bf16", "f32"):
            gen = openvino(generator(fp32), fp32, hint)
            out[f"openvino-{hint}"] = _measure(gen, preps, params, ref, repeats, _bytes(fp32))
            print(f"openvino-{hint}", json.dumps(out[f"openvino-{hint}"]), flush=True)
            del gen
    conv = schemes(calib)
    for name in names:
        base_name = name.removeprefix("fused-")
        src = fused if name.startswith("fused-") else None
        paths = build(name, conv[base_name], fp32, work / name, src)
        gen = generator(paths)
        out[name] = _measure(gen, preps, params, ref, repeats, _bytes(paths))
        del gen
        print(name, json.dumps(out[name]), flush=True)
    return out


def _measure(gen, preps, params, ref, repeats: int, nbytes: int) -> dict[str, Any]:
    toks, _ = rag_runs(gen, preps[:1], params)  # warm-up
    cpu = []
    for _ in range(repeats):
        toks, c = rag_runs(gen, preps, params)
        cpu.append(c / len(preps))
    return {"cpu_s_per_question": float(np.median(cpu)), "bytes": nbytes, **_agreement(ref, toks)}


def trained(work: Path, names: list[str], contexts_n: int = 48) -> dict[str, Any]:
    """Token agreement with fp32 (and fp32 with PyTorch) on the briefly trained copy model."""
    import random

    import torch

    from ragrt.export import fixtures as fx
    from ragrt.export.onnx_export import export_generator
    from ragrt.export.sources import load_generator
    from ragrt.runtime.generation.params import GenerationParams

    gdir = work / "trained-gen"
    if not (gdir / "config.json").exists():
        model, tok = fx.train_copy_generator()
        fx.save_encoder(model, tok, gdir)
    src, _ = load_generator(gdir)
    fp32 = (
        export_generator(src, work / "trained-fp32")
        if not (work / "trained-fp32" / FILES["encoder"]).exists()
        else {r: work / "trained-fp32" / FILES[r] for r in ROLES}
    )
    texts = [t for t in fx.stdlib_docstrings() if len(t.split()) >= 8]
    rng = random.Random(1234)
    picked = rng.sample(texts, contexts_n)
    contexts = []
    for i in range(0, contexts_n, 8):
        b = src.tokenizer(
            [t[:300] for t in picked[i : i + 8]],
            padding=True,
            truncation=True,
            max_length=96,
            return_tensors="np",
        )
        contexts.append((b["input_ids"].astype(np.int64), b["attention_mask"].astype(np.int64)))
    cfg = src.model.config
    params = GenerationParams(
        decoder_start_token_id=int(cfg.decoder_start_token_id),
        eos_token_id=int(cfg.eos_token_id),
        pad_token_id=int(cfg.pad_token_id),
        max_new_tokens=16,
    )
    base = generator(fp32)
    ref, _ = plain_runs(base, contexts, params)
    with torch.no_grad():
        from transformers import GenerationConfig

        gc = GenerationConfig(
            decoder_start_token_id=params.decoder_start_token_id,
            eos_token_id=params.eos_token_id,
            pad_token_id=params.pad_token_id,
            max_new_tokens=16,
            do_sample=False,
            num_beams=1,
        )
        torch_toks = []
        saved = src.model.generation_config
        src.model.generation_config = gc  # a passed config would be merged with forced BOS/EOS
        for ids, mask in contexts:
            o = src.model.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
            for row in o[:, 1:].tolist():
                seq = []
                for t in row:
                    seq.append(t)
                    if t == params.eos_token_id:
                        break
                torch_toks.append(seq)
        src.model.generation_config = saved
    calib = record_feeds(base, lambda gen: plain_runs(gen, contexts[-2:], params))
    out: dict[str, Any] = {
        "contexts": contexts_n,
        "distinct_tokens": len({t for s in ref for t in s}),
        "fp32_vs_torch": _agreement(torch_toks, ref),
    }
    conv = schemes(calib)
    fused = {r: work / "trained-fused" / FILES[r] for r in ROLES}
    (work / "trained-fused").mkdir(parents=True, exist_ok=True)
    for r in ROLES:
        if not fused[r].exists():
            fuse(fp32[r], fused[r], int(cfg.decoder_attention_heads), int(cfg.d_model))
    got, _ = plain_runs(generator(fused), contexts, params)
    out["fused-fp32"] = _agreement(ref, got)
    if _has_openvino():
        for hint in ("bf16", "f32"):
            got, _ = plain_runs(openvino(generator(fp32), fp32, hint), contexts, params)
            out[f"openvino-{hint}"] = _agreement(ref, got)
            print("trained", f"openvino-{hint}", json.dumps(out[f"openvino-{hint}"]), flush=True)
    for name in names:
        base_name = name.removeprefix("fused-")
        srcs = fused if name.startswith("fused-") else None
        paths = build(name, conv[base_name], fp32, work / ("trained-" + name), srcs)
        got, _ = plain_runs(generator(paths), contexts, params)
        out[name] = _agreement(ref, got)
        print("trained", name, json.dumps(out[name]), flush=True)
    return out


DEFAULT = (
    "dynamic-pc,dynamic-pt,static-pc-u8,static-pc-s8,nbits8,nbits8-b128,"
    "fused-dynamic-pc,fused-nbits8"
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ragrt.benchmarks.int8_schemes")
    ap.add_argument("--schemes", default=DEFAULT)
    ap.add_argument("--questions", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--work", default=None, help="folder for the built graphs (default: temp)")
    ap.add_argument("--only", default="trained,bart-base")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    from ragrt.benchmarks.machine import machine_info

    names = [s for s in a.schemes.split(",") if s]
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="ragrt-int8-"))
    work.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {"machine": machine_info("cpu"), "threads": 1, "schemes": names}
    try:
        if "trained" in a.only:
            res["trained"] = trained(work, names)
        if "bart-base" in a.only:
            res["bart-base"] = bart_base(work, names, a.questions, a.repeats)
    finally:
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(res, indent=1))
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        p = Path(a.out) / "int8_schemes_cpu.json"
        p.write_text(json.dumps(res, indent=1) + "\n")
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
