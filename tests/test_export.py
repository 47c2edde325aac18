"""Export: fixture checkpoints -> ART_DIR, manifest contents, parity, variants, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ragrt.errors import ArtifactError, InputError, UnsupportedModelError
from ragrt.runtime import manifest
from ragrt.runtime.encoders import TextEncoder

RAGRT = [sys.executable, "-m", "ragrt"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*RAGRT, *map(str, args)], capture_output=True, text=True, timeout=600)


# -- the fixture itself ------------------------------------------------------------------


def test_fixture_generator_outputs_are_diverse(rag_bart_ckpt):
    """Parity on a generator that repeats one token would be vacuous: check it does not."""
    import torch
    from transformers import RagTokenForGeneration, RagTokenizer

    rag, info = RagTokenForGeneration.from_pretrained(
        rag_bart_ckpt["rag"], output_loading_info=True
    )
    assert not info["missing_keys"], "the fixture must reload exactly (no re-initialised weights)"
    tok = RagTokenizer.from_pretrained(rag_bart_ckpt["rag"]).generator
    texts = [
        "json / JSON encoder and decoder // what is json",
        "heapq / Heap queue algorithm // how do heaps work",
        "re / Support for regular expressions // what is a regex",
    ]
    batch = tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = rag.generator.generate(**batch, max_length=20, num_beams=1)
    rows = [tuple(r) for r in out.tolist()]
    assert len(set(rows)) == len(rows), "different contexts must give different answers"
    assert all(len(set(r)) > 4 for r in rows), rows


# -- RAG checkpoint export -----------------------------------------------------------------


def test_export_rag_checkpoint_manifest(rag_bart_art, rag_bart_ckpt):
    m = manifest.load(rag_bart_art)
    assert m.precisions == ["fp32", "fp16", "int8"]
    assert m.source["kind"] == "rag"
    q = m.question_encoder
    assert (q.family, q.pooling, q.normalize, q.dim) == ("dpr", "pooler", False, 32)
    assert q.input_names == ["input_ids", "attention_mask", "token_type_ids"]
    assert m.context_encoder is not None and m.context_encoder.dim == 32
    g = m.generator
    assert (g.family, g.model_type, g.decoder_layers, g.num_heads, g.d_model) == (
        "bart",
        "bart",
        2,
        4,
        128,
    )
    assert set(g.onnx["fp16"]) == {"encoder", "decoder", "decoder_with_past"}
    gen = m.generation
    cfg = json.loads((rag_bart_ckpt["rag"] / "config.json").read_text())
    assert gen.decoder_start_token_id == 2 and gen.eos_token_id == 2 and gen.pad_token_id == 1
    assert gen.forced_bos_token_id == 0 and gen.forced_eos_token_id == 2
    assert (gen.n_docs, gen.max_combined_length) == (cfg["n_docs"], cfg["max_combined_length"])
    assert (gen.title_sep, gen.doc_sep, gen.rag_type) == (" / ", " // ", "token")
    # every file of every component is recorded with its hash; tokenizers are plain tokenizer.json
    for rel in m.component_files("int8"):
        assert rel in m.files
    assert m.files[q.tokenizer]["sha256"] == manifest.sha256_file(rag_bart_art / q.tokenizer)
    from tokenizers import Tokenizer

    assert Tokenizer.from_file(str(rag_bart_art / g.tokenizer)).get_vocab_size() == g.vocab_size


def test_parity_report_fp32_exact(rag_bart_art):
    report = json.loads((rag_bart_art / "parity.json").read_text())
    rows = {(r["component"], r["precision"]): r for r in report["rows"]}
    assert set(rows) == {
        (c, p)
        for c in ("question_encoder", "context_encoder", "generator")
        for p in ("fp32", "fp16", "int8")
    }
    for comp in ("question_encoder", "context_encoder"):
        assert rows[(comp, "fp32")]["metrics"]["encoder_max_abs"] <= 1e-4
    g = rows[("generator", "fp32")]["metrics"]
    assert g["generator_exact_match"] == 1.0 and g["generator_token_agreement"] == 1.0
    assert g["distinct_tokens"] > 5  # the greedy outputs compared are not one repeated token
    for r in report["rows"]:
        if r["precision"] == "fp32" or r["component"] != "generator":
            assert r["passed"], r
        # the fixture generator's amplified random weights are not a fair test of fp16/int8
        # rounding (see test_reduced_precision_generator_floors); its figures are still reported
        assert all(np.isfinite(v) for v in r["metrics"].values()), r


def test_reduced_precision_generator_floors(rag_bart_ckpt, tmp_path):
    """fp16/int8 generators clear the documented floors at a realistic weight scale."""
    from ragrt.export import ExportOptions, export_artifacts
    from ragrt.export.fixtures import bart_generator, bart_tokenizer, save_encoder

    tok = bart_tokenizer()
    gen = save_encoder(
        bart_generator(len(tok), init_std=0.02, position_scale=1.0), tok, tmp_path / "g"
    )
    res = export_artifacts(
        ExportOptions(
            out=tmp_path / "art",
            question_encoder=rag_bart_ckpt["context_encoder"],
            generator=gen,
            precisions=["fp32", "fp16", "int8"],
            progress=False,
        )
    )
    rows = {r.precision: r for r in res.parity.rows if r.component == "generator"}
    assert rows["fp16"].metrics["generator_logits_min_cosine"] >= 0.99, rows["fp16"]
    assert rows["int8"].metrics["generator_logits_min_cosine"] >= 0.9, rows["int8"]
    assert res.parity.passed, res.parity.table()


def test_encoder_matches_pytorch_through_runtime(rag_bart_art, rag_bart_ckpt):
    """The runtime's own tokenizer + session reproduce DPR's pooled output."""
    import torch
    from transformers import DPRQuestionEncoder, RagTokenizer

    qs = ["who wrote the json module?", "What is a HEAP queue, exactly?"]
    enc = TextEncoder.load(rag_bart_art, "question_encoder", "fp32")
    ids, mask = enc.tokenize(qs)
    tok = RagTokenizer.from_pretrained(rag_bart_ckpt["rag"]).question_encoder
    ref_ids = tok(qs, padding=True, return_tensors="pt")
    np.testing.assert_array_equal(ids, ref_ids["input_ids"].numpy())
    from transformers import RagTokenForGeneration

    qenc = RagTokenForGeneration.from_pretrained(rag_bart_ckpt["rag"]).question_encoder
    assert isinstance(qenc, DPRQuestionEncoder)
    with torch.no_grad():
        ref = qenc(**ref_ids).pooler_output.numpy()
    np.testing.assert_allclose(enc.encode(qs), ref, atol=1e-4)


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_reduced_precision_variants_run(rag_bart_art, precision):
    import onnxruntime as ort

    m = manifest.load(rag_bart_art, precision=precision)
    for rel in m.generator.onnx[precision].values():
        sess = ort.InferenceSession(str(m.path(rel)), providers=["CPUExecutionProvider"])
        assert sess.get_outputs()[0].name in ("logits", "last_hidden_state")
    q32 = TextEncoder.load(rag_bart_art, "question_encoder", "fp32").encode(
        ["a question about json"]
    )
    qlow = TextEncoder.load(rag_bart_art, "question_encoder", precision).encode(
        ["a question about json"]
    )
    cos = float((q32 * qlow).sum() / np.linalg.norm(q32) / np.linalg.norm(qlow))
    assert cos > 0.99


# -- separate folders, real MiniLM weights ---------------------------------------------


def test_export_separate_folders_minilm_t5(minilm_art):
    m = manifest.load(minilm_art)
    assert m.source["kind"] == "folders"
    q = m.question_encoder
    assert (q.family, q.pooling, q.normalize, q.dim, q.max_length) == (
        "bert",
        "mean",
        True,
        384,
        256,
    )
    assert m.generator.family == "t5" and m.generation.decoder_start_token_id == 0
    assert m.generation.eos_token_id == 1
    report = json.loads((minilm_art / "parity.json").read_text())
    for r in report["rows"]:  # real MiniLM weights: every encoder variant clears its floor
        if r["component"] != "generator" or r["precision"] == "fp32":
            assert r["passed"], r


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_minilm_variants_match_sentence_transformers(minilm_art, minilm_dir, precision):
    """Real weights: fp32 matches sentence-transformers, fp16/int8 keep cosine >= 0.99."""
    from sentence_transformers import SentenceTransformer

    texts = [
        "How do I read a JSON file in Python?",
        "heap queue algorithm",
        "The quick brown fox jumps over the lazy dog near the riverbank at dawn.",
    ]
    ref = SentenceTransformer(str(minilm_dir), device="cpu").encode(texts, convert_to_numpy=True)
    got = TextEncoder.load(minilm_art, "question_encoder", precision).encode(texts)
    cos = (ref * got).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)
    if precision == "fp32":
        np.testing.assert_allclose(got, ref, atol=1e-4)
    assert cos.min() >= 0.99, cos


def test_export_t5_rag_checkpoint_cli(rag_t5_ckpt, tmp_path):
    out = tmp_path / "art"
    r = run_cli("export", rag_t5_ckpt, "--out", out, "--quiet")
    assert r.returncode == 0, r.stderr
    assert "generator" in r.stdout and "ok" in r.stdout  # the parity table is printed
    m = manifest.load(out)
    assert m.precisions == ["fp32"] and m.generator.family == "t5"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dir left


# -- bad input -------------------------------------------------------------------------------


def _one_line_error(r: subprocess.CompletedProcess, needle: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr
    assert needle in lines[0], lines[0]


def test_bad_input_missing_folder(tmp_path):
    _one_line_error(run_cli("export", tmp_path / "nope", "--out", tmp_path / "o"), "does not exist")


def test_bad_input_not_rag(rag_bart_ckpt, tmp_path):
    r = run_cli("export", rag_bart_ckpt["context_encoder"], "--out", tmp_path / "o")
    _one_line_error(r, "not a RAG checkpoint")
    assert not (tmp_path / "o").exists()


def test_bad_input_unsupported_generator(rag_bart_ckpt, tmp_path):
    gen = tmp_path / "gpt2"
    gen.mkdir()
    (gen / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    r = run_cli(
        "export",
        "--question-encoder",
        rag_bart_ckpt["context_encoder"],
        "--generator",
        gen,
        "--out",
        tmp_path / "o",
    )
    _one_line_error(r, "'gpt2'")


def test_bad_input_unknown_precision(rag_bart_ckpt, tmp_path):
    r = run_cli("export", rag_bart_ckpt["rag"], "--out", tmp_path / "o", "--precision", "bf8")
    _one_line_error(r, "unknown precision 'bf8'")


def test_bad_input_unwritable_out(rag_bart_ckpt, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _one_line_error(
        run_cli("export", rag_bart_ckpt["rag"], "--out", blocker / "art"), "not a directory"
    )
    _one_line_error(run_cli("export", rag_bart_ckpt["rag"], "--out", blocker), "not a directory")


def test_bad_input_non_empty_out(rag_bart_ckpt, tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "keep.txt").write_text("x")
    _one_line_error(run_cli("export", rag_bart_ckpt["rag"], "--out", tmp_path / "o"), "--overwrite")


def test_failed_export_leaves_nothing(rag_bart_ckpt, tmp_path, monkeypatch):
    from ragrt.export import ExportOptions, export_artifacts, precision

    def boom(src, dst):
        raise RuntimeError("simulated crash mid-export")

    monkeypatch.setitem(precision.CONVERTERS, "int8", boom)
    with pytest.raises(RuntimeError):
        export_artifacts(
            ExportOptions(
                out=tmp_path / "art",
                rag_dir=rag_bart_ckpt["rag"],
                precisions=["fp32", "int8"],
                progress=False,
                parity=False,
            )
        )
    assert list(tmp_path.iterdir()) == []


def test_python_api_errors(rag_bart_ckpt, tmp_path):
    from ragrt.export import ExportOptions, export_artifacts

    with pytest.raises(InputError, match="nothing to export"):
        export_artifacts(ExportOptions(out=tmp_path / "a", generator=rag_bart_ckpt["rag"]))
    with pytest.raises(UnsupportedModelError):
        export_artifacts(
            ExportOptions(
                out=tmp_path / "a", question_encoder=tmp_path, generator=rag_bart_ckpt["rag"]
            )
        )


# -- manifest verification on load ---------------------------------------------------------


@pytest.fixture()
def art_copy(rag_bart_art, tmp_path) -> Path:
    import shutil

    dst = tmp_path / "art"
    shutil.copytree(rag_bart_art, dst)
    return dst


def test_manifest_detects_corrupt_file(art_copy):
    m = manifest.load(art_copy)
    rel = m.generator.onnx["fp32"]["decoder"]
    p = art_copy / rel
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256"):
        manifest.load(art_copy)
    manifest.load(art_copy, precision="int8")  # other precisions stay loadable


def test_manifest_detects_truncated_and_missing(art_copy):
    m = manifest.load(art_copy)
    p = art_copy / m.question_encoder.onnx["fp32"]
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(ArtifactError, match="truncated"):
        manifest.load(art_copy, precision="fp32")
    p.unlink()
    with pytest.raises(ArtifactError, match="missing"):
        manifest.load(art_copy, precision="fp32")


def test_manifest_malformed_or_absent(art_copy, tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        manifest.load(tmp_path / "nope")
    (art_copy / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        manifest.load(art_copy)
    (art_copy / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match="no manifest.json"):
        manifest.load(art_copy)


def test_missing_precision_is_named(rag_t5_ckpt, tmp_path):
    from ragrt.export import ExportOptions, export_artifacts

    export_artifacts(
        ExportOptions(out=tmp_path / "a", rag_dir=rag_t5_ckpt, precisions=["int8"], progress=False)
    )
    m = manifest.load(tmp_path / "a")
    assert m.precisions == ["int8"] and not (tmp_path / "a" / "generator" / "fp32").exists()
    with pytest.raises(ArtifactError, match="no fp16 variant"):
        manifest.load(tmp_path / "a", precision="fp16")


# -- the runtime has no torch ----------------------------------------------------------------

BLOCK_TORCH = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {'torch', 'transformers', 'optimum', 'sentence_transformers'}:
            raise ImportError('blocked for this test: ' + name)
sys.meta_path.insert(0, _Block())
"""


def test_runtime_imports_without_torch(rag_bart_art):
    code = (
        BLOCK_TORCH
        + f"""
import ragrt, ragrt.cli, ragrt.runtime.manifest, ragrt.runtime.encoders, ragrt.runtime.sessions, ragrt.runtime.text
from ragrt.runtime.encoders import TextEncoder
emb = TextEncoder.load({str(rag_bart_art)!r}, 'question_encoder', 'int8').encode(['hello world'])
assert emb.shape == (1, 32)
import importlib
for mod in ['ragrt.engine', 'ragrt.runtime.generation', 'ragrt.runtime.generator', 'ragrt.retrieval.index', 'ragrt.retrieval.passages', 'ragrt.serving.client']:
    try:
        importlib.import_module(mod)
    except ModuleNotFoundError as e:
        if e.name != mod:
            raise
assert 'torch' not in sys.modules and 'transformers' not in sys.modules
print('ok')
"""
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_no_bare_top_level_packages():
    """`engine`/`export` folders are installed as ragrt.*, never as bare modules."""
    import importlib.util

    code = (
        "import importlib.util, sys; sys.path = [p for p in sys.path if p not in ('', '.')]; "
        "print(importlib.util.find_spec('engine'), importlib.util.find_spec('export'))"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd="/", timeout=60
    )
    assert r.stdout.strip() == "None None", r.stdout
    assert importlib.util.find_spec("ragrt.export") is not None


def test_cli_help_lists_export():
    r = run_cli("--help")
    assert r.returncode == 0 and "export" in r.stdout
    r = run_cli("export", "--help")
    assert r.returncode == 0 and "--precision" in r.stdout
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
