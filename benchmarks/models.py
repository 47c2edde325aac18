"""Benchmark models: seeded RAG checkpoints at published sizes, their ragrt artifacts and index.

Speed does not depend on weight values, but it does depend on every shape, so the generator
uses the published BART configs *including the 50265-token vocabulary* (the LM head is a third
of the bytes a BART-base decode step reads). Token agreement between systems only means
something when the answers are diverse, so the weights are drawn to make greedy answers vary
along the sequence and with the contexts (:func:`bench_generator`). The generator tokenizer is the fixtures' byte-level
BPE trained offline on stdlib docstrings (about 5.6k tokens): ids above its vocabulary can be
generated but decode to nothing, which only affects the answer text, never the timings or the
token-id agreement.

Everything is built once into a cache folder (default ``.cache/bench/``, gitignored) keyed by
sizes and :data:`BUILD_VERSION`:

    <cache>/<encoder>_<generator>_v<N>/
        ckpt/        RAG-Token checkpoint (facebook/rag-token-nq layout)
        ctx/         DPR context encoder (for the index)
        art/         ragrt ART_DIR (fp32 + int8, + fp16 when asked)
        corpus.jsonl the bundled stdlib-docs corpus re-cut into 100-word passages (as DPR's)
        index/       ragrt INDEX_DIR over corpus.jsonl
        optimum/     config.json + links to art/'s fp32 generator graphs, for ORTModelForSeq2SeqLM
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# bump when the way checkpoints/artifacts are built changes (invalidates caches)
BUILD_VERSION = 2  # 2: diverse generators (published init, untied LM head, quieter decoder FFNs)
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = ROOT / ".cache" / "bench"
CORPUS = ROOT / "engine" / "demo" / "python_stdlib_docs.jsonl"
WORDS_PER_PASSAGE = 100  # DPR's Wikipedia passages
BART_PUBLISHED_VOCAB = 50265  # facebook/bart-base, facebook/bart-large, facebook/rag-token-nq
TOKENIZER_VOCAB = 50265  # asked of the BPE trainer; the docstring corpus yields ~5.6k
# Tied embeddings make a random BART predict its current token again (BOS, then one token
# repeated: the attractor that made v1's token agreement vacuous), and so did init scales of 0.2
# and 1.0 with untied ones. Published init (std 0.02) with an untied LM head varies along the
# sequence at BART-base, but BART-large's twelve decoder FFNs still pile up one direction (one
# token again and again); scaling the decoder FFN output projections by 1/4 makes both sizes
# answer with varied tokens that depend on the contexts.
GENERATOR_INIT_STD = 0.02
DECODER_FFN_SCALE = 0.25


@dataclass
class BenchModel:
    """Paths of one prepared benchmark model."""

    encoder_size: str
    generator_size: str
    root: Path
    ckpt: Path
    ctx: Path
    art: Path
    index: Path
    optimum: Path

    @property
    def name(self) -> str:
        return f"{self.encoder_size}+{self.generator_size}"


def _quiet() -> None:
    warnings.simplefilter("ignore")
    for name in ("transformers", "optimum", "torch", "onnxruntime"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from optimum.utils import logging as optimum_logging
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        optimum_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def bench_generator(vocab_size: int, size: str, seed: int = 0) -> Any:
    """The benchmark's BART generator at ``size``: the fixtures' for ``bart-tiny``; at real
    sizes the published shape and init with an untied LM head and the decoder's FFN output
    projections scaled by :data:`DECODER_FFN_SCALE`, so that greedy answers are diverse
    (tests/test_bench.py checks it on the headline questions)."""
    import torch
    from transformers import BartForConditionalGeneration

    from ragrt.export import fixtures as fx

    if size == "bart-tiny":
        return fx.bart_generator(vocab_size, size, seed)
    torch.manual_seed(seed)
    cfg = fx.bart_config(vocab_size, size, GENERATOR_INIT_STD, tied=False)
    model = BartForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for layer in model.model.decoder.layers:
            layer.fc2.weight.mul_(DECODER_FFN_SCALE)
    fx.own_token_embeddings(model)
    return model


def build_checkpoint(
    out: Path, encoder_size: str, generator_size: str, seed: int = 0
) -> tuple[Path, Path]:
    """A RAG-Token checkpoint (DPR + BART) at published sizes, plus a DPR context encoder.

    Like :func:`ragrt.export.fixtures.build_rag_checkpoint`, but with BART's published
    vocabulary size and :func:`bench_generator`'s weights for the real sizes.
    The loaded model is re-saved with every embedding tensor materialised and two loads are
    checked to be equal, so every system of a benchmark runs exactly the same weights (an
    untied BART used to reload its ``embed_tokens`` at random; the fixtures now guard
    against that too).
    """
    import torch
    from transformers import RagTokenForGeneration, RagTokenizer

    from ragrt.export import fixtures as fx

    _quiet()
    ckpt, ctx = out / "ckpt", out / "ctx"
    qtok = fx.bert_tokenizer()
    qenc = fx.dpr_question_encoder(encoder_size, seed)
    gtok = fx.bart_tokenizer(TOKENIZER_VOCAB if generator_size != "bart-tiny" else 1000)
    vocab = len(gtok) if generator_size == "bart-tiny" else BART_PUBLISHED_VOCAB
    gen = bench_generator(vocab, generator_size, seed)
    cfg = fx.rag_config(qenc.config, gen.config)
    model = RagTokenForGeneration(config=cfg, question_encoder=qenc, generator=gen).eval()
    model.save_pretrained(ckpt)
    RagTokenizer(question_encoder=qtok, generator=gtok).save_pretrained(ckpt)
    fx.save_encoder(fx.dpr_context_encoder(encoder_size, seed + 1), qtok, ctx)
    del model, gen, qenc

    # materialise weights that a load would otherwise re-initialise at random
    torch.manual_seed(seed)
    m = RagTokenForGeneration.from_pretrained(ckpt).eval()
    bart = m.rag.generator.model
    with torch.no_grad():
        for emb in (bart.encoder.embed_tokens, bart.decoder.embed_tokens):
            if emb.weight.data_ptr() != bart.shared.weight.data_ptr():
                emb.weight = torch.nn.Parameter(bart.shared.weight.detach().clone())
    m.save_pretrained(ckpt)
    a = RagTokenForGeneration.from_pretrained(ckpt).state_dict()
    b = RagTokenForGeneration.from_pretrained(ckpt).state_dict()
    bad = [k for k in a if not torch.equal(a[k], b[k])]
    if bad:
        raise RuntimeError(f"checkpoint {ckpt} loads differently twice: {bad[:4]}")
    return ckpt, ctx


def _optimum_dir(art: Path, ckpt: Path, out: Path) -> Path:
    """A folder ORTModelForSeq2SeqLM opens: the generator config + ragrt's own fp32 graphs."""
    from ragrt.runtime import manifest as manifest_mod

    m = manifest_mod.load(art, verify=False)
    files = m.generator.onnx["fp32"]
    out.mkdir(parents=True, exist_ok=True)
    gcfg = json.loads((ckpt / "config.json").read_text())["generator"]
    (out / "config.json").write_text(json.dumps(gcfg, indent=1))
    for rel in list(files.values()):
        src = art / rel
        for p in [src, src.with_name(src.name + "_data")]:
            if p.exists() and not (out / p.name).exists():
                os.symlink(os.path.relpath(p, out), out / p.name)
    return out


def bench_corpus(out: Path, words: int = WORDS_PER_PASSAGE) -> Path:
    """The bundled stdlib-docs corpus re-cut DPR-style into passages of exactly ``words`` words.

    RAG's passages are 100-word chunks of Wikipedia; the bundled corpus has one (shorter,
    varying) passage per docstring. Contexts' lengths drive the generator's cost, so the
    benchmark re-cuts the same text in file order into ``words``-word windows (the last one
    shorter), each titled by the docstring it starts in.
    """
    chunks: list[tuple[str, list[str]]] = []
    cur: list[str] = []
    title = ""
    with open(CORPUS, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            for w in row["text"].split():
                if not cur:
                    title = row["title"]
                cur.append(w)
                if len(cur) == words:
                    chunks.append((title, cur))
                    cur = []
    if cur:
        chunks.append((title, cur))
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for i, (t, ws) in enumerate(chunks):
            f.write(json.dumps({"id": f"p{i}", "title": t, "text": " ".join(ws)}) + "\n")
    os.replace(tmp, out)
    return out


def prepare(
    encoder_size: str = "bert-base",
    generator_size: str = "bart-base",
    precisions: tuple[str, ...] = ("fp32", "int8"),
    cache: Path | None = None,
    progress=print,
) -> BenchModel:
    """Build (or reuse) checkpoint, ART_DIR, index and optimum folder for one size.

    Each step is skipped when its output is complete (the export and the index build publish
    atomically themselves; the checkpoint is built in a temporary folder and renamed). A
    finished model is marked ``READY`` (with its precisions); adding a precision re-exports.
    Two processes should not build the same size at the same time.
    """
    _quiet()
    cache = Path(cache or DEFAULT_CACHE)
    root = cache / f"{encoder_size}_{generator_size}_v{BUILD_VERSION}"
    bm = _paths(root, encoder_size, generator_size)
    want = {"fp32", *precisions}
    have = _ready(root)
    if have is not None and want <= have:
        return bm
    root.mkdir(parents=True, exist_ok=True)
    name = bm.name
    if not (bm.ckpt / "config.json").exists() or not (bm.ctx / "config.json").exists():
        t = time.perf_counter()
        progress(f"building checkpoint {name} (seeded random weights) ...")
        tmp = root / f".build-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            build_checkpoint(tmp, encoder_size, generator_size)
            for part in ("ckpt", "ctx"):
                shutil.rmtree(root / part, ignore_errors=True)
                os.replace(tmp / part, root / part)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(bm.art, ignore_errors=True)
        progress(f"  checkpoint built in {time.perf_counter() - t:.0f} s")
    exported = _art_precisions(bm.art)
    if not want <= exported:
        _export(bm, want | exported, progress)
        shutil.rmtree(bm.index, ignore_errors=True)
        shutil.rmtree(bm.optimum, ignore_errors=True)
    if _index_source(bm.index) != str((root / "corpus.jsonl").resolve()):
        from ragrt.retrieval.build import BuildOptions, build_index

        shutil.rmtree(bm.index, ignore_errors=True)

        t = time.perf_counter()
        corpus = bench_corpus((root / "corpus.jsonl").resolve())
        progress(f"indexing {corpus.name} with {name}'s context encoder ...")
        build_index(corpus, bm.index, model=bm.art, options=BuildOptions(progress=False))
        progress(f"  indexed in {time.perf_counter() - t:.0f} s")
    if not (bm.optimum / "config.json").exists():
        _optimum_dir(bm.art, bm.ckpt, bm.optimum)
    precs = sorted(_art_precisions(bm.art), key=_prec_key)
    (root / "READY").write_text(json.dumps({"precisions": precs, "version": BUILD_VERSION}))
    return bm


def _prec_key(p: str) -> int:
    order = ["fp32", "fp16", "int8"]
    return order.index(p) if p in order else 9


def _paths(root: Path, encoder_size: str, generator_size: str) -> BenchModel:
    return BenchModel(
        encoder_size,
        generator_size,
        root,
        root / "ckpt",
        root / "ctx",
        root / "art",
        root / "index",
        root / "optimum",
    )


def _ready(root: Path) -> set[str] | None:
    try:
        return set(json.loads((root / "READY").read_text())["precisions"])
    except (OSError, KeyError, ValueError):
        return None


def _index_source(index: Path) -> str | None:
    try:
        src = json.loads((index / "manifest.json").read_text())["source"]["passages"]
        return str(Path(src).resolve())
    except (OSError, KeyError, ValueError, TypeError):
        return None


def _art_precisions(art: Path) -> set[str]:
    try:
        data = json.loads((art / "manifest.json").read_text())
        return set(data["generator"]["onnx"])
    except (OSError, KeyError, ValueError):
        return set()


def _export(bm: BenchModel, precisions: set[str], progress) -> None:
    from ragrt.export import ExportOptions, export_artifacts

    precs = sorted(precisions, key=_prec_key)
    t = time.perf_counter()
    progress(f"exporting {bm.name} to ONNX ({', '.join(precs)}) ...")
    root_logger = logging.getLogger()
    level = root_logger.level
    root_logger.setLevel(logging.ERROR)  # onnxruntime.quantization warns on the root logger
    try:
        export_artifacts(
            ExportOptions(
                out=bm.art,
                rag_dir=bm.ckpt,
                context_encoder=bm.ctx,
                precisions=precs,
                parity=False,
                progress=False,
                overwrite=True,
            )
        )
    finally:
        root_logger.setLevel(level)
    progress(f"  exported in {time.perf_counter() - t:.0f} s")
