"""GPU parity: CUDA and TensorRT against the CPU, on the BART fixture (needs an NVIDIA GPU).

Skipped where ONNX Runtime has no CUDA provider (CI, this project's CPU machines); run by
``benchmarks/device_check.sh`` on a GPU machine. fp32 on CUDA (and TensorRT with fp16 off)
must give the CPU's tokens; fp16 must clear the documented agreement floor.
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gpu

FP16_AGREEMENT_FLOOR = 0.9  # README "Reduced precision" (same floor as tests/test_engine.py)
QUESTIONS = [
    "How do I serialize an object to JSON?",
    "what is a heap queue",
    "How are command line arguments parsed?",
    "how do I open a zip file",
]


def _providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


@pytest.fixture(scope="module")
def cuda():
    if "CUDAExecutionProvider" not in _providers():
        pytest.skip("no CUDA execution provider (onnxruntime-gpu on an NVIDIA GPU machine)")


@pytest.fixture(scope="module")
def cpu_answers(rag_engine):
    return rag_engine.generate(QUESTIONS, n_docs=5, max_new_tokens=12)


def _generator(art, precision: str, **opts):
    from ragrt.runtime import manifest
    from ragrt.runtime.generator import Seq2SeqGenerator
    from ragrt.runtime.sessions import SessionOptions

    m = manifest.load(art)
    return Seq2SeqGenerator.from_spec(m.generator, m.root, precision, SessionOptions(**opts))


def _decode(gen, engine, answers) -> list[list[int]]:
    """RAG-Token greedy on the CPU run's docs, through ``gen`` (same contexts and scores)."""
    res = engine.generate_from_docs(QUESTIONS, [a.docs for a in answers], max_new_tokens=12)
    saved = engine.generator
    engine.generator = gen
    try:
        got = engine.generate_from_docs(QUESTIONS, [a.docs for a in answers], max_new_tokens=12)
    finally:
        engine.generator = saved
    assert [r.token_ids for r in res] == [a.token_ids for a in answers]
    return [r.token_ids for r in got]


def test_cuda_fp32_tokens_identical(cuda, rag_bart_art, rag_engine, cpu_answers):
    gen = _generator(rag_bart_art, "fp32", device="cuda")
    assert _decode(gen, rag_engine, cpu_answers) == [a.token_ids for a in cpu_answers]


def test_cuda_fp16_agreement(cuda, rag_bart_art, rag_engine, cpu_answers):
    from ragrt.export.parity import prefix_agreement

    got = _decode(_generator(rag_bart_art, "fp16", device="cuda"), rag_engine, cpu_answers)
    agree = np.mean([prefix_agreement(a.token_ids, g) for a, g in zip(cpu_answers, got)])
    print(f"cuda fp16 prefix agreement {agree:.3f}")
    assert agree >= FP16_AGREEMENT_FLOOR


def test_tensorrt_fp32_tokens_identical(cuda, rag_bart_art, rag_engine, cpu_answers, tmp_path):
    if "TensorrtExecutionProvider" not in _providers():
        pytest.skip("no TensorRT execution provider (install tensorrt next to onnxruntime-gpu)")
    gen = _generator(
        rag_bart_art, "fp32", device="tensorrt", trt_fp16=False, trt_cache_dir=str(tmp_path)
    )
    assert _decode(gen, rag_engine, cpu_answers) == [a.token_ids for a in cpu_answers]


def test_tensorrt_fp16_agreement(cuda, rag_bart_art, rag_engine, cpu_answers, tmp_path):
    from ragrt.export.parity import prefix_agreement

    if "TensorrtExecutionProvider" not in _providers():
        pytest.skip("no TensorRT execution provider (install tensorrt next to onnxruntime-gpu)")
    gen = _generator(
        rag_bart_art, "fp32", device="tensorrt", trt_fp16=True, trt_cache_dir=str(tmp_path)
    )
    got = _decode(gen, rag_engine, cpu_answers)
    agree = np.mean([prefix_agreement(a.token_ids, g) for a, g in zip(cpu_answers, got)])
    print(f"tensorrt fp16 prefix agreement {agree:.3f}")
    assert agree >= FP16_AGREEMENT_FLOOR


def test_index_search_on_gpu_matches_cpu(cuda, rag_bart_index, rag_engine):
    import faiss

    from ragrt.retrieval.index import PassageIndex

    if faiss.get_num_gpus() < 1:
        pytest.skip("faiss sees no GPU (faiss-gpu-cu12)")
    emb = rag_engine.embed(QUESTIONS)
    cpu = PassageIndex.open(rag_bart_index, device="cpu").search(emb, 5)
    gpu = PassageIndex.open(rag_bart_index, device="cuda").search(emb, 5)
    overlap = np.mean(
        [len(set(a) & set(b)) / 5 for a, b in zip(cpu.rows.tolist(), gpu.rows.tolist())]
    )
    assert overlap >= 0.9, overlap
